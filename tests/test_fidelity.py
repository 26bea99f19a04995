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


def check_prox(ctx, kind, k):
    """The distributed L2 prox against its optimality condition and deepinv's (CG run to convergence)."""
    torch.manual_seed(0)
    ref_phys = StackedLinearPhysics(operator_list(kind, k, IMG))
    ref_phys.tol, ref_phys.max_iter = 1e-12, 1000
    dphys = distribute(operator_list(kind, k, IMG), ctx)
    fidelity = distribute(L2(sigma=0.5), ctx)
    y = ref_phys.A(torch.rand(2, *IMG))
    z = torch.rand(2, *IMG)
    u = fidelity.prox(z, y, dphys, gamma=0.3)
    # 0 = gamma / sigma^2 * A^T (A u - y) + (u - z)
    residual = 0.3 / 0.25 * dphys.A_adjoint(list(dphys.A(u) - y)) + (u - z)
    theirs = L2(sigma=0.5).prox(z, y, ref_phys, gamma=0.3)
    return (residual.norm() / z.norm()).item(), relative_error(u, theirs)


def check_bad_prox(ctx):
    from deepinv.optim.data_fidelity import ItohFidelity

    dphys = distribute(operator_list("blur", 2, IMG), ctx)
    nonlinear = distribute(operator_list("blur", 2, IMG), ctx, type_object="physics")
    y, z = list(dphys.A(torch.rand(1, *IMG))), torch.rand(1, *IMG)
    messages = []
    for fidelity, physics, gamma in (
        (distribute(L2(), ctx), dphys, 0.0),
        (distribute(L2(), ctx), dphys, torch.tensor([0.1, 0.2])),
        (distribute(L2(), ctx), nonlinear, 0.1),
        (distribute(ItohFidelity(), ctx), dphys, 0.1),
    ):
        try:
            fidelity.prox(z, y, physics, gamma=gamma)
            messages.append("no error")
        except (ValueError, TypeError, NotImplementedError) as exc:
            messages.append(f"{type(exc).__name__}: {exc}")
    return messages


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize(("kind", "k"), [("blur", 3), ("mixed", 4)])
def test_the_l2_prox_is_exact(ranks, world_size, kind, k):
    for residual, error in ranks(world_size).run(check_prox, kind, k):
        assert residual < 1e-5 and error < 1e-4, (residual, error)


def test_a_prox_it_cannot_solve_exactly_is_a_clear_error(ranks):
    for messages in ranks(2).run(check_bad_prox):
        assert messages[0].startswith("ValueError: gamma=0.0")
        assert messages[1].startswith("ValueError: gamma=tensor")
        assert messages[2].startswith("TypeError: prox needs linear physics")
        assert messages[3].startswith("NotImplementedError: prox is exact for deepinv's L2")
