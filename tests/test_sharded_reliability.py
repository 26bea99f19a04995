"""The sharded engine and the solvers under bad data and bad input: non-finite values propagate and are reported,
never vanish; every sharded entry point checks placement and partition from what every rank holds alike, so a
bad call is the same clear error on every rank, before any exchange; numbers that cannot work are refused."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from deepinv.physics import BlurFFT
from deepinv.physics.functional.blur import gaussian_blur

from distinv import distribute
from distinv.numerics.linalg import solve_cg
from distinv.operators.parallel_beam import ParallelBeam
from distinv.placements.row_bands import shard_rows
from distinv.pnp import pnp
from distinv.sharded.blur import ShardedBlur
from distinv.sharded.gathered import GatheredPhysics
from distinv.sharded.slabs import SlabStack

SHAPE = (1, 1, 48, 16)


def _error(call) -> tuple[str, str] | None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__, str(exc)
    return None


def _kernels() -> list[torch.Tensor]:
    return [gaussian_blur(sigma=(1.0, 0.5), angle=45.0 * i) for i in range(2)]


# ---------------------------------------------------------------- non-finite values
def test_cg_on_a_nan_right_hand_side_returns_nan_and_says_so():
    b = torch.ones(2, 5)
    b[1, 2] = float("nan")
    x, info = solve_cg(lambda v: 2 * v, b, max_iter=10)
    assert torch.allclose(x[0], torch.full((5,), 0.5)) and bool(x[1].isnan().all())
    assert not info.finite and not info.converged and math.isnan(info.relative_residual)


def test_cg_whose_operator_turns_infinite_stops_and_propagates():
    x, info = solve_cg(lambda v: v * float("inf"), torch.ones(1, 4), max_iter=10)
    assert bool(x.isnan().all()) and not info.finite and info.iterations == 1


def check_sharded_hqs_with_a_nan_measurement(ctx):
    torch.manual_seed(0)
    truth = torch.rand(SHAPE)
    sharded = ShardedBlur(ctx, _kernels())
    bands = shard_rows(ctx, truth)
    y = sharded.A(bands)
    if ctx.rank == 0:
        y[0].local[0, 0, 0, 0] = float("nan")  # one value of one measurement, on the rank that holds it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, records = pnp("hqs", sharded, lambda z, s: z, y, bands, 0.05, iterations=2, step=1.0, cg_iterations=3)
    warned = any("NaN or an infinity" in str(w.message) for w in caught)
    return bool(x.local.isnan().all()), math.isnan(records[0].data_residual), warned


@pytest.mark.parametrize("world_size", [1, 2])
def test_sharded_hqs_with_a_nan_measurement_returns_nan_and_warns(ranks, world_size):
    results = ranks(world_size).run(check_sharded_hqs_with_a_nan_measurement)
    assert all(nan and recorded for nan, recorded, _ in results)
    assert results[0][2], "rank 0 did not warn"


# ---------------------------------------------------------------- sharded entry points
def check_bad_sharded_calls(ctx):
    torch.manual_seed(0)
    x = torch.rand(SHAPE)
    sharded = ShardedBlur(ctx, _kernels())
    bands = shard_rows(ctx, x)
    y = sharded.A(bands)
    other = shard_rows(ctx, x, [0, 8, 24, 48])  # three ranks: bands of 8, 16 and 24 rows, not the balanced 16
    stack = distribute([BlurFFT(img_size=SHAPE[1:], filter=k) for k in _kernels()], ctx)
    gathered = GatheredPhysics(stack, bands)
    return {
        "zero_row_band": _error(lambda: shard_rows(ctx, torch.rand(1, 1, ctx.world_size - 1, 4))),
        "replicated_into_sharded_blur": _error(lambda: sharded.A(x)),
        "replicated_into_slabs": _error(lambda: SlabStack(ctx, [ParallelBeam([0.0, 90.0], 16)]).A(x)),
        "two_partitions": _error(lambda: sharded.A_adjoint([y[0], other])),
        "replicated_x0_with_sharded_physics": _error(lambda: pnp("pgd", sharded, lambda z, s: z, y, x, 0.05, 1)),
        "gather_step_0": _error(lambda: bands.gather(step=0)),
        "gathered_norm_with_verbose": _error(lambda: gathered.compute_sqnorm(bands, verbose=True, max_iter=3)),
    }


def test_bad_sharded_calls_are_the_same_clear_error_on_every_rank(ranks):
    per_rank = ranks(3).run(check_bad_sharded_calls)
    assert all(errors == per_rank[0] for errors in per_rank), "ranks disagree"
    errors = per_rank[0]
    assert errors["zero_row_band"][0] == "ValueError" and "no rows" in errors["zero_row_band"][1]
    for name in ("replicated_into_sharded_blur", "replicated_into_slabs", "replicated_x0_with_sharded_physics"):
        assert errors[name][0] == "TypeError" and "shard" in errors[name][1], (name, errors[name])
    assert errors["two_partitions"][0] == "ValueError" and "partition" in errors["two_partitions"][1]
    assert errors["gather_step_0"][0] == "ValueError" and "step=0" in errors["gather_step_0"][1]
    assert errors["gathered_norm_with_verbose"] is None  # the operator split's norm takes deepinv's keywords


# ---------------------------------------------------------------- numbers that cannot work
@pytest.mark.parametrize(
    "bad, match",
    [
        ({"cg_iterations": 0}, "cg_iterations=0"),
        ({"tol": -1.0}, "tol=-1.0"),
        ({"step": float("inf")}, "step=inf"),
        ({"sigma": float("nan")}, "sigma=nan"),
    ],
)
def test_pnp_refuses_numbers_that_cannot_work(bad, match):
    blur = BlurFFT(img_size=(1, 8, 8), filter=_kernels()[0])
    x = torch.rand(1, 1, 8, 8)
    args = {"sigma": 0.05, "step": 1.0, **bad}
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        pnp("hqs", blur, lambda z, s: z, blur.A(x), x, args.pop("sigma"), iterations=2, **args)


@pytest.mark.parametrize(
    "kwargs, match", [({"img_width": 8.7}, "whole number"), ({"img_width": 8, "scale": 0.0}, "scale=0.0")]
)
def test_the_projector_refuses_a_fractional_width_and_a_zero_scale(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParallelBeam([0.0, 45.0], **kwargs)


def test_the_projector_maps_an_empty_batch_to_an_empty_batch():
    op = ParallelBeam([0.0, 45.0, 90.0], 8)
    assert op.A(torch.zeros(0, 1, 8, 8)).shape == (0, 1, op.detectors, 3)
    assert op.A_adjoint(torch.zeros(0, 2, op.detectors, 3)).shape == (0, 2, 8, 8)
