"""Autograd through the stack's collectives, for gradients equal to the single-process ones.

A distributed call ``out = combine_r(local_r(x))`` (a sum or a gather over ranks) of replicated inputs ``x``
becomes, when some rank needs a gradient (agreed over ranks before the call):

- :class:`ReplicatedInputs` on the replicated inputs: the identity forward; backward, one all-reduce of their
  gradients, since each rank's graph holds only its own operators' share of them;
- :class:`SumOverRanks` or :class:`GatherOverRanks` on the local results: the collective forward; backward, the
  identity (every rank back-propagates the same gradient of a replicated output, as a replicated loss does), so
  no communication.

Both carry an *anchor* (a scalar that :class:`ReplicatedInputs` passes through): its zero gradient reaches
:class:`ReplicatedInputs` on every rank, including a rank whose operators do not depend on ``x`` or that owns
none, so every rank reaches the backward all-reduce and the output requires grad on every rank.

Double backward (``create_graph=True``): each backward is written with the other's forward, so it is itself
differentiable. :class:`ReplicatedInputs`'s backward is :class:`SumEachOverRanks` (an all-reduce whose backward
is :class:`ReplicatedInputs` again); :class:`SumOverRanks`'s backward passes the gradient through
:class:`ReplicatedInputs` (identity now, an all-reduce in the next backward); :class:`GatherOverRanks`'s backward
is :class:`PickOwnItems` (this rank's items now, an all-gather in the next backward). The anchors travel with
the gradients, so every rank reaches every collective of the next backward too. Outside ``create_graph`` the
extra functions record nothing and cost a view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from distinv.comm.context import DistributedContext
from distinv.comm.gather import sum_over_ranks


def summed_over_ranks(ctx: DistributedContext, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """New tensors holding each tensor's sum over ranks (one all-reduce per dtype, in the list's dtype order)."""
    out: list[torch.Tensor] = list(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for indexes in by_dtype.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indexes])
        ctx.all_reduce(flat)
        offset = 0
        for i in indexes:
            out[i] = flat[offset : offset + tensors[i].numel()].view_as(tensors[i])
            offset += tensors[i].numel()
    return out


def zeros_where_none(grads: Sequence[torch.Tensor | None], like: Sequence[tuple]) -> list[torch.Tensor]:
    """``grads`` with zeros of the recorded ``(shape, dtype, device)`` where autograd passed none."""
    return [
        torch.zeros(shape, dtype=dtype, device=device) if g is None else g
        for g, (shape, dtype, device) in zip(grads, like, strict=True)
    ]


def backward_anchor(fctx) -> torch.Tensor:
    """The anchor gradient a backward pass hands on (its function saved the forward's anchor first): a zero
    scalar; under ``create_graph``, zero times the forward's anchor, so that the next backward's graph reaches the
    forward's :class:`ReplicatedInputs` on every rank, whatever gradient arrived (a constant one included)."""
    (anchor,) = fctx.saved_tensors
    if torch.is_grad_enabled():
        return anchor * 0
    return torch.zeros((), dtype=anchor.dtype, device=anchor.device)


class ReplicatedInputs(torch.autograd.Function):
    """``(anchor, *tensors)`` unchanged; backward: their gradients summed over ranks (zeros where a rank has
    none)."""

    @staticmethod
    def forward(fctx, ctx: DistributedContext, *tensors: torch.Tensor):
        fctx.ctx = ctx
        fctx.like = [(t.shape, t.dtype, t.device) for t in tensors]
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(fctx, *grads):
        return (None, *SumEachOverRanks.apply(fctx.ctx, *zeros_where_none(grads, fctx.like)))


class SumEachOverRanks(torch.autograd.Function):
    """Each tensor summed over ranks (:func:`summed_over_ranks`); backward: :class:`ReplicatedInputs` (every rank
    back-propagates the same gradient of a replicated sum)."""

    @staticmethod
    def forward(fctx, ctx: DistributedContext, *tensors: torch.Tensor):
        fctx.ctx = ctx
        return tuple(summed_over_ranks(ctx, list(tensors)))

    @staticmethod
    def backward(fctx, *grads):
        return (None, *ReplicatedInputs.apply(fctx.ctx, *grads))


class SumOverRanks(torch.autograd.Function):
    """The sum of every rank's local terms (one all-reduce); backward: the output's gradient to each local term."""

    @staticmethod
    def forward(fctx, ctx: DistributedContext, shape, dtype, anchor: torch.Tensor, *terms: torch.Tensor):
        fctx.ctx, fctx.count = ctx, len(terms)
        fctx.save_for_backward(anchor)
        return sum_over_ranks(ctx, list(terms), shape, dtype, ctx.device)

    @staticmethod
    def backward(fctx, grad):
        anchor, grad = ReplicatedInputs.apply(fctx.ctx, backward_anchor(fctx), grad)
        return (None, None, None, anchor, *([grad] * fctx.count))


class GatherOverRanks(torch.autograd.Function):
    """All ``K`` items on every rank from each rank's own (``gather(local)`` does the collective); backward: each
    own item's gradient from its output."""

    @staticmethod
    def forward(
        fctx,
        gather: Callable[[list[torch.Tensor]], list[torch.Tensor]],
        local_items: Sequence[int],
        anchor: torch.Tensor,
        *local: torch.Tensor,
    ):
        fctx.gather, fctx.local_items = gather, list(local_items)
        fctx.save_for_backward(anchor)
        everything = gather([t.detach() for t in local])
        fctx.like_all = [(t.shape, t.dtype, t.device) for t in everything]
        return tuple(t.view_as(t) for t in everything)

    @staticmethod
    def backward(fctx, *grads):
        items = zeros_where_none(grads, fctx.like_all)
        anchor, *own = PickOwnItems.apply(fctx.gather, fctx.local_items, backward_anchor(fctx), *items)
        return (None, None, anchor, *own)


class PickOwnItems(torch.autograd.Function):
    """This rank's items (``local_items``) of a replicated list of ``K`` tensors, after an anchor; backward: the
    own items' gradients gathered from every rank (:class:`GatherOverRanks`), the gradient of the whole list."""

    @staticmethod
    def forward(fctx, gather: Callable, local_items: Sequence[int], anchor: torch.Tensor, *items: torch.Tensor):
        fctx.gather, fctx.local_items = gather, list(local_items)
        return (anchor.view_as(anchor), *(items[i].view_as(items[i]) for i in fctx.local_items))

    @staticmethod
    def backward(fctx, anchor_grad, *own_grads):
        everything = GatherOverRanks.apply(fctx.gather, fctx.local_items, anchor_grad, *own_grads)
        return (None, None, anchor_grad, *everything)


def wanted_gradients(
    x: Any, y: Any, y_local: Any, key: tuple | None, parameters: Iterable[torch.Tensor]
) -> tuple[bool, bool, bool]:
    """Which gradients this rank wants from a call: of ``x``, of a replicated ``y`` (``key`` set), of anything else
    (a local ``y`` or one of the operators' ``parameters``). All false outside grad mode."""
    if not torch.is_grad_enabled():
        return (False, False, False)
    want_x = isinstance(x, torch.Tensor) and x.requires_grad
    want_y = key is not None and any(t.requires_grad for t in y)
    local = key is None and y_local is not None and any(t.requires_grad for t in y_local)
    return (want_x, want_y, local or any(p.requires_grad for p in parameters))


def replicate_inputs(
    ctx: DistributedContext, x: Any, y: Any, local_indexes: Sequence[int], wanted: tuple[bool, bool, bool]
) -> tuple[Any, Any, Any, torch.Tensor]:
    """``x`` and the replicated ``y`` through :class:`ReplicatedInputs` (those some rank wants a gradient of, as
    agreed in ``wanted``), with this rank's entries of the new ``y`` (``None`` when ``y`` is not wanted) and the
    anchor."""
    want_x, want_y, _ = wanted
    inputs = [torch.zeros((), device=ctx.device, requires_grad=True)]
    inputs += [x] if want_x else []
    inputs += list(y) if want_y else []
    outputs = list(ReplicatedInputs.apply(ctx, *inputs))
    anchor = outputs.pop(0)
    x = outputs.pop(0) if want_x else x
    y_local = [outputs[i] for i in local_indexes] if want_y else None
    return x, (outputs if want_y else y), y_local, anchor
