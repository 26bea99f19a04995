"""Training on sharded iterates: an unrolled PGD on row bands (the blurs' halo and the domain denoiser's rows
exchanged with autograd, no image gathered) gives every rank the single process's loss and gradients (the steps'
and the network's) at 1-3 ranks."""

from __future__ import annotations

import pytest
import torch
from deepinv.models import DnCNN
from deepinv.physics import BlurFFT

from distinv.domain.denoiser import DomainParallelDenoiser
from distinv.sharded.blur import ShardedBlur
from distinv.sharded.unrolled import ShardedUnrolledPGD, sharded_mse
from test_sharded_blur import kernels

SHAPE = (1, 3, 48, 32)
ITERATIONS, STEP, SIGMA = 2, 0.5, 0.05


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return DnCNN(3, 3, depth=3, nf=8, pretrained=None)


def data() -> tuple[torch.Tensor, list[torch.Tensor], list[BlurFFT]]:
    g = torch.Generator().manual_seed(4)
    truth = torch.rand(SHAPE, generator=g)
    blurs = [BlurFFT(img_size=SHAPE[1:], filter=k) for k in kernels()]
    return truth, [b.A(truth) + 0.01 * torch.randn(SHAPE, generator=g) for b in blurs], blurs


def single_process() -> tuple[float, dict[str, torch.Tensor]]:
    """The same unrolled PGD on the whole image with deepinv's blurs and the bare network."""
    truth, ys, blurs = data()
    net = network()
    steps = torch.nn.Parameter(torch.full((ITERATIONS,), STEP))
    back = sum(b.A_adjoint(y) for b, y in zip(blurs, ys, strict=True))
    x = back
    for k in range(ITERATIONS):
        x = net(x - (sum(b.A_adjoint(b.A(x)) for b in blurs) - back) * steps[k], SIGMA)
    loss = ((x - truth) ** 2).mean()
    loss.backward()
    return loss.item(), {"stepsize": steps.grad} | {f"net.{n}": p.grad for n, p in net.named_parameters()}


def sharded(ctx) -> tuple[float, dict[str, torch.Tensor], int]:
    truth, ys, blurs = data()
    denoiser = DomainParallelDenoiser(ctx, network())
    model = ShardedUnrolledPGD(ShardedBlur.from_physics(ctx, blurs), denoiser, ITERATIONS, STEP, SIGMA)
    share = sharded_mse(model([denoiser.shard(y) for y in ys]), denoiser.shard(truth))
    share.backward()
    loss = ctx.all_reduce(share.detach().reshape(1))[0].item()
    grads = {n.replace("denoiser.denoiser.", "net."): p.grad for n, p in model.named_parameters()}
    return loss, grads, denoiser.bounds_for(SHAPE)[1]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_an_unrolled_pgd_on_row_bands_trains_with_the_single_process_loss_and_gradients(ranks, world_size):
    loss, expected = single_process()
    for mine, grads, first_band in ranks(world_size).run(sharded):
        assert world_size == 1 or first_band < SHAPE[2]  # really sharded
        assert abs(mine - loss) <= 1e-6 * loss
        assert sorted(grads) == sorted(expected)
        errors = {n: ((g - expected[n]).norm() / expected[n].norm()).item() for n, g in grads.items()}
        assert max(errors.values()) < 1e-5, errors
