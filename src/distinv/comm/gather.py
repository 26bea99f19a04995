"""Collectives over items that live on one rank each: gathers of uneven tensors, sums over ranks, and a module
made the same on every rank.

Items (one per operator) have an owner rank and any shape or dtype, complex included. Every rank knows the
owners (the assignment is computed identically everywhere); shapes and dtypes are exchanged once per call
signature (:func:`exchange_layout`) and reused, so a steady-state gather is a single collective.

Gather strategies (deepinv's names):

- ``"concatenated"``: each rank packs its items as bytes into one buffer; one ``all_gather``.
- ``"broadcast"``: one ``broadcast`` per item from its owner (lower peak memory, K collectives).
- ``"naive"``: ``all_gather_object`` of the pickled items (no layout needed; slow for big tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from distinv.comm.context import DistributedContext

GATHER_STRATEGIES = ("concatenated", "naive", "broadcast")
_ALIGN = 16  # bytes; keeps every packed item aligned for any dtype up to complex128


@dataclass(frozen=True)
class Layout:
    """Shape and dtype of every item (indexed globally), and the rank that owns it."""

    owners: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    def nbytes(self, item: int) -> int:
        numel = 1
        for n in self.shapes[item]:
            numel *= n
        size = numel * _itemsize(self.dtypes[item])
        return -(-size // _ALIGN) * _ALIGN

    def rank_bytes(self, rank: int) -> int:
        return sum(self.nbytes(i) for i, owner in enumerate(self.owners) if owner == rank)


def exchange_layout(
    ctx: DistributedContext, owners: Sequence[int], local_items: Sequence[int], local: Sequence[torch.Tensor]
) -> Layout:
    """Every rank learns the shape and dtype of every item (one ``all_gather_object``)."""
    mine = [(i, tuple(t.shape), t.dtype) for i, t in zip(local_items, local, strict=True)]
    per_rank: list = [None] * ctx.world_size
    ctx.all_gather_object(per_rank, mine)
    shapes: list = [None] * len(owners)
    dtypes: list = [None] * len(owners)
    for entries in per_rank:
        for i, shape, dtype in entries:
            shapes[i], dtypes[i] = shape, dtype
    return Layout(tuple(owners), tuple(shapes), tuple(dtypes))


def gather_items(
    ctx: DistributedContext,
    local_items: Sequence[int],
    local: Sequence[torch.Tensor],
    num_items: int,
    strategy: str,
    layout: Layout | None,
) -> list[torch.Tensor]:
    """All items on every rank, in global order. ``layout`` is required except for ``"naive"``.

    This rank's own items are returned as they are (no copy); the others are views into received buffers.
    """
    if not ctx.is_distributed:
        out: list = [None] * num_items
        for i, t in zip(local_items, local, strict=True):
            out[i] = t
        return out
    if strategy == "naive":
        return _gather_naive(ctx, local_items, local, num_items)
    if layout is None:
        raise ValueError(f"gather strategy {strategy!r} needs the items' layout")
    if strategy == "concatenated":
        return _gather_concatenated(ctx, local_items, local, layout)
    if strategy == "broadcast":
        return _gather_broadcast(ctx, local_items, local, layout)
    raise ValueError(f"gather_strategy={strategy!r}: use one of {GATHER_STRATEGIES}.")


def sum_over_ranks(
    ctx: DistributedContext,
    local: Sequence[torch.Tensor],
    shape: torch.Size | tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    globally: bool = True,
) -> torch.Tensor:
    """Sum this rank's tensors (zeros if it has none), then, if ``globally``, over ranks (one all-reduce).

    Local terms are accumulated in place, in index order: one image-sized buffer, not one per term. The first
    term is copied, because an operator may hand back its own input (the identity does) and the caller's
    tensor must not change.
    """
    total = None
    for t in local:
        total = t.clone() if total is None else total.add_(t)
    if total is None:
        total = torch.zeros(shape, dtype=dtype, device=device)
    if globally:
        ctx.all_reduce(total)
    return total


def broadcast_module_state(ctx: DistributedContext, module: torch.nn.Module) -> None:
    """Make ``module`` the same on every rank: rank 0's parameters and buffers, broadcast in place (one
    broadcast per dtype), as ``DistributedDataParallel`` does at construction."""
    if not ctx.is_distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in [*module.parameters(), *module.buffers()]:
        by_dtype.setdefault(t.dtype, []).append(t)
    with torch.no_grad():
        for tensors in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1).to(ctx.device) for t in tensors])
            ctx.broadcast(flat, src=0)
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def _gather_naive(ctx, local_items, local, num_items) -> list[torch.Tensor]:
    per_rank: list = [None] * ctx.world_size
    ctx.all_gather_object(per_rank, [(i, t.detach().cpu()) for i, t in zip(local_items, local, strict=True)])
    out: list = [None] * num_items
    for entries in per_rank:
        for i, t in entries:
            out[i] = t.to(ctx.device)
    for i, t in zip(local_items, local, strict=True):
        out[i] = t
    return out


def _gather_concatenated(ctx, local_items, local, layout: Layout) -> list[torch.Tensor]:
    width = max(layout.rank_bytes(r) for r in range(ctx.world_size))
    device = ctx.device
    send = torch.zeros(width, dtype=torch.uint8, device=device)
    offset = 0
    for i, t in zip(local_items, local, strict=True):
        raw = _as_bytes(t)
        send[offset : offset + raw.numel()] = raw
        offset += layout.nbytes(i)
    received = torch.empty((ctx.world_size, width), dtype=torch.uint8, device=device)
    moved = ctx.all_gather_bytes(width)
    with ctx.communicating(moved, moved):
        dist.all_gather(list(received.unbind(0)), send)
    out: list = [None] * len(layout.owners)
    offsets = [0] * ctx.world_size
    for i, owner in enumerate(layout.owners):
        start = offsets[owner]
        offsets[owner] += layout.nbytes(i)
        if owner != ctx.rank:
            out[i] = _from_bytes(received[owner, start:], layout.shapes[i], layout.dtypes[i])
    for i, t in zip(local_items, local, strict=True):
        out[i] = t
    return out


def _gather_broadcast(ctx, local_items, local, layout: Layout) -> list[torch.Tensor]:
    mine = dict(zip(local_items, local, strict=True))
    out: list = [None] * len(layout.owners)
    for i, owner in enumerate(layout.owners):
        if owner == ctx.rank:
            raw = _as_bytes(mine[i].to(ctx.device))  # an operator may compute on the host: NCCL sends from the GPU
            with ctx.communicating(sent=raw.numel()):
                dist.broadcast(raw, src=owner)
            out[i] = mine[i]
        else:
            buffer = torch.empty(layout.nbytes(i), dtype=torch.uint8, device=ctx.device)
            with ctx.communicating(received=buffer.numel()):
                dist.broadcast(buffer, src=owner)
            out[i] = _from_bytes(buffer, layout.shapes[i], layout.dtypes[i])
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().contiguous().reshape(-1)
    raw = flat.view(torch.uint8)
    padded = -(-raw.numel() // _ALIGN) * _ALIGN
    if padded != raw.numel():
        raw = torch.cat([raw, raw.new_zeros(padded - raw.numel())])
    return raw


def _from_bytes(buffer: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    numel = 1
    for n in shape:
        numel *= n
    return buffer[: numel * _itemsize(dtype)].view(dtype).view(shape)
