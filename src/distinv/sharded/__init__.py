"""Sharded iterates: physics and denoiser acting on row bands (:class:`~distinv.placements.row_bands.RowBands`), so
that no image-sized collective runs per iteration: circular blurs band by band, slice-separable operators slab by
slab, non-decomposable operators gathered for their step alone, the tiled denoiser's windows dealt in bands."""
