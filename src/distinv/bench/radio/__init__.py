"""Radio data in the field's formats: Measurement Sets read in parts (:mod:`.measurement_set`) and written from a
simulated observation (:mod:`.simulate`), the imaging weights (:mod:`.weighting`), and images with a celestial
coordinate system in FITS (:mod:`.fits_images`), all on one image geometry (:mod:`.geometry`)."""
