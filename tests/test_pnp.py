"""Plug-and-play solvers: the same iterates at every world size, better than their start, measured per
iteration; the 3D slice-wise denoiser works through the tiled distributed denoiser."""

from __future__ import annotations

import warnings

import pytest
import torch
from deepinv.models import DRUNet, TVDenoiser

from distinv import distribute
from distinv.bench.problems import build
from distinv.denoisers.slicewise import SlicewiseDenoiser3D
from distinv.pnp import coupled_steps, pnp, sigma_schedule

TOMO = {"size": 48, "num_angles": 30, "num_operators": 3, "noise_sigma": 0.02}


def _tiny_drunet() -> torch.nn.Module:
    torch.manual_seed(0)
    return DRUNet(in_channels=1, out_channels=1, nc=(8, 8, 8, 8), nb=1, pretrained=None).eval()


def check_iterates(ctx, algorithm):
    warnings.simplefilter("ignore")
    problem = build("tomography_2d", **TOMO)
    physics = problem.distribute(ctx)
    y = problem.measure(physics)
    x0 = problem.initial(physics, y)
    denoiser = distribute(_tiny_drunet(), ctx, patch_size=24, overlap=24)
    with torch.no_grad():
        x, records = pnp(
            algorithm, physics, denoiser, y, x0, sigma=0.05, iterations=3, ground_truth=problem.ground_truth
        )
    return {"x": x, "comm": sum(r.comm_s for r in records), "psnr": [r.psnr for r in records]}


@pytest.mark.parametrize("algorithm", ["pgd", "hqs", "admm"])
def test_iterates_are_the_same_at_world_sizes_1_and_2(ranks, algorithm):
    one = ranks(1).run(check_iterates, algorithm)[0]
    two = ranks(2).run(check_iterates, algorithm)
    for r in two:
        error = (r["x"] - one["x"]).norm() / one["x"].norm()
        assert error < 1e-5, error  # the tiled denoiser's tolerance, summation order of the reductions
    assert all(r["comm"] > 0 for r in two)


# PGD's step is bounded by 2 / ||A||^2, so on this ill-conditioned Radon it moves slowly; HQS and ADMM take a
# large step (a weak coupling penalty), enforcing the data through conjugate gradient.
@pytest.mark.parametrize(
    "algorithm,step,sigma,gain", [("pgd", None, 0.001, 0.5), ("hqs", 20.0, 0.01, 3.0), ("admm", 20.0, 0.03, 3.0)]
)
def test_pnp_with_tv_improves_on_its_start(algorithm, step, sigma, gain):
    from distinv import DistributedContext

    warnings.simplefilter("ignore")
    problem = build("tomography_2d", **TOMO)
    with DistributedContext(env={}) as ctx:
        physics = problem.distribute(ctx)
        y = problem.measure(physics)
        x0 = problem.initial(physics, y)
        tv = TVDenoiser(n_it_max=100)
        _, records = pnp(
            algorithm, physics, tv, y, x0, sigma, iterations=20, step=step, ground_truth=problem.ground_truth
        )
    assert records[-1].psnr > problem.psnr(x0) + gain
    assert all(r.data_s > 0 and r.denoiser_s > 0 and r.total_s >= r.data_s + r.denoiser_s for r in records)
    assert 0 < records[-1].ssim <= 1


def test_tolerance_stops_early_and_schedule_decreases():
    levels = sigma_schedule(0.2, 0.01, 5)
    assert levels[0] == pytest.approx(0.2) and levels[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(levels, levels[1:], strict=False))
    from distinv import DistributedContext

    problem = build("tomography_2d", **TOMO)
    with DistributedContext(env={}) as ctx:
        physics = problem.distribute(ctx)
        y = problem.measure(physics)
        identity = lambda x, sigma: x
        _, records = pnp("pgd", physics, identity, y, problem.initial(physics, y), 0.1, iterations=500, tol=1e-2)
    assert len(records) < 500


def test_coupled_steps_follow_dpir_and_a_constant_list_equals_the_scalar_step():
    sigmas = sigma_schedule(0.2, 0.01, 4)
    steps = coupled_steps(sigmas, noise_sigma=0.01, coupling=0.25)
    assert steps == pytest.approx([s**2 / (0.25 * 0.01**2) for s in sigmas])
    assert steps[-1] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="noise_sigma=0"):
        coupled_steps(sigmas, noise_sigma=0)
    from distinv import DistributedContext

    problem = build("tomography_2d", **TOMO)
    with DistributedContext(env={}) as ctx:
        physics = problem.distribute(ctx)
        y = problem.measure(physics)
        x0 = problem.initial(physics, y)
        blur = lambda x, sigma: torch.nn.functional.avg_pool2d(x, 3, 1, 1)
        scalar, _ = pnp("hqs", physics, blur, y, x0, 0.1, iterations=3, step=2.0)
        listed, _ = pnp("hqs", physics, blur, y, x0, 0.1, iterations=3, step=[2.0] * 3)
        varied, _ = pnp("hqs", physics, blur, y, x0, 0.1, iterations=3, step=[2.0, 2.0, 8.0])
    assert torch.equal(scalar, listed) and not torch.equal(scalar, varied)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"algorithm": "fista"}, "algorithm='fista'"),
        ({"sigma": [0.1, 0.05]}, "sigma has 2 levels"),
        ({"relaxation": 2.5}, "relaxation=2.5"),
        ({"iterations": 0}, "iterations=0"),
        ({"step": [1.0, 2.0]}, "step=[1.0, 2.0]: give a step > 0, or one per iteration"),
        ({"step": -1.0}, "step=-1.0"),
    ],
)
def test_bad_solver_arguments_name_the_argument(kwargs, words):
    from distinv import DistributedContext

    problem = build("tomography_2d", **TOMO)
    with DistributedContext(env={}) as ctx:
        physics = problem.distribute(ctx)
        args = {"algorithm": "pgd", "sigma": 0.1, "iterations": 3, **kwargs}
        algorithm = args.pop("algorithm")
        with pytest.raises(ValueError, match=words.replace("[", r"\[")):
            pnp(algorithm, physics, lambda x, s: x, problem.measure(physics), problem.ground_truth, **args)


def check_slicewise_tiled(ctx):
    torch.manual_seed(0)
    volume = torch.rand(1, 1, 20, 24, 24)
    model = SlicewiseDenoiser3D(_tiny_drunet())
    with torch.no_grad():
        tiled = distribute(model, ctx, type_object="denoiser", patch_size=16, overlap=16)(volume, 0.1)
        untiled = model(volume, 0.1)
    return float((tiled - untiled).abs().max() / untiled.abs().max())


def test_slicewise_3d_denoiser_runs_tiled_and_equals_untiled(ranks):
    assert max(ranks(2).run(check_slicewise_tiled)) < 1e-4


def test_slicewise_3d_denoiser_gives_the_same_volume_whatever_the_slices_per_call():
    torch.manual_seed(0)
    volume = torch.rand(1, 1, 6, 16, 16)
    net = _tiny_drunet()
    with torch.no_grad():
        one_at_a_time = SlicewiseDenoiser3D(net, pixels_per_call=1)(volume, 0.1)
        all_at_once = SlicewiseDenoiser3D(net)(volume, 0.1)
    assert torch.allclose(one_at_a_time, all_at_once, atol=1e-5)
    with pytest.raises(ValueError, match="pixels_per_call=0"):
        SlicewiseDenoiser3D(net, pixels_per_call=0)
