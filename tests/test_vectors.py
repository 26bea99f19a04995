"""The vector interface: every function gives a sharded row band's answer equal to the whole tensor's, so solvers and
metrics written once serve both placements; and a dot test catches a wrong adjoint."""

from __future__ import annotations

import pytest
import torch

from distinv.numerics.linalg import power_iteration
from distinv.numerics.operator import LinearOperator, NormalEquations
from distinv.placements import vectors
from distinv.placements.row_bands import shard_rows
from distinv.testing import dot_test

SHAPE = (2, 3, 11, 7)  # 11 rows: uneven bands at 2-4 ranks


def largest(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def check_every_function_on_bands_equals_the_whole_tensor(ctx):
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    bu, bv = shard_rows(ctx, u), shard_rows(ctx, v)
    draw = vectors.randn_like(bu, torch.Generator().manual_seed(3))
    top, bottom = vectors.rows_beyond(bu, bv, reach=2)
    first, last = bu.rows
    whole_top = torch.cat([u, v], dim=1)[:, :, max(first - 2, 0) : first]
    whole_bottom = torch.cat([u, v], dim=1)[:, :, last : last + 2]
    return {
        "batch_dot": (vectors.batch_dot(bu, bv) - vectors.batch_dot(u, v)).abs().max().item(),
        "dot": abs(float(vectors.dot(bu, bv) - vectors.dot(u, v))),
        "norm": abs(float(vectors.norm(bu) - vectors.norm(u))),
        "mean_square": abs(vectors.mean_square(bu) - vectors.mean_square(u)),
        "axpy": (vectors.axpy(0.5, bu, bv).gather() - vectors.axpy(0.5, u, v)).abs().max().item(),
        "zeros_like": vectors.zeros_like(bu).gather().abs().max().item(),
        "randn_like": (draw.gather() - vectors.randn_like(u, torch.Generator().manual_seed(3))).abs().max().item(),
        "rows_beyond": max(largest(top - whole_top), largest(bottom - whole_bottom)),
        "rows_beyond_shape": float(top.shape != whole_top.shape or bottom.shape != whole_bottom.shape),
        "sum_over_parts": abs(float(vectors.sum_over_parts(bu, bu.local.sum().reshape(1))[0] - u.sum())),
    }


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_each_vector_function_on_row_bands_equals_it_on_the_whole_tensor(ranks, world_size):
    for errors in ranks(world_size).run(check_every_function_on_bands_equals_the_whole_tensor):
        assert max(errors.values()) < 1e-5, errors


def test_a_replicated_vector_has_nothing_beyond_its_rows():
    x = torch.rand(1, 2, 5, 4)
    top, bottom = vectors.rows_beyond(x, x, reach=3)
    assert top.shape == bottom.shape == (1, 4, 0, 4)
    assert vectors.sum_over_parts(x, torch.tensor([2.0])).item() == 2.0


class Diagonal(NormalEquations):
    """``A x = d * x``, with an adjoint that may be wrong on purpose."""

    def __init__(self, d: torch.Tensor, wrong_adjoint: bool = False):
        self.d, self.wrong = d, wrong_adjoint

    def A(self, x):  # noqa: N802
        return self.d * x

    def A_adjoint(self, y):  # noqa: N802
        return (self.d + 0.1 if self.wrong else self.d) * y


def test_normal_equations_give_the_norm_and_the_shifted_solve_from_a_and_its_adjoint():
    d = torch.linspace(0.5, 2.0, 12, dtype=torch.float64).reshape(1, 12)
    op = Diagonal(d)
    assert isinstance(op, LinearOperator)
    assert abs(float(op.compute_sqnorm(torch.zeros(1, 12, dtype=torch.float64), tol=1e-10)) - 4.0) < 1e-6
    rhs = torch.ones(1, 12, dtype=torch.float64)
    x, info = op.solve_normal(rhs, 0.5, max_iter=50, tol=1e-12)
    assert torch.allclose(x, rhs / (d**2 + 0.5)) and info.converged and info.method == "cg"
    value, _ = power_iteration(op.A_adjoint_A, rhs, tol=1e-10)
    assert abs(float(value) - 4.0) < 1e-6


def test_the_dot_test_passes_an_exact_adjoint_and_names_a_wrong_one():
    d = torch.rand(2, 5, dtype=torch.float64) + 0.5
    x, y = torch.rand(2, 5, dtype=torch.float64), torch.rand(2, 5, dtype=torch.float64)
    errors = dot_test(Diagonal(d), x, y, rtol=1e-12)
    assert errors["dot"] < 1e-12 and errors["normal"] < 1e-12
    with pytest.raises(AssertionError, match="Diagonal fails the dot test"):
        dot_test(Diagonal(d, wrong_adjoint=True), x, y, rtol=1e-6)


def check_the_gathered_operator_split_passes_the_dot_test(ctx):
    from deepinv.physics import BlurFFT
    from deepinv.physics.functional.blur import gaussian_blur

    from distinv import distribute
    from distinv.sharded.gathered import GatheredPhysics

    blurs = [BlurFFT(img_size=SHAPE[1:], filter=gaussian_blur(sigma=(1.0 + i, 0.5), angle=30.0 * i)) for i in range(3)]
    stack = distribute(blurs, ctx)
    g = torch.Generator().manual_seed(4)
    x, v = torch.rand(SHAPE, generator=g), torch.rand(SHAPE, generator=g)
    gathered = GatheredPhysics(stack, shard_rows(ctx, x))
    return dot_test(gathered, shard_rows(ctx, x), stack.A(v, gather=False), rtol=1e-5)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_the_operator_split_beside_row_bands_passes_the_dot_test(ranks, world_size):
    for errors in ranks(world_size).run(check_the_gathered_operator_split_passes_the_dot_test):
        assert errors["dot"] < 1e-5 and errors["normal"] < 1e-5, errors
