"""Conjugate gradient and power iteration on their own, against dense linear algebra."""

from __future__ import annotations

import torch

from distinv.numerics.linalg import power_iteration, solve_cg


def spd_matrix(n: int, condition: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(condition)).item(), n, dtype=torch.float64)) @ q.T


def test_cg_solves_each_sample_of_the_batch_and_says_it_converged():
    m = spd_matrix(12, 50.0)
    b = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x, info = solve_cg(lambda v: v @ m, b, max_iter=100, tol=1e-10)
    assert torch.allclose(x, torch.linalg.solve(m, b.T).T, atol=1e-8)
    assert info.method == "cg" and info.converged and info.relative_residual <= 1e-10
    assert info.iterations <= 12 + 2  # CG is exact after n steps in exact arithmetic


def test_cg_that_runs_out_of_iterations_reports_where_it_stopped():
    m = spd_matrix(40, 1e4)
    b = torch.ones(1, 40, dtype=torch.float64)
    x, info = solve_cg(lambda v: v @ m, b, max_iter=3, tol=1e-12)
    true_residual = torch.linalg.vector_norm(b - x @ m) / torch.linalg.vector_norm(b)
    assert (info.iterations, info.converged) == (3, False)
    assert abs(info.relative_residual - true_residual.item()) < 1e-8


def test_cg_on_a_zero_right_hand_side_returns_zero_at_once():
    x, info = solve_cg(lambda v: 2 * v, torch.zeros(2, 5), max_iter=10)
    assert torch.equal(x, torch.zeros(2, 5)) and info.iterations == 0 and info.converged


def test_power_iteration_finds_the_largest_eigenvalue_from_a_fixed_start():
    m = spd_matrix(20, 30.0, seed=2)
    value, iterations = power_iteration(
        lambda v: (v.reshape(1, 20) @ m).reshape(v.shape), torch.zeros(1, 20).double(), 500, 1e-10
    )
    again, _ = power_iteration(
        lambda v: (v.reshape(1, 20) @ m).reshape(v.shape), torch.zeros(1, 20).double(), 500, 1e-10
    )
    assert abs(value.item() - torch.linalg.eigvalsh(m).max().item()) < 1e-6 * 30
    assert iterations < 500 and value.item() == again.item()
