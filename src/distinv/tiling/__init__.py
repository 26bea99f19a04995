"""The tiled denoiser: window geometry, the planner (fixed knobs or automatic, from a measured network profile), the
executor (cut, run, gather), its autograd, halo exchange, deepinv's strategy interface, and the façade
:class:`~distinv.tiling.processing.DistributedProcessing`."""
