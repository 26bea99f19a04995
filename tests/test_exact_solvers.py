"""A_dagger and compute_norm are the exact answers of the stacked system, against dense linear algebra."""

from __future__ import annotations

import pytest
import torch
from deepinv.physics import StackedLinearPhysics

from distinv import distribute
from operators import make_operator, operator_list

IMG = (1, 8, 8)
K = 4


def dense_matrix(ops) -> torch.Tensor:
    """The stacked operator as a float64 matrix (rows: all measurements, real and imaginary parts)."""
    n = 1
    for s in IMG:
        n *= s
    basis = torch.eye(n).reshape(n, *IMG)
    columns = []
    for j in range(n):
        parts = []
        for op in ops:
            y = op.A(basis[j : j + 1])
            parts.append(torch.view_as_real(y).flatten() if y.is_complex() else y.flatten())
        columns.append(torch.cat(parts))
    return torch.stack(columns, dim=1).double()


def check_dagger_and_norm(ctx):
    torch.manual_seed(0)
    ops = operator_list("mixed", K, IMG)
    matrix = dense_matrix(ops)
    dphys = distribute(
        lambda i, device, shared: make_operator("mixed", i, IMG),
        ctx,
        num_operators=K,
        type_object="linear_physics",
    )
    x_true = torch.rand(2, *IMG)
    y = StackedLinearPhysics(ops).A(x_true)
    y = type(y)([t + 0.05 * torch.randn_like(t) for t in y])  # not in the range: a real least-squares problem
    flat_y = torch.stack(
        [torch.cat([(torch.view_as_real(t[b]) if t.is_complex() else t[b]).flatten() for t in y]) for b in range(2)]
    ).double()
    exact = torch.linalg.lstsq(matrix, flat_y.T, driver="gelsd").solution.T.reshape(2, *IMG)
    x_dagger = dphys.A_dagger(y, tol=1e-7, max_iter=500)
    sq_exact = torch.linalg.matrix_norm(matrix, ord=2).item() ** 2
    sq = dphys.compute_sqnorm(torch.zeros(1, *IMG), max_iter=1000, tol=1e-8, verbose=False).item()
    norm = dphys.compute_norm(torch.zeros(1, *IMG), max_iter=1000, tol=1e-8, verbose=False, squared=False).item()
    local_bound = dphys.compute_sqnorm(torch.zeros(1, *IMG), local_only=True, verbose=False).item()
    return {
        "dagger_error": (torch.linalg.vector_norm(x_dagger.double() - exact) / torch.linalg.vector_norm(exact)).item(),
        "sqnorm_error": abs(sq - sq_exact) / sq_exact,
        "norm_error": abs(norm - sq_exact**0.5) / sq_exact**0.5,
        "local_bound": local_bound,
        "sq_exact": sq_exact,
        "sq": sq,
    }


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_a_dagger_is_the_least_squares_solution_of_the_whole_stack(ranks, world_size):
    for rank, r in enumerate(ranks(world_size).run(check_dagger_and_norm)):
        assert r["dagger_error"] <= 1e-4, f"rank {rank}: {r}"


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_compute_norm_is_the_global_operator_norm(ranks, world_size):
    results = ranks(world_size).run(check_dagger_and_norm)
    for rank, r in enumerate(results):
        assert r["sqnorm_error"] <= 1e-4, f"rank {rank}: {r}"
        assert r["norm_error"] <= 1e-4, f"rank {rank}: {r}"
        # deepinv's local mode is only a bound: never below the true value.
        assert r["local_bound"] >= r["sq_exact"] * (1 - 1e-3)
    assert len({r["sq"] for r in results}) == 1
