"""Benchmark problems: the same data at every world size, operators equal to the stacked ones, sane starts."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from deepinv.physics import StackedLinearPhysics

from distinv.bench.problems import build
from distinv.bench.problems.highres_blur import blur_kernel
from distinv.images import dead_leaves, load_image, shepp_logan_2d, shepp_logan_3d
from distinv.testing import dot_test
from operators import relative_error

RADIO = {"size": 48, "num_antennas": 12, "num_times": 10, "num_channels": 3, "num_operators": 3}
CASES = {
    "highres_blur": ("highres_blur", {"size": (48, 40), "num_operators": 5, "noise_sigma": 0.01}),
    "tomography_2d": ("tomography_2d", {"size": 48, "num_angles": 30, "num_operators": 4, "noise_sigma": 0.01}),
    "tomography_3d": ("tomography_3d", {"size": 20, "num_angles": 12, "num_operators": 4, "noise_sigma": 0.01}),
    "radio_time_natural": ("radio", RADIO),
    "radio_channel_uniform": ("radio", {**RADIO, "split": "channel", "weighting": "uniform"}),
    "radio_torchkbnufft": ("radio", {**RADIO, "num_operators": 4, "backend": "torchkbnufft"}),
}


def check_problem(ctx, case):
    warnings.simplefilter("ignore")
    name, params = CASES[case]
    problem = build(name, **params)
    physics = problem.distribute(ctx)
    y_local = problem.measure(physics)
    x0 = problem.initial(physics, y_local)
    stacked = StackedLinearPhysics(
        [problem.factory(i, ctx.device, problem.shared) for i in range(problem.num_operators)]
    )
    x = problem.ground_truth
    y_all = physics.A(x)
    torch.manual_seed(0)
    u = torch.rand_like(x)
    return {
        "y": {i: t.clone() for i, t in zip(physics.local_indexes, y_local, strict=True)},
        "A": relative_error(y_all, stacked.A(x)),
        "A_adjoint": relative_error(physics.A_adjoint(y_all), stacked.A_adjoint(y_all)),
        "dot": dot_test(physics, u, y_all, rtol=1e-4, normal=False)["dot"],
        "init_psnr": problem.psnr(x0),
        "zero_psnr": problem.psnr(torch.zeros_like(x)),
        "init_checksum": float(x0.double().sum()),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_problem_is_deterministic_across_world_sizes_and_matches_the_stacked_operator(ranks, case):
    measurements = []
    for world_size in (1, 2, 3):
        results = ranks(world_size).run(check_problem, case)
        merged = {}
        for r in results:
            assert r["A"] <= 1e-5 and r["A_adjoint"] <= 1e-5 and r["dot"] <= 1e-4, r
            assert r["init_psnr"] > r["zero_psnr"] + 1.0
            merged.update(r["y"])
        assert len({r["init_checksum"] for r in results}) == 1
        assert sorted(merged) == list(range(CASES[case][1]["num_operators"]))
        measurements.append(merged)
    for other in measurements[1:]:
        worst = max(relative_error(other[i], measurements[0][i]) for i in measurements[0])
        assert worst <= 1e-6, worst  # equal up to the float rounding of vectorised kernels


def test_blur_angles_really_differ():
    kernels = [blur_kernel(i, 8, 3.0, 0.5) for i in range(8)]
    for i in range(8):
        for j in range(i + 1, 8):
            same_size = kernels[i].shape == kernels[j].shape
            assert not same_size or (kernels[i] - kernels[j]).abs().max() > 1e-3, (i, j)


def test_dead_leaves_any_size_covered_and_reproducible():
    image = dead_leaves(70, 45, seed=3)
    assert image.shape == (1, 3, 70, 45) and 0 <= image.min() and image.max() <= 1
    assert torch.equal(image, dead_leaves(70, 45, seed=3))
    assert not torch.equal(image, dead_leaves(70, 45, seed=4))
    assert image.std() > 0.15  # many leaves, not a flat background


def test_shepp_logan_is_analytic_at_any_size():
    small, large = shepp_logan_2d(64), shepp_logan_2d(257)
    assert small.shape == (1, 1, 64, 64) and large.shape == (1, 1, 257, 257)
    assert abs(small.mean() - large.mean()) < 0.01  # same object, not a rescaled picture
    assert large.max() == 1.0


def test_shepp_logan_3d_middle_slice_is_the_2d_phantoms_shape():
    volume = shepp_logan_3d(48)
    assert volume.shape == (1, 1, 48, 48, 48)
    middle = volume[0, 0, 24]
    assert middle.max() == 1.0 and (middle > 0).float().mean() > 0.4  # the head's cross-section


def test_user_image_is_cropped_and_resized(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (300, 100), color=(200, 50, 10)).save(path)
    image = load_image(path, 64, 96)
    assert image.shape == (1, 3, 64, 96)
    assert abs(image[0, 0].mean().item() - 200 / 255) < 0.01


@pytest.mark.parametrize(
    "name,params,words",
    [
        ("highres_blur", {"size": 8}, "size=8"),
        ("highres_blur", {"size": 64, "noise_sigma": -0.1}, "noise_sigma=-0.1"),
        ("highres_blur", {"size": 64, "image": "/nonexistent.png"}, "image='/nonexistent.png'"),
        ("tomography_2d", {"size": 64, "num_angles": 3, "num_operators": 4}, "num_operators=4"),
        ("tomography_2d", {"size": 4}, "size=4"),
        ("tomography_3d", {"size": 24, "num_angles": 2, "num_operators": 3}, "num_operators=3"),
        ("tomography_2d", {"size": 32, "projector": "radon"}, "projector='radon': give 'distinv'"),
        ("tomography_3d", {"size": 32, "geometry": "fan"}, "geometry='fan': give 'cone'"),
        ("tomography_3d", {"size": 32, "cone_angle": 75.0}, "cone_angle=75.0"),
        ("tomography_3d", {"size": 32, "magnification": 0.5}, "magnification=0.5"),
        ("tomography_3d", {"size": 32, "projector": "deepinv"}, "projector='deepinv' has no cone beam"),
        ("radon", {}, "problem='radon'"),
        ("radio", {"num_times": 4, "num_operators": 5}, "num_operators=5"),
        ("radio", {"split": "channel", "num_channels": 2, "num_operators": 3}, "num_channels=2"),
        ("radio", {"weighting": "natural-ish"}, "weighting='natural-ish'"),
        ("radio", {"weighting": "briggs", "robust": 3}, "robust=3"),
        ("radio", {"split": "baseline"}, "split='baseline'"),
        ("radio", {"noise_sigma": -1.0}, "noise_sigma=-1.0"),
        ("radio", {"dynamic_range": 0.5}, "dynamic_range=0.5"),
        ("radio", {"uv_extent": 1.5}, "uv_extent=1.5"),
        ("radio", {"backend": "cufft"}, "backend='cufft'"),
    ],
)
def test_bad_problem_parameters_name_the_parameter(name, params, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace(".", r"\.")):
        build(name, **params)


def test_volume_projections_do_not_depend_on_slices_per_call():
    from distinv.bench.problems.tomography_3d import SlicewiseRadon

    angles = torch.linspace(0, 180, 7)[:-1]
    volume = shepp_logan_3d(16)
    whole, one_by_one = SlicewiseRadon(angles, 16), SlicewiseRadon(angles, 16, slices_per_call=1)
    y = whole.A(volume)
    assert y.shape[:3] == (1, 1, 16) and torch.allclose(one_by_one.A(volume), y)
    assert torch.allclose(one_by_one.A_adjoint(y), whole.A_adjoint(y), atol=1e-5)


@pytest.mark.parametrize("name", ["tomography_2d", "tomography_3d"])
def test_tomography_runs_on_the_lean_projector_and_keeps_deepinvs_selectable(name):
    from deepinv.physics import Tomography

    from distinv.bench.problems.tomography_3d import SlicewiseRadon
    from distinv.operators.parallel_beam import ParallelBeam

    params = {"size": 24, "num_angles": 12, "num_operators": 3}
    if name == "tomography_3d":
        params["geometry"] = "parallel"  # deepinv has no cone beam
    lean, theirs = build(name, **params), build(name, **params, projector="deepinv")
    a, b = lean.factory(1, "cpu", lean.shared), theirs.factory(1, "cpu", theirs.shared)
    assert isinstance(a, ParallelBeam) and isinstance(b, SlicewiseRadon if name == "tomography_3d" else Tomography)
    x = torch.nn.functional.avg_pool2d(lean.ground_truth.flatten(0, -3)[None], 5, 1, 2).reshape(lean.ground_truth.shape)
    assert relative_error(a.A(x), b.A(x)) < 0.03  # the same unit-norm scaling; the interpolations differ (smooth x)
    if importlib.util.find_spec("astra") is not None:
        astras = build(name, **params, projector="astra")
        assert relative_error(astras.factory(1, "cpu", astras.shared).A(x), a.A(x)) < 0.03


def test_closed_form_radon_scaling_matches_deepinvs_power_iteration():
    from deepinv.physics import Tomography

    from distinv.bench.problems.tomography_2d import block_angles, normalised_tomography

    angles = block_angles(1, 60, 3)
    ours, theirs = normalised_tomography(angles, 48), Tomography(angles=angles, img_width=48, normalize=True)
    x = shepp_logan_2d(48)
    assert relative_error(ours.A(x), theirs.A(x)) < 5e-3
    assert relative_error(ours.A_dagger(ours.A(x), fbp=True), theirs.A_dagger(theirs.A(x), fbp=True)) < 5e-3


@pytest.mark.parametrize("shape,first,last", [((2, 3, 37, 29), 5, 20), ((1, 1, 10, 7), 9, 10), ((1, 2, 5, 6, 7), 1, 4)])
def test_a_band_of_seeded_noise_is_the_band_of_the_whole_noise(shape, first, last):
    from distinv.placements.row_bands import randn_rows as band_of_randn

    whole = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    band = band_of_randn(shape, torch.Generator().manual_seed(4), first, last, torch.float32)
    assert torch.equal(band, whole[:, :, first:last])
