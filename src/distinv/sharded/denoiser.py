"""The tiled denoiser on a signal sharded by rows: each rank runs the windows of its own band of tile rows.

The plan is the tiled denoiser's (:class:`~distinv.tiling.geometry.TilePlan`, the same windows for the same knobs), with
at least one row of windows per rank, and its rows of windows dealt to ranks in contiguous bands
(:func:`row_band_plan`). The bands' bounds are the owned rows of those windows, so a
:class:`~distinv.placements.row_bands.RowBands` cut at :meth:`ShardedDenoiser.bounds_for` holds exactly what its rank's
windows own: the physics and the denoiser share one partition and no data moves between them. A call reads top to
bottom:

1. **halo**: each rank receives the rows its windows read beyond its band from its two neighbours
   (:func:`~distinv.placements.row_bands.with_row_halo`, the one halo exchange :mod:`distinv.comm.halo`; not
   periodic: windows stop at the signal's border), never an image;
2. **run**: its windows, cut from its band with that halo (``executor.cut_from``), same-size windows batched
   (``executor.run_agreed``: an error on one rank is an error on every rank, before any further collective);
3. **keep**: each window's owned region written into the rank's output band (``executor.write_owned``; sharded,
   no gather).

Inference only (no autograd graph).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from distinv.comm.context import DistributedContext
from distinv.placements.row_bands import ROWS, RowBands, shard_rows, with_row_halo
from distinv.tiling.executor import cut_from, run_agreed, window_call, write_owned
from distinv.tiling.geometry import TilePlan
from distinv.tiling.planner import TiledLayout, tiling_dims_of
from distinv.tiling.processing import DistributedProcessing


def row_band_plan(plan: TilePlan) -> TilePlan:
    """``plan`` with its rows of windows (along the first tiled dim) dealt to ranks in contiguous bands, row
    ``j`` of ``G`` to rank ``j * world_size // G`` (rows are near-equal, so the bands are balanced).

    :raises ValueError: when the plan has fewer rows of windows than ranks.
    """
    rows, world = plan.grid[0], plan.world_size
    if rows < world:
        raise ValueError(f"a plan of {rows} rows of windows cannot give each of {world} ranks a band.")
    per_row = math.prod(plan.grid[1:])
    windows = tuple(dataclasses.replace(w, rank=(w.index // per_row) * world // rows) for w in plan.windows)
    return dataclasses.replace(plan, windows=windows)


def row_band_patch(
    patch_size: int | Sequence[int] | None, shape: Sequence[int], world_size: int, size_multiple: int, overlap: int = 0
) -> int | tuple[int, ...] | None:
    """``patch_size`` as given when it cuts ``shape[0]`` rows into at least one row of windows per rank (then the
    windows are the replicated engine's); else its first dim lowered to the most that does (the other dims keep
    theirs: windows grow wide rather than many). ``None`` stays ``None`` (the planner then picks a grid with enough
    rows). Rows that do not divide among the ranks leave the bands unequal by one row of windows."""
    if patch_size is None:
        return None
    patches = [patch_size] * len(shape) if isinstance(patch_size, int) else list(patch_size)
    if math.ceil(shape[0] / patches[0]) >= world_size:
        return patch_size
    patches[0] = max(size_multiple, shape[0] // world_size // size_multiple * size_multiple)
    if patches[0] < overlap or math.ceil(shape[0] / patches[0]) < world_size:
        raise ValueError(
            f"{shape[0]} rows over {world_size} ranks leave bands of {shape[0] // world_size} rows, fewer than the "
            f"overlap {overlap} (or the size multiple {size_multiple}): use fewer ranks or a smaller overlap."
        )
    return tuple(patches)


def band_bounds_of(plan: TilePlan) -> tuple[int, ...]:
    """The rows each rank's windows own: ``bounds[r]:bounds[r + 1]`` (length ``world_size + 1``)."""
    bounds = [0] * (plan.world_size + 1)
    bounds[-1] = plan.shape[0]
    for w in reversed(plan.windows):  # the first window of each rank's first row wins
        bounds[w.rank] = w.owned_origin[0]
    return tuple(bounds)


def halo_rows(plan: TilePlan, bounds: Sequence[int]) -> tuple[list[int], list[int]]:
    """Per rank, the rows its windows read before and after its band."""
    above, below = [0] * plan.world_size, [0] * plan.world_size
    for w in plan.windows:
        above[w.rank] = max(above[w.rank], bounds[w.rank] - w.origin[0])
        below[w.rank] = max(below[w.rank], w.origin[0] + w.size[0] - bounds[w.rank + 1])
    return above, below


