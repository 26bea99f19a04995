"""Bad input raises a clear error on every rank before any collective, and the group stays usable."""

from __future__ import annotations

import pytest
import torch
from deepinv.optim.data_fidelity import L2
from deepinv.physics import StackedLinearPhysics

from distinv import distribute
from distinv.runtime.balance import assign_by_cost
from operators import make_operator, operator_list, relative_error

IMG = (1, 8, 8)
K = 5


def _error(call) -> tuple[str, str] | None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__, str(exc)
    return None


def check_bad_inputs(ctx):
    torch.manual_seed(0)
    ops = operator_list("blur", K, IMG)
    dphys = distribute(ops, ctx)
    checked = distribute(ops, ctx, check_replicated=True)
    x = torch.rand(1, *IMG)
    y = dphys.A(x)
    factory = lambda i, d, s: make_operator("blur", i, IMG)  # noqa: E731
    errors = {
        "y_wrong_length": _error(lambda: dphys.A_adjoint(list(y)[:2] + list(y)[:2] + list(y)[:2])),
        "y_single_tensor": _error(lambda: dphys.A_adjoint(y[0])),
        "x_not_tensor": _error(lambda: dphys.A_adjoint_A([x])),
        "num_operators_mismatch": _error(lambda: distribute(ops, ctx, num_operators=K + 1)),
        "factory_without_count": _error(lambda: distribute(factory, ctx, type_object="linear_physics")),
        "factory_without_type_or_count": _error(lambda: distribute(factory, ctx)),
        "not_distributable": _error(lambda: distribute(42, ctx)),
        "bad_strategy": _error(lambda: distribute(ops, ctx, gather_strategy="scatter")),
        "bad_reduce_op": _error(lambda: dphys.A_adjoint_A(x, reduce_op="max")),
        "fidelity_on_plain_physics": _error(lambda: distribute(L2(), ctx).grad(x, y, StackedLinearPhysics(ops))),
        "factory_returns_non_physics": _error(
            lambda: distribute(lambda i, d, s: "blur", ctx, num_operators=K, type_object="linear_physics")
        ),
        "x_differs_between_ranks": _error(lambda: checked.A_adjoint_A(x + ctx.rank)),
    }
    # The group still works after all of that.
    ok = relative_error(dphys.A_adjoint_A(x), StackedLinearPhysics(ops).A_adjoint_A(x))
    checked.A_adjoint_A(x)  # the same x everywhere passes the check
    return {"errors": errors, "after": ok}


EXPECTED = {
    "y_wrong_length": ("ValueError", "y has 6 entries"),
    "y_single_tensor": ("TypeError", "one tensor per operator"),
    "x_not_tensor": ("TypeError", "x must be a torch.Tensor"),
    "num_operators_mismatch": ("ValueError", "num_operators=6"),
    "factory_without_count": ("ValueError", "num_operators is required"),
    "factory_without_type_or_count": ("ValueError", "num_operators=K"),
    "not_distributable": ("TypeError", "int"),
    "bad_strategy": ("ValueError", "gather_strategy='scatter'"),
    "bad_reduce_op": ("ValueError", "reduce_op='max'"),
    "fidelity_on_plain_physics": ("TypeError", "physics must be the distributed physics"),
    "factory_returns_non_physics": ("TypeError", "expected a deepinv LinearPhysics"),
    "x_differs_between_ranks": ("ValueError", "identical on every rank"),
}


@pytest.mark.parametrize("world_size", [2, 3])
def test_bad_input_is_a_clear_error_on_every_rank_and_no_rank_hangs(ranks, world_size):
    for rank, result in enumerate(ranks(world_size).run(check_bad_inputs, timeout=60)):
        for name, (kind, words) in EXPECTED.items():
            got = result["errors"][name]
            assert got is not None, f"rank {rank}: {name} raised nothing"
            assert got[0] == kind and words in got[1], f"rank {rank}: {name} gave {got}"
        assert result["after"] <= 1e-5


def test_round_robin_without_costs():
    assert assign_by_cost(None, 5, 2) == [[0, 2, 4], [1, 3]]
    assert assign_by_cost(None, 2, 3) == [[0], [1], []]


def test_costs_balance_the_most_loaded_rank():
    costs = [5, 4, 3, 3, 3, 2, 1, 1]
    owned = assign_by_cost(costs, len(costs), 3)
    assert sorted(i for o in owned for i in o) == list(range(8))
    assert max(sum(costs[i] for i in o) for o in owned) == 8  # optimum: total 22 over 3 ranks


@pytest.mark.parametrize(
    "costs,match",
    [
        ([1, 2], "operator_costs has 2 entries for 3 operators"),
        ([1, -1, 2], "non-negative"),
        ([1, float("nan"), 2], "non-negative"),
    ],
)
def test_bad_costs_are_rejected(costs, match):
    with pytest.raises(ValueError, match=match):
        assign_by_cost(costs, 3, 2)
