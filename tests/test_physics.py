"""Distributed physics equals deepinv's single-process StackedLinearPhysics, on real gloo groups of 1-3 ranks."""

from __future__ import annotations

import pytest
import torch
from deepinv.physics import StackedLinearPhysics

from distinv import distribute
from distinv.testing import dot_test
from operators import checksum, make_operator, operator_list, relative_error

TOL = 1e-5
IMG = (3, 16, 16)
WORLD_SIZES = [1, 2, 3]


# ---------------------------------------------------------------- checks (run on every rank)
def build(ctx, kind, k, source, strategy="concatenated", noise=0.0, img=IMG, **kwargs):
    """The same stack, distributed from a StackedPhysics, a list, or a factory; and deepinv's reference."""
    reference = StackedLinearPhysics(operator_list(kind, k, img, noise))
    if source == "stacked":
        obj = StackedLinearPhysics(operator_list(kind, k, img, noise))
    elif source == "list":
        obj = operator_list(kind, k, img, noise)
    else:
        obj = lambda i, device, shared: make_operator(shared["kind"], i, shared["img"], noise).to(device)  # noqa: E731
        kwargs.update(num_operators=k, type_object="linear_physics", shared={"kind": kind, "img": img})
    return distribute(obj, ctx, gather_strategy=strategy, **kwargs), reference


def check_operations_match_deepinv(ctx, kind, k, source, strategy):
    torch.manual_seed(0)
    dphys, ref = build(ctx, kind, k, source, strategy)
    x = torch.rand(2, *IMG)
    y_ref = ref.A(x)
    v = torch.rand(2, *IMG)
    y = dphys.A(x)
    errors = {
        "A": relative_error(y, y_ref),
        "forward_noiseless": relative_error(dphys(x), y_ref),
        "A_adjoint": relative_error(dphys.A_adjoint(y_ref), ref.A_adjoint(y_ref)),
        "A_adjoint_A": relative_error(dphys.A_adjoint_A(v), ref.A_adjoint_A(v)),
        "A_A_adjoint": relative_error(dphys.A_A_adjoint(y_ref), ref.A_A_adjoint(y_ref)),
        "A_vjp": relative_error(dphys.A_vjp(x, y_ref), ref.A_vjp(x, y_ref)),
        "A_local": relative_error(dphys.A(x, gather=False), [y_ref[i] for i in dphys.local_indexes])
        if dphys.local_indexes
        else 0.0,
        "A_adjoint_of_local_y": relative_error(dphys.A_adjoint(dphys.A(x, gather=False)), ref.A_adjoint(y_ref)),
    }
    # <A x, y> = <x, A^T y> for the distributed operator itself.
    errors["dot_test"] = dot_test(dphys, v, y_ref, rtol=1e-5, normal=False)["dot"]
    return {"errors": errors, "checksum": checksum(y) + checksum(dphys.A_adjoint_A(v))}


def check_partial_results(ctx, k):
    """gather=False returns this rank's part, reduce_op=None the individual terms; their sums are the whole."""
    torch.manual_seed(0)
    dphys, ref = build(ctx, "blur", k, "list")
    x = torch.rand(1, *IMG)
    y = ref.A(x)
    partial = dphys.A_adjoint_A(x, gather=False)
    terms = dphys.A_adjoint(y, gather=False, reduce_op=None)
    all_terms = dphys.A_adjoint(y, reduce_op=None)
    expected_terms = [ref.physics_list[i].A_adjoint(y[i]) for i in range(k)]
    expected_partial = sum((ref.physics_list[i].A_adjoint_A(x) for i in dphys.local_indexes), torch.zeros_like(x))
    return {
        "partial": relative_error(partial, expected_partial),
        "local_terms": relative_error(terms, [expected_terms[i] for i in dphys.local_indexes]) if terms else 0.0,
        "all_terms": relative_error(all_terms, expected_terms),
        "n_local": len(dphys.local_indexes),
        "mean": relative_error(dphys.A_adjoint_A(x, reduce_op="mean"), ref.A_adjoint_A(x) / k),
    }


