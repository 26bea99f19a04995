"""How a signal is cut into patches for a distributed denoiser: the extension point, and the built-in tiling.

A :class:`DistributedSignalStrategy` has deepinv's three documented methods. The engine hands each rank its
patch indices, runs the processor on the patches ``get_local_patches`` returns, lets ``reduce_patches`` write
them into a zero tensor and sums that tensor over ranks. The built-in :class:`TilingStrategy` implements the
same methods from a :class:`~distinv.tiling.TilePlan`, and the engine uses its plan directly to gather only
owned regions instead of summing full-size tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from .tiling import TilePlan

STRATEGY_METHODS = ("get_local_patches", "reduce_patches", "get_num_patches")


class DistributedSignalStrategy(ABC):
    """Subclass to cut signals your own way.

    :param img_size: full shape of the signal, e.g. ``(B, C, H, W)``.
    """

    def __init__(self, img_size: Sequence[int], **kwargs):
        self.img_size = torch.Size(img_size)

    @abstractmethod
    def get_local_patches(self, x: torch.Tensor, local_indices: list[int]) -> list[tuple[int, torch.Tensor]]:
        """``(global index, patch)`` for each index this rank processes; patches of one call share a shape
        when they are to be batched together."""

    @abstractmethod
    def reduce_patches(self, out_tensor: torch.Tensor, local_pairs: list[tuple[int, torch.Tensor]]) -> None:
        """Write the processed patches into ``out_tensor`` (zeros, full size) in place."""

    @abstractmethod
    def get_num_patches(self) -> int:
        """How many patches the signal is cut into."""


class TilingStrategy(DistributedSignalStrategy):
    """Windows with halos where they meet, owned regions that partition the signal (see :mod:`distinv.tiling`).

    :param img_size: full signal shape ``(B, C, *spatial)``.
    :param tiling_dims: the dims of ``img_size`` to cut (default: all spatial dims).
    :param patch_size, overlap, multiple, max_window_pixels, world_size: as in :meth:`TilePlan.build`.
    """

    auto = None  # the AutoPlan (windows, batch, predictions) when the engine planned automatically

    def __init__(
        self,
        img_size: Sequence[int],
        tiling_dims: Sequence[int],
        world_size: int,
        patch_size: int | Sequence[int] | None = None,
        overlap: int | Sequence[int] = 0,
        multiple: int = 1,
        max_window_pixels: int | None = None,
    ):
        super().__init__(img_size)
        self.tiling_dims = tuple(tiling_dims)
        self.plan = TilePlan.build(
            [self.img_size[d] for d in self.tiling_dims], world_size, patch_size, overlap, multiple, max_window_pixels
        )

    def index(self, slices: Sequence[slice]) -> tuple[slice, ...]:
        """A full indexing tuple that applies ``slices`` to the tiled dims."""
        full = [slice(None)] * len(self.img_size)
        for d, s in zip(self.tiling_dims, slices, strict=True):
            full[d] = s
        return tuple(full)

    def get_local_patches(self, x: torch.Tensor, local_indices: list[int]) -> list[tuple[int, torch.Tensor]]:
        return [(i, x[self.index(self.plan.windows[i].slices)]) for i in local_indices]

    def reduce_patches(self, out_tensor: torch.Tensor, local_pairs: list[tuple[int, torch.Tensor]]) -> None:
        for i, patch in local_pairs:
            window = self.plan.windows[i]
            out_tensor[self.index(window.owned_slices)] = patch[self.index(window.owned_in_window)]

    def get_num_patches(self) -> int:
        return len(self.plan.windows)


def check_strategy(strategy: object) -> None:
    """Raise a clear TypeError if a user strategy lacks one of the documented methods."""
    missing = [m for m in STRATEGY_METHODS if not callable(getattr(strategy, m, None))]
    if missing:
        raise TypeError(
            f"tiling_strategy {type(strategy).__name__} lacks {', '.join(missing)}: subclass "
            "distinv.strategies.DistributedSignalStrategy and implement get_local_patches, reduce_patches and "
            "get_num_patches, or pass 'overlap_tiling' / 'basic'."
        )
