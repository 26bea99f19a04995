"""DistributedDataFidelity equals deepinv's StackedPhysicsDataFidelity on the same operators."""

from __future__ import annotations

import pytest
import torch
from deepinv.optim.data_fidelity import L2, StackedPhysicsDataFidelity
from deepinv.physics import StackedLinearPhysics

from distinv import DistributedDataFidelity, distribute
from operators import make_operator, operator_list, relative_error

IMG = (3, 16, 16)


def check_fidelity(ctx, kind, k, how):
    torch.manual_seed(0)
    sigmas = [0.5 + 0.25 * i for i in range(k)]
    ref_phys = StackedLinearPhysics(operator_list(kind, k, IMG))
    ref = StackedPhysicsDataFidelity([L2(sigma=s) for s in sigmas])
    dphys = distribute(operator_list(kind, k, IMG), ctx)
    if how == "single":
        ref = StackedPhysicsDataFidelity([L2() for _ in range(k)])
        dfid = distribute(L2(), ctx)
    elif how == "list":
        dfid = distribute([L2(sigma=s) for s in sigmas], ctx)
    elif how == "stacked":
        dfid = distribute(StackedPhysicsDataFidelity([L2(sigma=s) for s in sigmas]), ctx)
    else:
        dfid = distribute(
            lambda i, device, shared: L2(sigma=shared[i]),
            ctx,
            type_object="data_fidelity",
            num_operators=k,
            shared=sigmas,
        )
    x_true = torch.rand(2, *IMG)
    y = ref_phys.A(x_true)
    x = torch.rand(2, *IMG)
    return {
        "fn": relative_error(dfid.fn(x, y, dphys), ref.fn(x, y, ref_phys)),
        "grad": relative_error(dfid.grad(x, y, dphys), ref.grad(x, y, ref_phys)),
        "is_module": isinstance(dfid, DistributedDataFidelity),
    }


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize(
    "kind,k,how",
    [("blur", 5, "single"), ("mixed", 4, "list"), ("mixed", 5, "factory"), ("blur", 2, "stacked")],
)
def test_fn_and_grad_equal_deepinv_stacked_fidelity(ranks, world_size, kind, k, how):
    for rank, r in enumerate(ranks(world_size).run(check_fidelity, kind, k, how)):
        assert r["fn"] <= 1e-5 and r["grad"] <= 1e-5, f"rank {rank}: {r}"
        assert r["is_module"]


def check_grad_is_one_image_reduction(ctx):
    """Count the collectives grad issues: exactly one all_reduce of one image."""
    import torch.distributed as dist

    dphys = distribute(
        lambda i, d, s: make_operator("blur", i, IMG), ctx, num_operators=6, type_object="linear_physics"
    )
    dfid = distribute(L2(), ctx)
    x = torch.rand(1, *IMG)
    y = dphys.A(x)
    calls = []
    original = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        dfid.grad(x, y, dphys)
    finally:
        dist.all_reduce = original
    return calls


def test_grad_costs_one_image_sized_reduction(ranks):
    for calls in ranks(2).run(check_grad_is_one_image_reduction):
        assert calls == [(1, *IMG)]