def check_forward_noise(ctx, k):
    """Noisy forward: per-operator independent noise, identical on every rank and at every world size."""
    torch.manual_seed(0)
    dphys, ref = build(ctx, "blur", k, "list", noise=0.1)
    x = torch.rand(1, *IMG)
    y = dphys(x)
    clean = ref.A(x)
    residuals = [(y[i] - clean[i]) for i in range(k)]
    stds = [r.std().item() for r in residuals]
    corr = torch.corrcoef(torch.stack([r.flatten() for r in residuals]))
    off_diag = (corr - torch.eye(k)).abs().max().item()
    return {"stds": stds, "max_correlation": off_diag, "y": [t.clone() for t in y]}


def check_factory_builds_only_owned(ctx, k):
    built = []

    def factory(i, device, shared):
        built.append(i)
        return make_operator("blur", i, IMG).to(device)

    dphys = distribute(factory, ctx, num_operators=k, type_object="linear_physics")
    return {"built": built, "owned": dphys.local_indexes, "assignment": dphys.assignment}


def check_balanced_assignment(ctx, costs):
    dphys = distribute(
        lambda i, d, s: make_operator("blur", i, IMG),
        ctx,
        num_operators=len(costs),
        type_object="linear_physics",
        operator_costs=costs,
    )
    x = torch.rand(1, *IMG)
    ref = StackedLinearPhysics(operator_list("blur", len(costs), IMG))
    return {
        "owned": dphys.local_indexes,
        "A_adjoint_A": relative_error(dphys.A_adjoint_A(x), ref.A_adjoint_A(x)),
    }


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize(
    "kind,k,source,strategy",
    [
        ("blur", 5, "stacked", "concatenated"),
        ("blur", 4, "factory", "broadcast"),
        ("mixed", 6, "list", "concatenated"),
        ("mixed", 5, "factory", "broadcast"),
        ("mixed", 4, "stacked", "naive"),
        ("mixed", 2, "factory", "concatenated"),  # at 3 ranks, one rank owns no operator
    ],
)
def test_every_operation_equals_deepinv_stacked_physics(ranks, world_size, kind, k, source, strategy):
    results = ranks(world_size).run(check_operations_match_deepinv, kind, k, source, strategy)
    for rank, result in enumerate(results):
        for name, err in result["errors"].items():
            assert err <= TOL, f"rank {rank}: {name} relative error {err:.2e}"
    assert len({r["checksum"] for r in results}) == 1, "ranks disagree on a replicated result"


@pytest.mark.parametrize("world_size", [2, 3])
def test_gather_false_and_reduce_none_return_this_ranks_part(ranks, world_size):
    results = ranks(world_size).run(check_partial_results, 4)
    for rank, r in enumerate(results):
        for name in ("partial", "local_terms", "all_terms", "mean"):
            assert r[name] <= TOL, f"rank {rank}: {name} error {r[name]:.2e}"
    assert sum(r["n_local"] for r in results) == 4


def test_forward_noise_is_independent_per_operator_and_world_size_invariant(ranks):
    ys = []
    for world_size in WORLD_SIZES:
        results = ranks(world_size).run(check_forward_noise, 4)
        for r in results:
            assert all(abs(s - 0.1) < 0.02 for s in r["stds"]), r["stds"]
            assert r["max_correlation"] < 0.2
            assert all(torch.equal(a, b) for a, b in zip(r["y"], results[0]["y"], strict=True))
        ys.append(results[0]["y"])
    for other in ys[1:]:
        assert all(torch.equal(a, b) for a, b in zip(other, ys[0], strict=True))


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_factory_builds_only_the_operators_its_rank_owns(ranks, world_size):
    results = ranks(world_size).run(check_factory_builds_only_owned, 5)
    owned = [r["owned"] for r in results]
    for r in results:
        assert r["built"] == r["owned"]
    assert sorted(i for o in owned for i in o) == list(range(5))


def test_operators_with_costs_are_balanced_over_ranks(ranks):
    costs = [8.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    results = ranks(2).run(check_balanced_assignment, costs)
    loads = [sum(costs[i] for i in r["owned"]) for r in results]
    assert sorted(loads) == [8.0, 8.0]  # round-robin would give 12 and 4
    assert all(r["A_adjoint_A"] <= TOL for r in results)


def test_single_process_without_group_matches_deepinv():
    from distinv import DistributedContext

    with DistributedContext(device_mode="cpu") as ctx:
        assert not ctx.is_distributed
        result = check_operations_match_deepinv(ctx, "mixed", 4, "list", "concatenated")
    assert max(result["errors"].values()) <= TOL
