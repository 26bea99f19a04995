"""The benchmark's training half: a training config trains an unrolled network under each engine at world sizes
1 and 2 (real launches), every rank on the same parameters, rows marked ``kind: training`` in the one results
table beside PnP runs, summarised in text and in the report's training section; bad training settings are
config errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from distinv.bench.config import ConfigError, load_config, validate
from distinv.bench.report import write_report
from distinv.bench.results import read_rows, summarise
from distinv.bench.runner import run_config
from distinv.bench.training_report import format_training_summary, summarise_training

BLUR = {"name": "highres_blur", "sizes": [32], "params": {"num_operators": 2}}
TRAINING = {"algorithm": "pgd", "iterations": 2, "steps": 3, "lr": 1e-3, "validate_every": 2}


def _config(tmp_path: Path, **changes) -> dict:
    raw = {
        "name": "tiny-training",
        "output": str(tmp_path / "results"),
        "world_sizes": [1, 2],
        "engines": ["none", "distinv", "deepinv"],
        "timeout_s": 120,
        "oversubscribe": True,
        "problems": [BLUR],
        "denoiser": {"model": "python:runner_models:tiny"},
        "training": TRAINING,
        "tiling": {"overlap": 32},  # a halo as wide as the image: tiling is exact, so losses match one process
    }
    raw.update(changes)
    return raw


pytestmark = pytest.mark.usefixtures("test_models_importable")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"training": {"algoritm": "pgd"}}, "training.algoritm is not a config key: did you mean training.algorithm?"),
        ({"training": {"algorithm": "hqs"}}, "training.algorithm='hqs': choose one of ['pgd', 'drs']"),
        ({"training": {"steps": 0}}, "training.steps=0: give a whole number >= 1."),
        ({"training": {"lr": -1}}, "training.lr=-1: give a number > 0"),
        ({"training": {"stepsize": 0}}, "training.stepsize=0: give a step > 0"),
        ({"training": {"checkpoint_iterations": "yes"}}, "training.checkpoint_iterations='yes': give true or false."),
        ({"solver": {"iterations": 3}}, "solver: a training config trains an unrolled network"),
    ],
)
def test_bad_training_settings_are_config_errors_naming_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=None) as caught:
        validate(_config(tmp_path, **change))
    assert message in str(caught.value)


def test_pnp_run_keys_do_not_change_with_the_training_half(tmp_path):
    raw = _config(tmp_path, training=None, solver={"iterations": 2})
    spec = validate(raw).runs()[0]
    assert spec.kind == "pnp" and not spec.key.startswith("train-")
    trained = validate(_config(tmp_path)).runs()[0]
    assert trained.kind == "training" and trained.key.startswith("train-") and trained.solver == {}


def test_training_runs_every_engine_with_ranks_on_the_same_parameters_and_report_them(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(_config(tmp_path)))
    config = load_config(path)
    assert run_config(config, out=lambda _line: None) == 0
    rows = read_rows(config.output)
    assert {r["kind"] for r in rows} == {"training"}
    runs = {(r["engine"], r["world_size"]) for r in rows}
    assert runs == {("none", 1), ("distinv", 1), ("distinv", 2), ("deepinv", 1), ("deepinv", 2)}
    for engine, world in runs:
        mine = [r for r in rows if (r["engine"], r["world_size"]) == (engine, world)]
        assert sorted({r["step"] for r in mine}) == [0, 1, 2, 3]
        for step in (1, 2, 3):  # a replicated loss: the same on every rank
            losses = {r["loss"] for r in mine if r["step"] == step}
            assert len(losses) == 1 and math.isfinite(losses.pop())
        assert all(r["step_s"] >= r["forward_s"] > 0 for r in mine if r["step"] > 0)
        validated = [r["step"] for r in mine if r["val_psnr"] is not None and r["rank"] == 0]
        assert validated == [0, 2, 3]
    ours = {r["step"]: r["loss"] for r in rows if r["engine"] == "distinv" and r["world_size"] == 2}
    alone = {r["step"]: r["loss"] for r in rows if r["engine"] == "none"}
    assert all(abs(ours[s] - alone[s]) <= 1e-4 * abs(alone[s]) for s in (1, 2, 3)), (ours, alone)

    summary = summarise_training(rows)
    assert len(summary) == 5 and all(e["status"] == "ok" for e in summary)
    baseline = next(e for e in summary if e["engine"] == "none")
    assert baseline["speedup"] == pytest.approx(1.0)
    assert "PSNR start" in format_training_summary(summary)
    assert summarise(config.output) == []  # the PnP summary holds PnP runs only
    page = write_report(config.output).read_text()
    for figure in ("training-breakdown", "training-scaling", "training-memory", "training-curves"):
        assert f'data-figure="{figure}"' in page


def test_an_unrolled_drs_trains_with_recomputed_windows_and_its_bytes_counted(tmp_path):
    training = {**TRAINING, "algorithm": "drs", "checkpoint_batches": "always", "steps": 2}
    raw = _config(tmp_path, engines=["distinv"], world_sizes=[2], training=training)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    assert run_config(config, out=lambda _line: None) == 0
    rows = [r for r in read_rows(config.output) if r["step"] > 0]
    assert {r["rank"] for r in rows} == {0, 1} and all(math.isfinite(r["loss"]) for r in rows)
    for step in (1, 2):
        assert len({r["loss"] for r in rows if r["step"] == step}) == 1
    assert all(r["bytes_sent"] > 0 and r["bytes_received"] > 0 for r in rows)


def test_sharded_iterates_train_with_the_single_process_losses(tmp_path):
    """distinv-sharded trains an unrolled PGD on row bands (the domain denoiser, the blurs' halo with autograd):
    its losses are the untiled single process's at 1 and 2 ranks; what it cannot train is refused by name."""
    blur = {**BLUR, "sizes": [64]}
    raw = _config(tmp_path, engines=["none", "distinv-sharded"], problems=[blur], tiling={"parallel": "domain"})
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    assert run_config(config, out=lambda _line: None) == 0
    rows = [r for r in read_rows(config.output) if r["step"] > 0]
    alone = {r["step"]: r["loss"] for r in rows if r["engine"] == "none"}
    for world in (1, 2):
        mine = [r for r in rows if r["engine"] == "distinv-sharded" and r["world_size"] == world]
        assert {r["rank"] for r in mine} == set(range(world))
        for step in (1, 2, 3):
            losses = {r["loss"] for r in mine if r["step"] == step}
            assert len(losses) == 1 and abs(losses.pop() - alone[step]) <= 1e-4 * abs(alone[step]), (world, step)
    with pytest.raises(ConfigError) as refused:
        validate(_config(tmp_path, engines=["distinv-sharded"], problems=[blur, {**BLUR, "name": "radio"}]))
    assert "problems[0].tiling.parallel='windows'" in str(refused.value)
    assert "problems[1] (radio): distinv-sharded trains on highres_blur" in str(refused.value)
