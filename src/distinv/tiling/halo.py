"""Halo exchange: build each rank's windows from a sharded signal, receiving only the pixels it lacks.

A signal is sharded by a :class:`~distinv.tiling.geometry.TilePlan` when each rank holds the owned regions of its own
windows (what a tiled call with ``gather=False`` returns). To run the plan's windows again, a rank needs, for
each of its windows, the parts of other ranks' owned regions that fall inside it: the halos. Every rank
derives from the plan alone who sends what to whom, so the exchange is one batch of point-to-point sends and
receives of exactly those pieces; no rank ever holds the full signal.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from distinv.comm.context import DistributedContext
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
    ops, received = [], []
    for target in plan.windows:  # the same order on every rank, so sends and receives pair up
        for source in plan.sources_of(target):  # its neighbours only: linear in the window count
            if ctx.rank not in (target.rank, source.rank):
                continue
            meet = _overlap(target.origin, target.size, source.owned_origin, source.owned_size)
            if meet is None:
                continue
            if source.rank == ctx.rank:
                piece = owned[source.index][index(_local(*meet, source.owned_origin))]
                if target.rank == ctx.rank:
                    windows[target.index][index(_local(*meet, target.origin))] = piece
                else:
                    ops.append(dist.P2POp(dist.isend, piece.contiguous(), target.rank, group=ctx.p2p_group))
            else:
                buffer = torch.empty_like(windows[target.index][index(_local(*meet, target.origin))])
                ops.append(dist.P2POp(dist.irecv, buffer, source.rank, group=ctx.p2p_group))
                received.append((target, meet, buffer))
    if ops:
        sent = sum(op.tensor.numel() * op.tensor.element_size() for op in ops if op.op is dist.isend)
        got = sum(buffer.numel() * buffer.element_size() for _, _, buffer in received)
        with ctx.communicating(sent, got):
            for request in dist.batch_isend_irecv(ops):
                request.wait()
    for target, meet, buffer in received:
        windows[target.index][index(_local(*meet, target.origin))] = buffer
    return windows
