"""Parallel-beam projections of a volume about z, slab by slab: each rank's slabs of z-slices give the same
projections, back-projections and normal operator as the whole volume's operator at world sizes 1-4, pass the dot
test, and move nothing."""

from __future__ import annotations

import pytest
import torch

from distinv.bench.problems import build
from distinv.placements.row_bands import band_bounds, shard_rows
from distinv.testing import dot_test

PARAMS = {"size": 24, "num_angles": 9, "num_operators": 3, "geometry": "parallel"}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def check_slabs(ctx):
    problem = build("tomography_3d", **PARAMS)
    operators = [problem.factory(i, ctx.device, problem.shared) for i in range(problem.num_operators)]
    slabs = problem.sharded(problem, ctx)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(problem.ground_truth.shape, generator=g)
    ys = [torch.rand(op.A(x).shape, generator=g) for op in operators]
    bands = shard_rows(ctx, x)
    y_bands = [shard_rows(ctx, y) for y in ys]
    before = ctx.bytes_sent + ctx.bytes_received
    forward, adjoint, normal = slabs.A(bands), slabs.A_adjoint(y_bands), slabs.A_adjoint_A(bands)
    moved = ctx.bytes_sent + ctx.bytes_received - before
    errors = {
        "A": max(relative(f.gather(), op.A(x)) for f, op in zip(forward, operators, strict=True)),
        "A_adjoint": relative(adjoint.gather(), sum(op.A_adjoint(y) for op, y in zip(operators, ys, strict=True))),
        "A_adjoint_A": relative(normal.gather(), sum(op.A_adjoint(op.A(x)) for op in operators)),
    }
    errors.update(dot_test(slabs, bands, y_bands, rtol=1e-5))
    return errors, moved, bands.local.shape[2]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_slabs_of_z_slices_project_as_the_whole_volume_without_communication(ranks, world_size):
    bounds = band_bounds(PARAMS["size"], world_size)
    for rank, (errors, moved, slices) in enumerate(ranks(world_size).run(check_slabs)):
        assert max(errors.values()) < 1e-5, errors
        assert moved == 0  # the gathers for checking come after
        assert slices == bounds[rank + 1] - bounds[rank]
