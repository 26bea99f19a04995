"""Replicated trainable parameters (an unrolled model's step sizes, regularisation weights) kept identical on every
rank, as ``DistributedDataParallel`` keeps a model's.

deepinv 0.5 averages each parameter's gradient over ranks in its own hook; hooks of different parameters may fire
in another order on another rank, so distinv waits until every parameter of the group has its gradient and then
averages them all with one all-reduce per dtype, in the group's order: the same collectives on every rank. With
distinv's collectives (exact sums over ranks, differentiable) a replicated parameter's gradient is already the same
on every rank, so the average leaves it unchanged; it keeps the ranks identical whatever the computation does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distinv.comm.autograd import summed_over_ranks
from distinv.comm.context import DistributedContext


class DistributedReplicatedParameters:
    """Average the gradients of ``parameters`` over ranks after each backward pass that reaches all of them.

    :param ctx: the entered context.
    :param parameters: replicated parameters (the same values on every rank); those not requiring grad are left out.
    :param average: divide the sum over ranks by the world size (default), else keep the sum.
    """

    def __init__(self, ctx: DistributedContext, parameters: Sequence[torch.nn.Parameter], average: bool = True):
        self.ctx = ctx
        self.average = average
        self.parameters = [p for p in parameters if isinstance(p, torch.nn.Parameter) and p.requires_grad]
        self._accumulated: set[int] = set()
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_gradient) for p in self.parameters]

    def _on_gradient(self, parameter: torch.nn.Parameter) -> None:
        self._accumulated.add(id(parameter))
        if len(self._accumulated) == len(self.parameters):
            self._accumulated.clear()
            self.synchronize()

    def synchronize(self) -> None:
        """Average (or sum) the parameters' gradients over ranks now (a missing gradient counts as zeros)."""
        if not self.ctx.is_distributed or not self.parameters:
            return
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in self.parameters]
        for p, summed in zip(self.parameters, summed_over_ranks(self.ctx, grads), strict=True):
            p.grad = summed / self.ctx.world_size if self.average else summed

    def remove_hooks(self) -> None:
        """Stop synchronising (the gradients stay as they are)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
