"""Blurs applied band by band (each rank its rows plus a periodic halo from its neighbours) equal deepinv's global
``BlurFFT`` for ``A``, ``A^T`` and ``A^T A`` at world sizes 1-4, pass the dot test, and move only the halo rows."""

from __future__ import annotations

import pytest
import torch
from deepinv.physics import BlurFFT
from deepinv.physics.functional.blur import gaussian_blur

from distinv.placements.row_bands import band_bounds, shard_rows
from distinv.sharded.blur import ShardedBlur
from distinv.testing import dot_test

SHAPE = (2, 3, 64, 36)  # bands of 16 rows at 4 ranks: enough for A^T A of a 15x15 kernel (14 rows)


def kernels() -> list[torch.Tensor]:
    """An anisotropic Gaussian, an asymmetric random odd kernel and an even-sized one."""
    g = torch.Generator().manual_seed(5)
    odd, even = torch.rand(1, 1, 5, 7, generator=g), torch.rand(1, 1, 4, 6, generator=g)
    return [gaussian_blur(sigma=(2.0, 0.6), angle=30.0), odd / odd.sum(), even / even.sum()]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def check_equals_blurfft(ctx):
    blurs = [BlurFFT(img_size=SHAPE[1:], filter=k) for k in kernels()]
    sharded = ShardedBlur.from_physics(ctx, blurs)
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    ys = [torch.rand(SHAPE, generator=torch.Generator().manual_seed(2 + i)) for i in range(len(blurs))]
    bands = shard_rows(ctx, x)
    y_bands = [shard_rows(ctx, y) for y in ys]
    forward = sharded.A(bands)
    errors = {
        "A": max(relative(f.gather(), b.A(x)) for f, b in zip(forward, blurs, strict=True)),
        "A_adjoint": relative(
            sharded.A_adjoint(y_bands).gather(), sum(b.A_adjoint(y) for b, y in zip(blurs, ys, strict=True))
        ),
        "A_adjoint_A": relative(sharded.A_adjoint_A(bands).gather(), sum(b.A_adjoint(b.A(x)) for b in blurs)),
    }
    errors.update(dot_test(sharded, bands, y_bands, rtol=1e-5))
    return errors, tuple(bands.local.shape)


def check_halo_bytes(ctx):
    sharded = ShardedBlur(ctx, [torch.ones(5, 3) / 15])  # reach: 2 rows above and below
    bands = shard_rows(ctx, torch.rand(1, 3, 16, 10))
    before = ctx.bytes_sent, ctx.bytes_received
    sharded.A(bands)
    return ctx.bytes_sent - before[0], ctx.bytes_received - before[1]


def check_too_thin_bands(ctx):
    sharded = ShardedBlur(ctx, [torch.ones(9, 9) / 81])
    try:
        sharded.A(shard_rows(ctx, torch.rand(1, 1, 12, 12)))
    except ValueError as exc:
        return str(exc)
    return "no error"


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_band_by_band_blurs_equal_the_global_blurfft_and_pass_the_dot_test(ranks, world_size):
    per_rank = ranks(world_size).run(check_equals_blurfft)
    bounds = band_bounds(SHAPE[2], world_size)
    for rank, (errors, local) in enumerate(per_rank):
        assert max(errors.values()) < 1e-5, errors
        assert local[2] == bounds[rank + 1] - bounds[rank]  # each rank holds its band only


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_blur_moves_only_the_halo_rows(ranks, world_size):
    halo = (2 + 2) * 1 * 3 * 10 * 4  # 2 rows above and 2 below, 3 channels, 10 columns, float32
    assert ranks(world_size).run(check_halo_bytes) == [(halo, halo)] * world_size


def test_bands_thinner_than_the_kernels_reach_are_a_clear_error_on_every_rank(ranks):
    for message in ranks(4).run(check_too_thin_bands):
        assert "bands of [3, 3, 3, 3] rows (ranks [0, 1, 2, 3]) cannot supply halos of 4 / 4 rows" in message


def check_exact_solve(ctx, shape, shift):
    blurs = [BlurFFT(img_size=shape[1:], filter=k.double()) for k in kernels()]
    sharded = ShardedBlur.from_physics(ctx, blurs)
    rhs = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    bands = shard_rows(ctx, rhs)
    shifts = torch.tensor(shift, dtype=torch.float64) if isinstance(shift, list) else shift
    before = ctx.bytes_sent
    x, info = sharded.solve_normal(bands, shifts)
    sent = ctx.bytes_sent - before
    scale = shifts.reshape(-1, 1, 1, 1) if isinstance(shifts, torch.Tensor) else shifts
    whole = x.gather()
    residual = relative(sum(b.A_adjoint(b.A(whole)) for b in blurs) + scale * whole, rhs)
    return residual, info.method, sent, bands.local.numel() * 8


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("shape,shift", [((2, 3, 64, 36), 0.05), ((2, 3, 48, 35), [0.01, 1.0])])
def test_the_shifted_normal_equations_are_solved_exactly_moving_each_band_once_each_way(
    ranks, world_size, shape, shift
):
    """HQS's data step as the replicated closed form: the residual of (A^T A + shift I) x = b at float64 rounding,
    one shift or one per sample; each rank sends its band's half-spectrum (complex128: 16 bytes per value of W/2+1
    columns, about 8 bytes per pixel) to the others twice, never an image."""
    for residual, method, sent, band_bytes in ranks(world_size).run(check_exact_solve, shape, shift):
        assert method == "fft" and residual < 1e-10, residual
        assert sent <= 2 * band_bytes * (shape[-1] // 2 + 1) / shape[-1] * 2 + 64
        if world_size == 1:
            assert sent == 0
