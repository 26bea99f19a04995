"""Sharded iterates: PnP on RowBands (spatially distributed physics, the denoiser's row bands of windows, metrics
from the shards) gives the replicated engine's iterates and PSNR at world sizes 1-4, on highres_blur (circular
blurs band by band) and tomography_3d (slabs of z-slices, parallel and cone beam), and moves no image-sized
collective per iteration."""

from __future__ import annotations

import warnings

import pytest
import torch

from distinv.bench.engines import build_engine
from distinv.bench.problems import build
from distinv.bench.spec import TilingSpec
from distinv.numerics.metrics import psnr, ssim
from distinv.placements.row_bands import shard_rows
from distinv.pnp import pnp
from distinv.sharded.denoiser import ShardedDenoiser, band_bounds_of, halo_rows
from test_results_are_right import SmallNet

BLUR = {"size": (64, 40), "num_operators": 3, "sigma_major": 1.5, "sigma_minor": 0.5, "noise_sigma": 0.02}
TOMO3D = {"size": 32, "num_angles": 12, "num_operators": 3, "noise_sigma": 0.02, "geometry": "parallel"}
CONE = {**TOMO3D, "geometry": "cone", "cone_angle": 30.0}
TOMO2D = {"size": 48, "num_angles": 18, "num_operators": 3, "noise_sigma": 0.02}
# windows of 16 rows (8 for the volume) and a halo of 2 pixels, narrower than the network's reach of 3: the output
# depends on where the windows fall, so equal outputs mean equal windows
TILING = {"patch_size": 16, "overlap": 2}
TILING_3D = {"patch_size": 8, "overlap": 2}


def tiny_net(channels: int) -> torch.nn.Module:
    """Three 3x3 convolutions (a reach of 3 pixels), the same weights on every call."""
    torch.manual_seed(3)
    return SmallNet(channels)


def _model(problem):
    from distinv.denoisers.slicewise import SlicewiseDenoiser3D

    channels = problem.ground_truth.shape[1]
    net = tiny_net(channels)
    return SlicewiseDenoiser3D(net) if problem.ground_truth.ndim == 5 else net


def run_engine(ctx, engine_name, problem_name, params, tiling, algorithm, step, model=_model):
    """PnP of ``engine_name`` on the problem with the network ``model(problem)``; what the tests compare."""
    warnings.simplefilter("ignore")
    problem = build(problem_name, **params)
    engine = build_engine(engine_name, ctx, problem, model(problem), TilingSpec(**tiling))
    with torch.no_grad():
        y = engine.measure(problem)
        x0 = engine.initial(problem, y)
        x, records = pnp(
            algorithm, engine.physics, engine.denoiser, y, x0, sigma=0.05, iterations=3, step=step,
            cg_iterations=200, ground_truth=engine.ground_truth(problem), ctx=ctx,
        )  # fmt: skip
        x = engine.replicated(x)
    return {
        "x": x,
        "local": tuple(x0.local.shape) if hasattr(x0, "local") else tuple(x0.shape),
        "psnr": [r.psnr for r in records],
        "ssim": [r.ssim for r in records],
        "received": [r.bytes_received for r in records],
        "sent": [r.bytes_sent for r in records],
        "solver": records[0].data_solver,
        "denoiser": type(engine.denoiser).__name__,
    }


def _compare(ranks, world_size, problem_name, params, tiling, algorithm, step):
    replicated = ranks(world_size).run(run_engine, "distinv", problem_name, params, tiling, algorithm, step)
    sharded = ranks(world_size).run(run_engine, "distinv-sharded", problem_name, params, tiling, algorithm, step)
    reference = replicated[0]
    for rank, result in enumerate(sharded):
        error = ((result["x"] - reference["x"]).norm() / reference["x"].norm()).item()
        assert error < 1e-5, (rank, error)
        assert max(abs(a - b) for a, b in zip(result["psnr"], reference["psnr"], strict=True)) < 0.01
        assert max(abs(a - b) for a, b in zip(result["ssim"], reference["ssim"], strict=True)) < 1e-4
        assert result["solver"] == reference["solver"]  # the circulant blurs' closed form on both, else CG
    return replicated, sharded


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("algorithm,step", [("pgd", 0.5), ("hqs", 1.0), ("admm", 1.0)])
def test_sharded_pnp_on_highres_blur_gives_the_replicated_iterates(ranks, world_size, algorithm, step):
    replicated, sharded = _compare(ranks, world_size, "highres_blur", BLUR, TILING, algorithm, step)
    assert sharded[0]["solver"] == {"pgd": "gradient"}.get(algorithm, "fft")
    heights = [r["local"][2] for r in sharded]
    assert sum(heights) == BLUR["size"][0] and (world_size == 1 or max(heights) < BLUR["size"][0])
    if world_size > 1 and algorithm == "pgd":  # halos and a few numbers, never the image the replicated engine moves
        assert max(max(r["received"]) for r in sharded) < 0.7 * min(min(r["received"]) for r in replicated)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_sharded_pnp_on_tomography_3d_gives_the_replicated_iterates_without_moving_the_volume(ranks, world_size):
    _, sharded = _compare(ranks, world_size, "tomography_3d", TOMO3D, TILING_3D, "pgd", 0.5)
    halo = (2 + 2) * TOMO3D["size"] ** 2 * 4  # the denoiser's 2 slices above and below; the physics needs none
    assert all(max(r["received"]) <= halo + 256 for r in sharded)  # and a few numbers (norms)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_sharded_pnp_on_cone_beam_slabs_gives_the_replicated_iterates_moving_only_detector_rows(ranks, world_size):
    replicated, sharded = _compare(ranks, world_size, "tomography_3d", CONE, TILING_3D, "pgd", 0.5)
    if world_size > 1:  # overlapping detector rows and the denoiser's halo, well under the volume's all-reduce
        assert max(max(r["received"]) for r in sharded) < 0.5 * min(min(r["received"]) for r in replicated)


