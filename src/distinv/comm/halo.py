"""Halo exchange: the one mechanism that brings a rank the pieces of a sharded signal that other ranks hold.

A sharded signal (row bands, or a tiled denoiser's owned regions) is read beyond what a rank owns: a blur's kernel
reaches rows of the neighbouring bands, a window reaches its neighbours' owned regions. Each such piece is a
:class:`Transfer` from the rank that holds it to the rank that needs it, with a tag derived from the shared
partition. Every rank lists the transfers it takes part in from that partition alone, in one global order, so the
transfers between two ranks carry the same tags in the same order on both sides and pair up without any message
about them; they run as one batch of point-to-point calls on ``ctx.p2p_group`` (the number of calls differs by
rank), with the bytes this rank sends and receives counted. A piece a rank holds and needs itself
is copied, not sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from distinv.comm.context import DistributedContext


@dataclass(frozen=True)
class Transfer:
    """One piece of a halo: rank ``source`` holds it, rank ``target`` needs it; ``tag`` tells it from the other
    pieces between the same two ranks (the same number on both)."""

    source: int
    target: int
    tag: int


def exchange(
    ctx: DistributedContext,
    transfers: Sequence[Transfer],
    read: Callable[[int], torch.Tensor],
    buffer: Callable[[int], torch.Tensor],
    write: Callable[[int, torch.Tensor], None],
) -> None:
    """Run the transfers this rank takes part in.

    :param transfers: the transfers this rank takes part in (others are skipped), in the global order.
    :param read: ``read(i)``: the piece of transfer ``i``, on its source rank.
    :param buffer: ``buffer(i)``: an empty tensor of the piece's shape and dtype, on its target rank.
    :param write: ``write(i, piece)``: store the piece of transfer ``i``, on its target rank (after the exchange).
    """
    rank = ctx.rank
    ops, received, sent_bytes = [], [], 0
    for i, t in enumerate(transfers):
        if t.source == rank and t.target == rank:
            write(i, read(i))
        elif t.source == rank:
            piece = read(i).contiguous()
            ctx.check_device("halo exchange (send)", piece)
            ops.append(dist.P2POp(dist.isend, piece, t.target, ctx.p2p_group, t.tag))
            sent_bytes += piece.numel() * piece.element_size()
        elif t.target == rank:
            incoming = buffer(i)
            ctx.check_device("halo exchange (receive)", incoming)
            ops.append(dist.P2POp(dist.irecv, incoming, t.source, ctx.p2p_group, t.tag))
            received.append((i, incoming))
    if ops:
        received_bytes = sum(b.numel() * b.element_size() for _, b in received)
        with ctx.communicating(sent_bytes, received_bytes):
            for request in dist.batch_isend_irecv(ops):
                request.wait()
    for i, incoming in received:
        write(i, incoming)
