"""Halo exchange: build each rank's windows from a sharded signal, receiving only the pixels it lacks.

A signal is sharded by a :class:`~distinv.tiling.geometry.TilePlan` when each rank holds the owned regions of its own
windows (what a tiled call with ``gather=False`` returns). To run the plan's windows again, a rank needs, for
each of its windows, the parts of other ranks' owned regions that fall inside it: the halos. Every rank
derives from the plan alone who sends what to whom, so the exchange is one batch of point-to-point sends and
receives of exactly those pieces; no rank ever holds the full signal.
"""

from __future__ import annotations

import torch

from distinv.comm.context import DistributedContext
from distinv.comm.halo import Transfer, exchange
from distinv.tiling.planner import TiledLayout


def _overlap(a_origin, a_size, b_origin, b_size) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Origin and size of the intersection of two boxes, or None if they do not meet."""
    lo = tuple(max(a, b) for a, b in zip(a_origin, b_origin, strict=True))
    hi = tuple(min(a + s, b + t) for a, s, b, t in zip(a_origin, a_size, b_origin, b_size, strict=True))
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return None
    return lo, tuple(h - low for low, h in zip(lo, hi, strict=True))


def _local(box_origin, box_size, frame_origin) -> tuple[slice, ...]:
    """Slices of a box inside a frame that starts at ``frame_origin``."""
    return tuple(slice(o - f, o - f + s) for o, s, f in zip(box_origin, box_size, frame_origin, strict=True))


def exchange_windows(
    ctx: DistributedContext, layout: TiledLayout, owned: dict[int, torch.Tensor], like: torch.Tensor | None
) -> dict[int, torch.Tensor]:
    """The input of each of this rank's windows, from the owned regions each rank holds.

    :param layout: the tiling whose plan sharded the signal.
    :param owned: this rank's owned regions by window index, each ``(B, C, ...)`` with the tiled dims cut to
        the owned size.
    :param like: any one of them, for the windows' batch, channels and dtype (``None`` on a rank with no window).
    :return: this rank's window inputs by window index.
    """
    plan, index = layout.plan, layout.index
    windows: dict[int, torch.Tensor] = {}
    for w in plan.windows_of(ctx.rank):
        shape = list(like.shape)
        for d, size in zip(layout.tiling_dims, w.size, strict=True):
            shape[d] = size
        windows[w.index] = torch.empty(shape, dtype=like.dtype, device=like.device)
    pieces = []  # (transfer, target window, source window, the box where they meet), in one global order
    count = len(plan.windows)
    for target in plan.windows:
        for source in plan.sources_of(target):  # its neighbours only: linear in the window count
            if ctx.rank not in (target.rank, source.rank):
                continue
            meet = _overlap(target.origin, target.size, source.owned_origin, source.owned_size)
            if meet is not None:
                pieces.append(
                    (Transfer(source.rank, target.rank, target.index * count + source.index), target, source, meet)
                )

    def into_window(i: int) -> torch.Tensor:
        _, target, _, meet = pieces[i]
        return windows[target.index][index(_local(*meet, target.origin))]

    def read(i: int) -> torch.Tensor:
        _, _, source, meet = pieces[i]
        return owned[source.index][index(_local(*meet, source.owned_origin))]

    def write(i: int, piece: torch.Tensor) -> None:
        into_window(i).copy_(piece)

    exchange(ctx, [p[0] for p in pieces], read, lambda i: torch.empty_like(into_window(i)), write)
    return windows