@pytest.mark.parametrize("world_size", [2, 3])
def test_operators_that_do_not_decompose_keep_the_split_and_give_the_same_iterates(ranks, world_size):
    _compare(ranks, world_size, "tomography_2d", TOMO2D, TILING, "hqs", 1.0)


def check_sharded_sqnorm(ctx):
    problem = build("highres_blur", **BLUR)
    replicated = problem.distribute(ctx).compute_sqnorm(problem.ground_truth, verbose=False, tol=1e-6)
    sharded = problem.sharded(problem, ctx).compute_sqnorm(shard_rows(ctx, problem.ground_truth), tol=1e-6)
    return float(replicated), float(sharded)


@pytest.mark.parametrize("world_size", [1, 3])
def test_the_sharded_operator_norm_is_the_replicated_one(ranks, world_size):
    for replicated, sharded in ranks(world_size).run(check_sharded_sqnorm):
        assert abs(sharded - replicated) / replicated < 1e-5


def check_metrics(ctx, shape):
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(shape, generator=g)
    estimate = (truth + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1)
    rows, world = shape[2], ctx.world_size
    bounds = [0, *[round(rows * (r / world) ** 1.3) for r in range(1, world)], rows]  # uneven bands
    a, b = shard_rows(ctx, estimate, bounds), shard_rows(ctx, truth, bounds)
    return psnr(a, b), psnr(estimate, truth), ssim(a, b), ssim(estimate, truth)


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("shape", [(2, 3, 40, 30), (1, 1, 16, 20, 20)])
def test_psnr_and_ssim_from_the_shards_equal_the_whole_images(ranks, world_size, shape):
    for sharded_psnr, whole_psnr, sharded_ssim, whole_ssim in ranks(world_size).run(check_metrics, shape):
        assert abs(sharded_psnr - whole_psnr) < 1e-6
        assert abs(sharded_ssim - whole_ssim) < 1e-6


def check_denoiser_partition(ctx):
    denoiser = ShardedDenoiser(ctx, tiny_net(3), patch_size=16, overlap=8)
    layout = denoiser.layout_for((1, 3, 64, 40))
    bounds = band_bounds_of(layout.plan)
    above, below = halo_rows(layout.plan, bounds)
    owned = {w.rank: set() for w in layout.plan.windows}
    for w in layout.plan.windows:
        owned[w.rank].update(range(w.owned_origin[0], w.owned_origin[0] + w.owned_size[0]))
    return bounds, above, below, {r: (min(rows), max(rows) + 1) for r, rows in owned.items()}


@pytest.mark.parametrize("world_size", [2, 4])
def test_each_rank_owns_a_contiguous_band_of_window_rows_and_reads_only_its_neighbours(ranks, world_size):
    bounds, above, below, owned = ranks(world_size).run(check_denoiser_partition)[0]
    assert owned == {r: (bounds[r], bounds[r + 1]) for r in range(world_size)}
    assert above[0] == 0 and below[-1] == 0 and max(above + below) == 8  # the overlap, at the image's border none


def check_misplaced_bands(ctx):
    denoiser = ShardedDenoiser(ctx, tiny_net(1), **TILING)
    x = torch.rand(1, 1, 64, 32)
    errors = []
    for value in (x, shard_rows(ctx, x, [0, *[16 * (r + 1) for r in range(ctx.world_size - 1)], 64])):
        try:
            denoiser(value, 0.1)
        except (TypeError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    large = ShardedDenoiser(ctx, tiny_net(1), patch_size=64, overlap=2)
    try:
        large(shard_rows(ctx, torch.rand(1, 1, 1, 32)), 0.1)  # one row for two ranks: refused when cut
    except ValueError as exc:
        errors.append(f"ValueError: {exc}")
    return errors, large.layout_for(x.shape).plan.grid


def test_bands_the_denoiser_did_not_cut_are_a_clear_error_on_every_rank(ranks):
    for errors, grid in ranks(2).run(check_misplaced_bands):
        assert errors[0].startswith("TypeError: x must be RowBands (cut by denoiser.shard(x))")
        assert "are not this denoiser's" in errors[1]
        assert "give ranks [1] no rows of 1: every rank needs a band of at least one row" in errors[2]
        assert grid == (2, 1)  # a patch as tall as the image is lowered to give each rank a row of windows


def check_subsampled_gather(ctx):
    x = torch.rand(1, 2, 37, 29, generator=torch.Generator().manual_seed(2))
    bounds = [0, 5, 20, 37][: ctx.world_size] + [37]
    bands = shard_rows(ctx, x, bounds)
    return bands.gather(3), x[:, :, ::3, ::3], bands.gather(), x


@pytest.mark.parametrize("world_size", [1, 3])
def test_a_gather_every_few_rows_and_columns_is_the_whole_image_subsampled(ranks, world_size):
    for every_third, expected, whole, image in ranks(world_size).run(check_subsampled_gather):
        assert torch.equal(every_third, expected) and torch.equal(whole, image)
