"""An unrolled PGD on sharded iterates, differentiable end to end: training a network on row bands.

``x_{k+1} = D(x_k - g_k (A^T A x_k - A^T y), sigma)`` with every iterate a
:class:`~distinv.placements.row_bands.RowBands`: the physics' ``A^T A`` (:class:`~distinv.sharded.blur.ShardedBlur`:
its halo exchanged with autograd), the denoiser the domain-parallel one on bands
(:class:`~distinv.domain.denoiser.DomainParallelDenoiser`: rows exchanged per layer, its parameters' gradients
summed over ranks), the steps ``g_k`` a replicated trainable parameter whose gradient is summed over ranks too. No
image is gathered, forward or backward. Each rank's loss is its share of the whole signal's
(:func:`sharded_mse`), so ``loss.backward()`` on every rank leaves every rank the single process's gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distinv.comm.autograd import ReplicatedInputs
from distinv.domain.denoiser import DomainParallelDenoiser
from distinv.placements.row_bands import RowBands, check_bands


class ShardedUnrolledPGD(nn.Module):
    """``iterations`` unrolled PGD steps on row bands (see the module's docstring).

    :param physics: the sharded physics (``A_adjoint``, ``A_adjoint_A`` on RowBands), e.g. ``ShardedBlur``.
    :param denoiser: the domain-parallel denoiser; the bands are its (``denoiser.shard``).
    :param iterations: unrolled steps.
    :param stepsize: the first value of every step ``g_k`` (trainable).
    :param sigma: the denoiser's noise level (fixed).
    """

    def __init__(
        self, physics, denoiser: DomainParallelDenoiser, iterations: int, stepsize: float, sigma: float
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations={iterations}: give at least one unrolled step.")
        self.physics, self.denoiser, self.sigma = physics, denoiser, sigma
        self.stepsize = nn.Parameter(torch.full((iterations,), float(stepsize), device=denoiser.ctx.device))

    def forward(self, y: Sequence[RowBands], x0: RowBands | None = None) -> RowBands:
        """The last iterate from the K measurements ``y`` (sharded as the iterates), starting at ``x0`` (default
        ``A^T y``)."""
        ctx = self.denoiser.ctx
        back = self.physics.A_adjoint(list(y))
        x = back if x0 is None else check_bands(x0, "x0", back)
        steps = self.stepsize
        if torch.is_grad_enabled() and steps.requires_grad and ctx.is_distributed:
            steps = ReplicatedInputs.apply(ctx, steps)[0]  # each rank's share of its gradient, summed over ranks
        for k in range(steps.shape[0]):
            x = self.denoiser(x - (self.physics.A_adjoint_A(x) - back) * steps[k], self.sigma)
        return x


def sharded_mse(x: RowBands, target: RowBands) -> torch.Tensor:
    """This rank's share of the mean squared error of the whole signal: the squared error summed over its band,
    divided by the whole signal's values. The shares sum to the loss (``x.ctx.all_reduce(share.detach())`` gives
    it); calling ``backward()`` on each rank's share gives every rank the whole loss's gradients."""
    check_bands(target, "target", x)
    total = x.local.numel() // x.local.shape[2] * x.shape[2]
    return ((x.local - target.local) ** 2).sum() / total
