"""Replicated trainable parameters (an unrolled model's step sizes, regularisation weights) kept identical on every
rank, as ``DistributedDataParallel`` keeps a model's.

deepinv 0.5 averages each parameter's gradient over ranks in its own hook; hooks of different parameters may fire
in another order on another rank, so distinv averages them all once the backward pass has ended (as
``DistributedDataParallel`` does: the first gradient of a pass queues the average at the pass's end), with one
all-reduce per dtype, in the group's order: the same collectives on every rank, whatever the order the gradients
came in and whichever parameters the pass reached. Nothing carries over from one backward pass to the next. With
distinv's collectives (exact sums over ranks, differentiable) a replicated parameter's gradient is already the same
on every rank, so the average leaves it unchanged; it keeps the ranks identical whatever the computation does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distinv.comm.autograd import summed_over_ranks
from distinv.comm.context import DistributedContext


class DistributedReplicatedParameters:
    """Average the gradients of ``parameters`` over ranks at the end of each backward pass that reaches any of them
    (every rank must run the same backward passes, as under ``DistributedDataParallel``). A parameter no rank's pass
    reached keeps no gradient; one that some ranks' passes reached gets the average with zeros for the others.

        :param ctx: the entered context.
        :param parameters: replicated parameters (the same values on every rank); those not requiring grad are left out.
        :param average: divide the sum over ranks by the world size (default), else keep the sum.
    """

    def __init__(self, ctx: DistributedContext, parameters: Sequence[torch.nn.Parameter], average: bool = True):
        self.ctx = ctx
        self.average = average
        self.parameters = [p for p in parameters if isinstance(p, torch.nn.Parameter) and p.requires_grad]
        self._queued = False  # the average is queued for the end of the running backward pass
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_gradient) for p in self.parameters]

    def _on_gradient(self, parameter: torch.nn.Parameter) -> None:
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        self._queued = False
        self.synchronize()

    def synchronize(self) -> None:
        """Average (or sum) the parameters' gradients over ranks now (a missing gradient counts as zeros; a
        parameter without a gradient on every rank keeps none)."""
        if not self.ctx.is_distributed or not self.parameters:
            return
        first = self.parameters[0]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in self.parameters]
        present = torch.tensor([float(p.grad is not None) for p in self.parameters], dtype=first.dtype)
        *summed, present = summed_over_ranks(self.ctx, [*grads, present.to(first.device)])
        for p, total, anywhere in zip(self.parameters, summed, present.tolist(), strict=True):
            if anywhere:
                p.grad = total / self.ctx.world_size if self.average else total

    def remove_hooks(self) -> None:
        """Stop synchronising (the gradients stay as they are)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
