"""Cone-beam operators on volumes in slabs of z-slices: each rank's slab and detector-row band give the whole
operator's projections, back-projections, normal operator and FDK at world sizes 1-4 (a circular orbit and a
perturbed, measured-style one), pass the dot test, move only the detector rows where bands overlap, and refuse
slabs too thin for the cone on every rank."""

from __future__ import annotations

import pytest
import torch

from distinv import ConeBeam
from distinv.operators.cone_geometry import circular_vectors
from distinv.placements.row_bands import shard_rows
from distinv.sharded.cone_slabs import ConeSlabs, plan_slabs
from distinv.testing import dot_test

SIZE = 24


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def operators(measured: bool) -> list[ConeBeam]:
    """Three interleaved blocks of 36 views of a turn; ``measured``: each view's source and detector jittered
    and the detector tilted, as a calibrated scan's vectors are."""
    angles = torch.arange(36) * 10.0
    blocks = []
    for k in range(3):
        if not measured:
            blocks.append(ConeBeam(angles[k::3], SIZE, SIZE, source_distance=40.0, detector_distance=40.0))
            continue
        vectors = circular_vectors(angles[k::3], 40.0, 40.0, (48, 56), 2.0)
        g = torch.Generator().manual_seed(k)
        vectors[:, 0:6] += 0.5 * torch.randn(vectors[:, 0:6].shape, generator=g, dtype=torch.float64)
        vectors[:, 9:12] += 0.02 * torch.randn(vectors[:, 9:12].shape, generator=g, dtype=torch.float64)
        blocks.append(ConeBeam.from_vectors(vectors, (SIZE, SIZE, SIZE), (48, 56)))
    return blocks


def check_slabs(ctx, measured: bool):
    ops = operators(measured)
    slabs = ConeSlabs(ctx, ops)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, SIZE, SIZE, SIZE, generator=g)
    bands = shard_rows(ctx, x)
    plan = slabs.plan(bands.bounds)
    whole = [op.A(x) for op in ops]
    ys = [torch.rand(y.shape, generator=g) for y in whole]
    y_bands = [shard_rows(ctx, y, plan.owned) for y in ys]
    before = ctx.bytes_sent + ctx.bytes_received
    forward, adjoint, normal = slabs.A(bands), slabs.A_adjoint(y_bands), slabs.A_adjoint_A(bands)
    moved = ctx.bytes_sent + ctx.bytes_received - before
    fdk = slabs.weighted_sum("A_dagger", forward, [1 / 3] * 3, fbp=True)
    errors = {
        "A": max(relative(f.gather(), y) for f, y in zip(forward, whole, strict=True)),
        "A_adjoint": relative(adjoint.gather(), sum(op.A_adjoint(y) for op, y in zip(ops, ys, strict=True))),
        "A_adjoint_A": relative(normal.gather(), sum(op.A_adjoint(y) for op, y in zip(ops, whole, strict=True))),
        "FDK": relative(fdk.gather(), sum(op.fdk(y) / 3 for op, y in zip(ops, whole, strict=True))),
    }
    errors.update(dot_test(slabs, bands, y_bands, rtol=1e-5))
    # what one exchange moves for this rank: the rows its band holds of others' rows, and the reverse
    row_bytes = ops[0].columns * sum(op.views for op in ops) * 4
    shared = sum(b - a for holder, owner, a, b in plan.overlaps() if ctx.rank in (holder, owner))
    return errors, moved, shared * row_bytes, plan


@pytest.mark.parametrize("measured", [False, True], ids=["circular", "measured"])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_slabs_and_their_detector_rows_give_the_whole_cone_beam_operator(ranks, world_size, measured):
    for errors, moved, overlap_bytes, plan in ranks(world_size).run(check_slabs, measured):
        assert all(value < 1e-5 for value in errors.values()), errors
        assert all(band[0] <= plan.owned[r] < plan.owned[r + 1] <= band[1] for r, band in enumerate(plan.bands))
        # A, A^T and A^T A (two) are four exchanges, each of the overlapping rows alone: no sinogram, no volume
        assert moved == 4 * overlap_bytes and (world_size == 1) == (moved == 0)


def check_thin(ctx):
    slabs = ConeSlabs(ctx, operators(False))
    x = shard_rows(ctx, torch.zeros(1, 1, SIZE, SIZE, SIZE), (0, 1, SIZE))
    slabs.A(x)


def test_slabs_too_thin_for_the_cone_are_refused_on_every_rank_before_any_exchange(ranks):
    from harness import RankFailure

    with pytest.raises(RankFailure) as failure:
        ranks(2).run(check_thin, timeout=60)
    assert str(failure.value).count("fewer than 2 slices") == 2


def test_owned_rows_follow_the_slabs_through_the_axis_and_bands_widen_with_the_cone():
    narrow = operators(False)[0].vectors
    plan = plan_slabs(narrow, (SIZE, SIZE, SIZE), operators(False)[0].rows, (0, 12, SIZE))
    rows = operators(False)[0].rows
    assert plan.owned == (0, rows // 2, rows)  # the middle plane projects to the detector's middle
    wide = [b - a for a, b in plan.bands]
    far = ConeBeam(torch.arange(36) * 10.0, SIZE, SIZE, source_distance=400.0, detector_distance=400.0)
    far_plan = plan_slabs(far.vectors, (SIZE, SIZE, SIZE), far.rows, (0, 12, SIZE))
    assert max(b - a for a, b in far_plan.bands) < min(wide)  # a narrower cone spreads a slab over fewer rows
