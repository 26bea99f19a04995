"""How a signal is cut into patches for a distributed denoiser: the extension point, and the built-in tiling.

A :class:`DistributedSignalStrategy` has deepinv's three documented methods. :func:`run_user_strategy` hands each
rank its patch indices, runs the processor on the patches ``get_local_patches`` returns, lets ``reduce_patches``
write them into a zero tensor and sums that tensor over ranks. :class:`TilingStrategy` offers the built-in tiling
through the same methods; the engine never goes through it (it runs a :class:`~distinv.tiling.planner.TiledLayout` and
gathers only owned regions instead of summing full-size tensors).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from distinv.comm.context import DistributedContext
from distinv.runtime.balance import assign_balanced_counts
from distinv.tiling.planner import DEFAULT_OVERLAP, TilingKnobs, plan_fixed, tiling_dims_of

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

    def apply_batching(self, patches: list[torch.Tensor], max_batch_size: int | None = None) -> list[torch.Tensor]:
        """Consecutive patches of one shape concatenated along the batch dim, at most ``max_batch_size`` per batch
        (``None`` or < 1: as many as share a shape); processing the batches and concatenating the results keeps
        the patches' order (see :meth:`unpack_batched_results`)."""
        limit = max_batch_size if max_batch_size and max_batch_size > 0 else max(1, len(patches))
        batches: list[list[torch.Tensor]] = []
        for patch in patches:
            if batches and len(batches[-1]) < limit and batches[-1][0].shape == patch.shape:
                batches[-1].append(patch)
            else:
                batches.append([patch])
        self._patch_batch = patches[0].shape[0] if patches else 1
        return [torch.cat(batch, dim=0) if len(batch) > 1 else batch[0] for batch in batches]

    def unpack_batched_results(self, processed_batches: list[torch.Tensor], num_patches: int) -> list[torch.Tensor]:
        """The processed patches, one per input patch, in order.

        :raises RuntimeError: when the batches do not hold ``num_patches`` patches.
        """
        if not processed_batches:
            return []
        per_patch = getattr(self, "_patch_batch", 1)
        patches = [p for batch in processed_batches for p in batch.split(per_patch, dim=0)]
        if len(patches) != num_patches:
            raise RuntimeError(f"The processed batches hold {len(patches)} patches, expected {num_patches}.")
        return patches


class TilingStrategy(DistributedSignalStrategy):
    """The built-in tiling behind deepinv's strategy interface: windows with halos where they meet, owned regions
    that partition the signal (see :mod:`distinv.tiling.geometry`). An adapter for code written against that interface;
    the engine itself runs the :class:`~distinv.tiling.planner.TiledLayout` it wraps (``.layout``) directly.

    :param img_size: full signal shape ``(B, C, *spatial)``.
    :param tiling_dims: the dims of ``img_size`` to cut (default: all spatial dims).
    :param patch_size, overlap: owned pixels per window and halo width (deepinv's defaults: 256 and 32).
    :param world_size, size_multiple, max_window_pixels: as in :meth:`TilePlan.build`.
    :raises ValueError: for ``stride`` (windows own disjoint regions), or knobs no plan can take.
    """

    def __init__(
        self,
        img_size: Sequence[int],
        tiling_dims: int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] | None = 256,
        overlap: int | Sequence[int] = DEFAULT_OVERLAP,
        *,
        world_size: int = 1,
        size_multiple: int = 1,
        max_window_pixels: int | None = None,
        stride: int | Sequence[int] | None = None,
        pad_mode: str | None = None,
    ):
        super().__init__(img_size)
        if stride is not None:
            raise ValueError(
                "stride is not supported: distinv's windows own disjoint regions that cover the signal; give "
                "patch_size and overlap instead."
            )
        # pad_mode is accepted for deepinv's signature: windows never reach past the signal, so nothing is padded.
        knobs = TilingKnobs(patch_size, overlap, size_multiple, None, max_window_pixels)
        dims = tiling_dims_of(len(self.img_size), tiling_dims)
        self.layout = plan_fixed(self.img_size, dims, world_size, knobs)

    def get_local_patches(self, x: torch.Tensor, local_indices: list[int]) -> list[tuple[int, torch.Tensor]]:
        return [(i, x[self.layout.index(self.layout.plan.windows[i].slices)]) for i in local_indices]

    def reduce_patches(self, out_tensor: torch.Tensor, local_pairs: list[tuple[int, torch.Tensor]]) -> None:
        for i, patch in local_pairs:
            window = self.layout.plan.windows[i]
            out_tensor[self.layout.index(window.owned_slices)] = patch[self.layout.index(window.owned_in_window)]

    def get_num_patches(self) -> int:
        return len(self.layout.plan.windows)


def run_user_strategy(
    ctx: DistributedContext,
    strategy: DistributedSignalStrategy,
    x: torch.Tensor,
    call: Callable[[torch.Tensor, list], torch.Tensor],
    max_batch_size: int | None = 1,
) -> torch.Tensor:
    """A user strategy's patches, balanced by count over ranks, batched by its ``apply_batching`` (at most
    ``max_batch_size`` per call), processed by ``call``, unpacked, written by the strategy
    into zeros and summed over ranks (one image-sized all-reduce; replicated output). A failure on any rank is an
    error on every rank before the all-reduce."""
    n = strategy.get_num_patches()
    owners = assign_balanced_counts([1.0] * n, ctx.world_size)
    local = [i for i in range(n) if owners[i] == ctx.rank]

    def work() -> torch.Tensor:
        pairs = strategy.get_local_patches(x, local)
        batches = strategy.apply_batching([patch for _, patch in pairs], max_batch_size)
        results = [call(batch, [(slice(None),) * x.ndim] * (batch.shape[0] // x.shape[0])) for batch in batches]
        patches = strategy.unpack_batched_results(results, len(pairs))
        out = torch.zeros_like(x)
        strategy.reduce_patches(out, [(i, p) for (i, _), p in zip(pairs, patches, strict=True)])
        return out

    return ctx.all_reduce(ctx.run_agreed(f"tiling strategy {type(strategy).__name__}", work))


def check_strategy(strategy: object) -> None:
    """Raise a clear TypeError if a user strategy lacks one of the documented methods."""
    missing = [m for m in STRATEGY_METHODS if not callable(getattr(strategy, m, None))]
    if missing:
        raise TypeError(
            f"tiling_strategy {type(strategy).__name__} lacks {', '.join(missing)}: subclass "
            "distinv.tiling.strategies.DistributedSignalStrategy and implement get_local_patches, reduce_patches and "
            "get_num_patches, or pass 'overlap_tiling' / 'basic'."
        )


def create_strategy(
    img_size: Sequence[int], tiling_dims: int | Sequence[int] | None = None, **kwargs
) -> DistributedSignalStrategy:
    """deepinv's factory: the built-in tiling for a signal of ``img_size`` (``tiling_dims`` default: every spatial
    dim); ``kwargs`` as :class:`TilingStrategy` takes them (``patch_size``, ``overlap``, ...)."""
    return TilingStrategy(img_size, tiling_dims, **kwargs)
