"""Signals sharded by window: what a tiled denoiser's ``tiles()`` returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class LocalTiles:
    """This rank's part of a tiled signal (sharded): for each of its windows (``windows``, indices into the
    plan), the owned region's index into the full tensor and its values. Passing it back to the same
    :class:`~distinv.DistributedProcessing` runs the next call from it with a halo exchange; :meth:`gather`
    assembles the whole signal. ``gatherer`` is the assembly of the denoiser that made the tiles (its partition)."""

    shape: torch.Size
    pieces: list[tuple[tuple[slice, ...], torch.Tensor]]
    windows: list[int]
    gatherer: Callable[[LocalTiles], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def gather(self) -> torch.Tensor:
        """The whole signal on every rank (replicated; one all-gather of the owned regions). Call it on every rank.

        :raises ValueError: for tiles built by hand, which do not know their denoiser's plan.
        """
        if self.gatherer is None:
            raise ValueError("these LocalTiles were not made by a denoiser's tiles(): use denoiser.gather(tiles).")
        return self.gatherer(self)
