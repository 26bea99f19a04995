"""Replicated parameters stay identical on every rank whatever each backward pass reaches and whatever order their
gradient hooks fire in: the average is taken once per backward pass, at its end, and nothing carries over."""

from __future__ import annotations

import pytest
import torch

from distinv import distribute


def check_partial_then_full_backward_in_rank_dependent_order(ctx):
    a, b = torch.nn.Parameter(torch.ones(())), torch.nn.Parameter(torch.ones(()))
    a, b = distribute([a, b], ctx)
    scale = ctx.rank + 1.0
    (scale * a).backward()  # reaches a only
    after_partial = (a.grad.item(), b.grad)
    a.grad = b.grad = None  # zero_grad(set_to_none=True)
    # the full pass: b's term built last (so its hook fires first) on odd ranks, a's on even ones
    loss = scale * a + scale * b if ctx.rank % 2 else scale * b + scale * a
    loss.backward()
    full = (a.grad.item(), b.grad.item())
    optimiser = torch.optim.SGD([a, b], lr=0.1)
    optimiser.step()
    return after_partial, full, (a.item(), b.item())


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_partial_then_a_full_backward_give_every_rank_the_mean_gradient(ranks, world_size):
    mean = sum(r + 1.0 for r in range(world_size)) / world_size
    results = ranks(world_size).run(check_partial_then_full_backward_in_rank_dependent_order)
    for after_partial, full, _ in results:
        assert after_partial == (mean, None)  # b, reached by no rank's first pass, keeps no gradient
        assert full == (mean, mean)
    assert len({values for _, _, values in results}) == 1, "the parameters differ by rank after one step"


def check_two_backward_passes_before_a_step(ctx):
    (w,) = distribute([torch.nn.Parameter(torch.zeros(2))], ctx)
    for _ in range(2):  # gradients accumulate over two passes, each averaged at its end
        (w * (ctx.rank + 1.0)).sum().backward()
    return w.grad.tolist()


def test_each_backward_pass_is_averaged_once(ranks):
    mean = (1.0 + 2.0) / 2
    for grad in ranks(2).run(check_two_backward_passes_before_a_step):
        # pass 1 leaves the mean; pass 2 adds each rank's own gradient to it, whose average is the mean again
        assert grad == [pytest.approx(2 * mean)] * 2
