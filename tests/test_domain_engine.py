"""The engines with the domain-parallel denoiser (``tiling: {parallel: domain}``): PnP on sharded iterates gives
the single process's iterates (no windows, so nothing approximated) on highres_blur and on cone-beam slabs of a
volume (the 2D network slice by slice), the replicated engine too; the choice is in the config, the run's key and
the summary, and the keys of window runs are the ones they had."""

from __future__ import annotations

import pytest
import torch
import yaml
from deepinv.models import DnCNN

from distinv.bench.config import ConfigError, load_config
from distinv.bench.results import series_of
from distinv.domain.denoiser import DomainParallelDenoiser
from test_sharded_pnp import run_engine

BLUR = {"size": (64, 40), "num_operators": 3, "sigma_major": 1.5, "sigma_minor": 0.5, "noise_sigma": 0.02}
CONE = {"size": 32, "num_angles": 12, "num_operators": 3, "noise_sigma": 0.02, "geometry": "cone"}
DOMAIN = {"parallel": "domain"}


def network_for(problem) -> torch.nn.Module:
    """A small DnCNN (a reach of 4 rows), slice by slice for volumes."""
    from distinv.denoisers.slicewise import SlicewiseDenoiser3D

    torch.manual_seed(3)
    channels = problem.ground_truth.shape[1]
    net = DnCNN(channels, channels, depth=4, nf=8, pretrained=None).eval()
    return SlicewiseDenoiser3D(net) if problem.ground_truth.ndim == 5 else net


def run_pnp(ctx, engine_name, problem_name, params, tiling, algorithm):
    result = run_engine(ctx, engine_name, problem_name, params, tiling, algorithm, 0.5, model=network_for)
    return result | {"domain": result["denoiser"] == DomainParallelDenoiser.__name__}


def _against_one_process(ranks, world_size, engine, problem, params, algorithm):
    whole = ranks(1).run(run_pnp, "none", problem, params, {}, algorithm)[0]
    results = ranks(world_size).run(run_pnp, engine, problem, params, DOMAIN, algorithm)
    for rank, result in enumerate(results):
        assert result["domain"]
        error = ((result["x"] - whole["x"]).norm() / whole["x"].norm()).item()
        assert error < 1e-5, (rank, error)
        assert max(abs(a - b) for a, b in zip(result["psnr"], whole["psnr"], strict=True)) < 0.01
    return results


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("algorithm", ["pgd", "hqs"])
def test_sharded_pnp_with_the_domain_denoiser_gives_the_single_process_iterates(ranks, world_size, algorithm):
    _against_one_process(ranks, world_size, "distinv-sharded", "highres_blur", BLUR, algorithm)


def test_cone_beam_slabs_with_the_domain_denoiser_give_the_single_process_iterates(ranks):
    _against_one_process(ranks, 2, "distinv-sharded", "tomography_3d", CONE, "pgd")


def test_the_replicated_engine_with_the_domain_denoiser_gives_the_single_process_iterates(ranks):
    _against_one_process(ranks, 2, "distinv", "highres_blur", BLUR, "pgd")


def _config(tmp_path, tiling: dict) -> dict:
    raw = {
        "name": "domain",
        "output": str(tmp_path / "results"),
        "world_sizes": [1, 2],
        "engines": ["distinv", "distinv-sharded"],
        "denoiser": {"model": "untrained:DnCNN"},
        "tiling": tiling,
        "problems": [{"name": "highres_blur", "sizes": [64], "params": {"num_operators": 2}}],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_domain_denoiser_is_chosen_in_the_config_and_shown_with_the_engine(tmp_path):
    windows = load_config(_config(tmp_path, {})).runs()
    domain = load_config(_config(tmp_path, DOMAIN)).runs()
    assert {r.tiling.parallel for r in windows} == {"windows"} and {r.tiling.parallel for r in domain} == {"domain"}
    assert {r.key for r in windows}.isdisjoint(r.key for r in domain)
    for run in domain:
        row = {"engine": run.engine, "tiling": {"parallel": run.tiling.parallel}}
        assert series_of(row) == f"{run.engine}/domain"
    assert series_of({"engine": "distinv", "tiling": '{"parallel": "windows"}'}) == "distinv"


def test_window_runs_keep_the_keys_they_had_before_the_choice_existed(tmp_path):
    """A table written before ``tiling.parallel`` existed resumes: its runs are found by their old keys."""
    run = load_config(_config(tmp_path, {})).runs()[0]
    fields = run._defining()
    assert "parallel" not in fields["tiling"]
    assert set(fields["tiling"]) == {"patch_size", "overlap", "max_batch_size"}


def test_an_unknown_parallel_mode_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"tiling\.parallel='tiles'.*'windows'.*'domain'"):
        load_config(_config(tmp_path, {"parallel": "tiles"}))


def check_unrolled_with_the_domain_denoiser(ctx):
    from deepinv.physics import StackedLinearPhysics

    from distinv import distribute
    from operators import make_operator, operator_list
    from test_training_dropin import IMG, gradients_of, unrolled_pgd

    factory = lambda i, device, shared: make_operator("blur", i, IMG).to(device)  # noqa: E731
    physics = distribute(factory, ctx, num_operators=2)
    reference = StackedLinearPhysics(operator_list("blur", 2, IMG))
    torch.manual_seed(1)
    y = reference.A(torch.rand(1, *IMG))
    expected = gradients_of(unrolled_pgd(), reference, y)
    model = distribute(unrolled_pgd(), ctx, parallel="domain")
    kind = type(model.prior[0].denoiser).__name__
    ours = {n.replace("denoiser.denoiser.", "denoiser."): g for n, g in gradients_of(model, physics, y).items()}
    errors = {n: ((g - expected[n]).norm() / expected[n].norm().clamp_min(1e-12)).item() for n, g in ours.items()}
    return kind, sorted(ours) == sorted(expected), errors


@pytest.mark.parametrize("world_size", [2, 3])
def test_an_unrolled_pgd_trains_through_the_domain_denoiser_with_the_single_process_gradients(ranks, world_size):
    for kind, same_parameters, errors in ranks(world_size).run(check_unrolled_with_the_domain_denoiser):
        assert kind == "DomainParallelDenoiser" and same_parameters
        assert max(errors.values()) < 1e-5, errors
