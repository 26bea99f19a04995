"""The tiled denoiser under autograd, two ways: recompute a rank's windows in the backward pass (:class:`TiledApply`,
no activations stored, one network call's activations alive at a time in backward (all of them under
``create_graph=True``, whose gradients keep their graphs); ``checkpoint_batches="always"``,
or ``"auto"`` when some rank's windows take several network calls), or keep them (:func:`tiled_with_activations`;
``"never"``, or ``"auto"`` when every rank's windows take one call). Both give the untiled gradients of the input and
of the network's weights, summed over ranks with one all-reduce per backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distinv.comm.autograd import ReplicatedInputs, SumEachOverRanks, backward_anchor
from distinv.comm.context import DistributedContext
from distinv.tiling.executor import WindowCall, assemble, cut_from, run_agreed, window_batches
from distinv.tiling.planner import TiledLayout


class TiledApply(torch.autograd.Function):
    """The tiled forward without storing activations; a backward that recomputes this rank's windows and
    sums gradients over ranks (one all-reduce for the input and all parameters together). It assumes, as a
    replicated loss does, that every rank back-propagates the same output gradient."""

    @staticmethod
    def forward(fctx, ctx: DistributedContext, layout: TiledLayout, call: WindowCall, network, x, *params):
        with torch.no_grad():
            pieces, dtype = run_agreed(ctx, layout, cut_from(x, layout), call, x.dtype)
            out = assemble(ctx, layout, pieces, dtype)
        fctx.ctx, fctx.layout, fctx.call, fctx.network, fctx.params = ctx, layout, call, network, params
        fctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(fctx, grad_out):
        # create_graph=True: the recomputed windows' graphs are kept, so that the gradients are functions of the
        # input, the weights and grad_out (a double backward then holds every batch's activations, as keeping them
        # would have)
        create_graph = torch.is_grad_enabled()
        (x,) = fctx.saved_tensors
        ctx, layout, call = fctx.ctx, fctx.layout, fctx.call
        if create_graph:
            # x and the weights through ReplicatedInputs, the network run with its outputs: the next backward sums
            # this rank's share of their gradients over ranks, and the anchor takes every rank there
            keep_x = x.requires_grad
            zero = torch.zeros((), device=ctx.device, requires_grad=True)
            anchor, *through = ReplicatedInputs.apply(ctx, zero, *([x] if keep_x else []), *fctx.params)
            x_in = through.pop(0) if keep_x else x.detach().requires_grad_(True)
            call = with_parameters(call, fctx.network, through)
            inputs = [x_in, *through]
        else:
            inputs = [x.detach().requires_grad_(True), *fctx.params]

        def local_gradients() -> Sequence[torch.Tensor | None]:
            """This rank's share, one network call at a time: a batch's activations are freed before the next
            batch is recomputed, so the backward pass holds one batch's activations, not all of the rank's."""
            total: list[torch.Tensor | None] = [None] * len(inputs)
            windows = layout.plan.windows
            with torch.enable_grad():
                for pieces in window_batches(ctx.rank, layout, cut_from(inputs[0], layout), call):
                    wanted = [grad_out[layout.index(windows[i].owned_slices)].to(p.dtype) for i, p in pieces.items()]
                    outputs = list(pieces.values())
                    grads = torch.autograd.grad(outputs, inputs, wanted, allow_unused=True, create_graph=create_graph)
                    del pieces
                    total = [g if t is None else t if g is None else t + g for t, g in zip(total, grads, strict=True)]
            return total

        grads = ctx.run_agreed("the tiled denoiser's backward", local_gradients)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]
        if create_graph:  # the sum over ranks differentiable too (its backward: ReplicatedInputs)
            grads = [g + anchor * 0 for g in grads]
            summed = SumEachOverRanks.apply(ctx, *grads) if ctx.is_distributed else grads
            return (None, None, None, None, summed[0] if fctx.needs_input_grad[4] else None, *summed[1:])
        flat = torch.cat([g.reshape(-1) for g in grads])
        ctx.all_reduce(flat)
        summed, offset = [], 0
        for t in inputs:
            summed.append(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        return (None, None, None, None, summed[0] if fctx.needs_input_grad[4] else None, *summed[1:])


def with_parameters(call: WindowCall, network: torch.nn.Module | None, values: Sequence[torch.Tensor]) -> WindowCall:
    """``call`` with ``network``'s trainable parameters (in ``named_parameters`` order) replaced by ``values``
    (through ``torch.func.functional_call``), so that autograd follows the network's weights as ``values``."""
    named = [n for n, p in network.named_parameters() if p.requires_grad] if network is not None else []
    if not named:
        return call
    by_name = dict(zip(named, values, strict=True))

    def processor(*args, **kwargs):
        return torch.func.functional_call(network, by_name, args, kwargs)

    return WindowCall(processor, call.sigma, call.kind, call.args, call.kwargs)


