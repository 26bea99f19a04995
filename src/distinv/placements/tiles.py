"""Signals sharded by window: what a tiled denoiser's ``tiles()`` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LocalTiles:
    """This rank's part of a tiled signal (sharded): for each of its windows (``windows``, indices into the
    plan), the owned region's index into the full tensor and its values. Passing it back to the same
    :class:`~distinv.DistributedProcessing` runs the next call from it with a halo exchange."""

    shape: torch.Size
    pieces: list[tuple[tuple[slice, ...], torch.Tensor]]
    windows: list[int]