class ShardedDenoiser:
    """``denoiser(x, sigma)`` for ``x`` a :class:`~distinv.placements.row_bands.RowBands`, returning one (see the
    module).

    :param ctx: the entered context.
    :param processor: the network, ``f(x, sigma)`` keeping its input's shape (made the same on every rank).
    :param tiling: the tiled denoiser's knobs (``patch_size``, ``overlap``, ``max_batch_size``, ``size_multiple``,
        ``max_window_pixels``, ``tiling_dims``) with its defaults, see :class:`~distinv.DistributedProcessing`;
        ``patch_size="auto"`` and user strategies are not available here, and the tiled dims must include dim 2.
    :raises ValueError: naming the knob, for knobs no row-band plan can take.
    """

    def __init__(self, ctx: DistributedContext, processor: torch.nn.Module, **tiling: Any):
        if tiling.get("patch_size") == "auto" or tiling.get("max_batch_size") == "auto":
            raise ValueError(
                "patch_size='auto' / max_batch_size='auto': the sharded denoiser takes fixed knobs; plan them with "
                "`distinv plan` and pass the numbers."
            )
        if not isinstance(tiling.get("tiling_strategy", "overlap_tiling"), str):
            raise ValueError("tiling_strategy: the sharded denoiser runs the built-in overlap tiling only.")
        self.ctx = ctx
        self.tiled = DistributedProcessing(ctx, processor, **tiling)  # validates the knobs, broadcasts the network
        self._layouts: dict[tuple[int, ...], TiledLayout] = {}

    def layout_for(self, shape: Sequence[int]) -> TiledLayout:
        """The layout for signals of ``shape`` ``(B, C, N, ...)`` (cached): the tiled denoiser's windows with at least
        one row of windows per rank (a given patch lowered along the rows if needed: :func:`row_band_patch`), dealt
        in row bands."""
        shape = tuple(shape)
        if shape not in self._layouts:
            dims = tiling_dims_of(len(shape), self.tiled.tiling_dims)
            if dims[0] != ROWS:
                raise ValueError(f"tiling_dims={self.tiled.tiling_dims}: the sharded denoiser must tile dim 2.")
            knobs, spatial, world = self.tiled.knobs, [shape[d] for d in dims], self.ctx.world_size
            plan = TilePlan.build(
                spatial,
                world,
                row_band_patch(knobs.patch_size, spatial, world, knobs.size_multiple, _first(knobs.overlap)),
                knobs.overlap,
                knobs.size_multiple,
                knobs.max_window_pixels,
                rows_at_least=world,
            )
            self._layouts[shape] = TiledLayout(shape, dims, row_band_plan(plan), knobs.max_batch_size)
        return self._layouts[shape]

    def bounds_for(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The partition of a signal of ``shape`` this denoiser (and the physics beside it) works on."""
        return band_bounds_of(self.layout_for(shape).plan)

    def shard(self, x: torch.Tensor) -> RowBands:
        """This rank's band of a replicated ``x``, cut at :meth:`bounds_for` (a view; no communication)."""
        return shard_rows(self.ctx, x, self.bounds_for(x.shape))

    def __call__(self, x: RowBands, sigma: Any = None, *args: Any, **kwargs: Any) -> RowBands:
        """Denoise ``x`` (sharded in, sharded out, in the dtype the network returns).

        :raises TypeError: for a replicated tensor (shard it with :meth:`shard`).
        :raises ValueError: for bands cut elsewhere than :meth:`bounds_for`, or a noise map ``sigma``.
        """
        if not isinstance(x, RowBands):
            raise TypeError(f"x must be RowBands (cut by denoiser.shard(x)), got {type(x).__name__}.")
        layout = self.layout_for(x.shape)
        plan, rank = layout.plan, self.ctx.rank
        bounds = band_bounds_of(plan)
        if x.bounds != bounds:
            raise ValueError(
                f"x's bands {x.bounds} are not this denoiser's {bounds}: cut them with denoiser.shard(x) or "
                "shard_rows(ctx, x, denoiser.bounds_for(x.shape))."
            )
        call = window_call(self.tiled.processor, sigma, x.shape, args, kwargs)
        if call.kind == "map":
            raise ValueError("sigma: the sharded denoiser takes a number or one level per sample, not a noise map.")
        above, below = halo_rows(plan, bounds)
        with torch.no_grad():
            extended = with_row_halo(x, above, below, periodic=False)
            window_input = cut_from(extended, layout, first=bounds[rank] - above[rank])
            pieces, dtype = run_agreed(self.ctx, layout, window_input, call, x.dtype)
            out = write_owned(torch.empty(x.local.shape, dtype=dtype, device=x.device), layout, pieces, bounds[rank])
        return x.like(out)


def _first(overlap: int | Sequence[int]) -> int:
    """The overlap along the rows (the first tiled dim)."""
    return overlap if isinstance(overlap, int) else overlap[0]