class AssembleOverRanks(torch.autograd.Function):
    """:func:`assemble` with autograd: backward gives each of this rank's owned pieces its slice of the output's
    gradient (every rank back-propagates the same gradient of the replicated output; no communication), through
    :class:`PickOwnedPieces` so that a double backward assembles the slices' own gradients."""

    @staticmethod
    def forward(fctx, ctx: DistributedContext, layout: TiledLayout, dtype, anchor, *pieces: torch.Tensor):
        fctx.ctx, fctx.layout, fctx.dtype = ctx, layout, dtype
        fctx.save_for_backward(anchor)
        owned = layout.plan.windows_of(ctx.rank)
        by_window = {owned[i].index: p.detach() for i, p in enumerate(pieces)}
        return assemble(ctx, layout, by_window, dtype)

    @staticmethod
    def backward(fctx, grad):
        anchor, *own = PickOwnedPieces.apply(fctx.ctx, fctx.layout, fctx.dtype, backward_anchor(fctx), grad)
        return (None, None, None, anchor, *own)


class PickOwnedPieces(torch.autograd.Function):
    """The owned slices of this rank's windows from a replicated image, after an anchor; backward: the slices'
    gradients assembled over ranks (:class:`AssembleOverRanks`)."""

    @staticmethod
    def forward(fctx, ctx: DistributedContext, layout: TiledLayout, dtype, anchor, image: torch.Tensor):
        fctx.ctx, fctx.layout, fctx.dtype = ctx, layout, dtype
        slices = [layout.index(w.owned_slices) for w in layout.plan.windows_of(ctx.rank)]
        return (anchor.view_as(anchor), *(image[s].view_as(image[s]) for s in slices))

    @staticmethod
    def backward(fctx, anchor_grad, *own_grads):
        image = AssembleOverRanks.apply(fctx.ctx, fctx.layout, fctx.dtype, anchor_grad, *own_grads)
        return (None, None, None, anchor_grad, image)


def tiled_with_activations(
    ctx: DistributedContext, layout: TiledLayout, call: WindowCall, x: torch.Tensor, network: torch.nn.Module | None
) -> torch.Tensor:
    """The tiled call under autograd keeping this rank's activations (no recomputation in backward; deepinv's
    ``checkpoint_batches="never"``). ``x`` and the network's trainable parameters enter through
    :class:`~distinv.comm.autograd.ReplicatedInputs`, so their gradients, partial on each rank (its own windows),
    are summed over ranks in one all-reduce per dtype; the network runs with those parameters through
    ``torch.func.functional_call``."""
    trainable = [p for p in network.parameters() if p.requires_grad] if network is not None else []
    inputs = [torch.zeros((), device=ctx.device, requires_grad=True), x, *trainable]
    anchor, x_replicated, *params = ReplicatedInputs.apply(ctx, *inputs)
    call = with_parameters(call, network, params)
    pieces, dtype = run_agreed(ctx, layout, cut_from(x_replicated, layout), call, x.dtype)
    return AssembleOverRanks.apply(ctx, layout, dtype, anchor, *pieces.values())
