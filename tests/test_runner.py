"""The benchmark runner: configs validated with named errors, a grid of stable run keys, real local launches
at world sizes 1 and 2 writing the results table, failures reported by rank without stopping the next run,
resume, a table that survives a killed run, and SLURM jobs sized right (nothing submitted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from distinv.bench.config import ConfigError, load_config, validate
from distinv.bench.results import finished_runs, read_rows, summarise
from distinv.bench.runner import run_config

TESTS = Path(__file__).parent
TOMO = {"name": "tomography_2d", "sizes": [32], "params": {"num_angles": 12, "num_operators": 2}}
SOLVER = {"algorithm": "hqs", "iterations": 2, "step": 5.0, "sigma": [0.1, 0.05], "cg_iterations": 2}


def _config(tmp_path: Path, **changes) -> dict:
    raw = {
        "name": "tiny",
        "output": str(tmp_path / "results"),
        "world_sizes": [1, 2],
        "engines": ["none", "distinv"],
        "timeout_s": 60,
        "oversubscribe": True,
        "problems": [{**TOMO, "denoiser": {"model": "python:runner_models:tiny"}}],
        "solver": SOLVER,
        "tiling": {"overlap": 8},
    }
    raw.update(changes)
    return raw


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


pytestmark = pytest.mark.usefixtures("test_models_importable")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"solvr": {}}, "solvr is not a config key: did you mean solver?"),
        ({"solver": {"algoritm": "pgd"}}, "solver.algoritm is not a config key: did you mean solver.algorithm?"),
        ({"solver": {"algorithm": "fista"}}, "solver.algorithm='fista': choose one of"),
        ({"solver": {"iterations": 0}}, "solver.iterations=0: give a whole number >= 1"),
        ({"solver": {"sigma": [0.1, 0.05, 0.01]}}, "solver.sigma=[0.1, 0.05, 0.01]: give one level > 0 or [start"),
        ({"solver": {"step": -1}}, "solver.step=-1: give a step > 0"),
        ({"solver": {"coupling": 0}}, "solver.coupling=0: give a value > 0"),
        ({"solver": {"coupling": 0.2, "step": 1.0}}, "step and coupling both given"),
        ({"engines": ["distinv", "pytorch"]}, "engines=['distinv', 'pytorch']: give a list drawn from"),
        ({"world_sizes": [1, "2"]}, "world_sizes=[1, '2']: give a list of whole numbers"),
        ({"world_sizes": [1, 100_000], "oversubscribe": False}, "100000 cores needed"),
        ({"device": "tpu"}, "device='tpu': choose one of"),
        ({"threads_per_rank": 0}, "threads_per_rank=0: give a whole number >= 1"),
        ({"timeout_s": "soon"}, "timeout_s='soon': give the seconds"),
        ({"problems": []}, "problems: give a list"),
        ({"problems": [{"name": "mri", "sizes": [64]}]}, "problem='mri': choose one of"),
        ({"problems": [{**TOMO, "sizes": 32}]}, "problems[0].sizes=32: give a list of sizes"),
        ({"problems": [{**TOMO, "sizes": [8]}]}, "size=8: tomography_2d needs at least 16 pixels"),
        ({"problems": [{**TOMO, "params": {"num_angle": 3}}]}, "tomography_2d has no parameter 'num_angle'"),
        ({"problems": [{**TOMO, "params": {"size": 3}}]}, "the size goes in sizes"),
        ({"problems": [{**TOMO, "sweep": 1}]}, "problems[0].sweep is not a config key"),
        ({"tiling": {"patch": 64}}, "tiling.patch is not a config key: did you mean tiling.patch_size?"),
        ({"problems": [{**TOMO, "tiling": {"halo": 4}}]}, "problems[0].tiling.halo is not a config key"),
        ({"problems": [{**TOMO, "tiling": 8}]}, "problems[0].tiling: give a mapping that overrides the top-level"),
    ],
)
def test_each_config_rule_names_its_key_and_the_fix(tmp_path, change, message):
    with pytest.raises(ConfigError) as error:
        validate(_config(tmp_path, **change))
    assert message in str(error.value)


def test_every_broken_rule_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as error:
        validate(_config(tmp_path, device="tpu", repetitions=0, engines=["x"]))
    assert str(error.value).count("\n  - ") == 3


def test_gpu_world_sizes_beyond_this_machine_are_refused_unless_submitted_to_slurm(tmp_path):
    raw = _config(tmp_path, device="cuda", world_sizes=[64])
    with pytest.raises(ConfigError, match="64 ranks need 64 GPUs"):
        validate(raw)
    with pytest.raises(ConfigError, match="raise slurm.nodes"):
        validate({**raw, "slurm": {"nodes": 2, "gpus_per_node": 4}}, slurm=True)
    validate({**raw, "slurm": {"nodes": 16, "gpus_per_node": 4}}, slurm=True)


def test_grid_expands_sizes_engines_world_sizes_and_repetitions_with_stable_keys(tmp_path):
    raw = _config(tmp_path, engines=["none", "distinv", "deepinv"], repetitions=2)
    raw["problems"][0]["sizes"] = [32, 48]
    runs = validate(raw).runs()
    # per size and repetition: none at world 1, distinv and deepinv at 1 and 2
    assert len(runs) == 2 * 2 * (1 + 2 + 2)
    assert len({r.key for r in runs}) == len(runs)
    assert [r.key for r in validate(raw).runs()] == [r.key for r in runs]  # stable
    raw["solver"] = {**SOLVER, "iterations": 3}
    assert not {r.key for r in validate(raw).runs()} & {r.key for r in runs}  # the key follows the settings
    base = [r for r in runs if r.engine == "none" and r.size == 32 and r.repetition == 0][0]
    assert base.key.startswith("tomography_2d-32-none-w1-r0-")
    assert len({r.group for r in runs if r.size == 32 and r.repetition == 0}) == 1


def test_a_problem_overrides_the_top_level_tiling_key_by_key(tmp_path):
    raw = _config(tmp_path, tiling={"overlap": 32, "max_batch_size": 4})
    raw["problems"].append({**TOMO, "name": "tomography_3d", "tiling": {"overlap": 8}})
    by_problem = {r.problem: asdict(r.tiling) for r in validate(raw).runs()}
    common = {"patch_size": None, "max_batch_size": 4, "parallel": "windows"}
    assert by_problem["tomography_2d"] == {**common, "overlap": 32}
    assert by_problem["tomography_3d"] == {**common, "overlap": 8}


def test_deepinv_gets_half_the_smallest_side_when_its_default_patch_does_not_fit():
    from distinv.bench.engines import deepinv_patch

    assert deepinv_patch(256, (512, 512), given=False) == 256
    assert deepinv_patch(256, (256, 300), given=False) == 128  # two windows a side, as for two ranks
    assert deepinv_patch(256, (32, 32, 32), given=False) == 16
    assert deepinv_patch(64, (32, 32), given=True) == 24  # a given patch shrinks only as far as deepinv needs
    assert deepinv_patch(256, (12, 12), given=False) == 8


def test_tiny_runs_at_world_sizes_1_and_2_write_the_table_and_a_resume_skips_them(tmp_path):
    config = validate(_config(tmp_path))
    lines: list[str] = []
    assert run_config(config, out=lines.append, live=False) == 0
    rows = read_rows(config.output)
    runs = {r["run_key"] for r in rows}
    assert len(runs) == 3 and finished_runs(config.output) == runs
    expected = {
        "run_key", "config_hash", "problem", "size", "engine", "world_size", "rank", "iteration", "psnr", "ssim",
        "data_s", "denoiser_s", "comm_s", "data_comm_s", "denoiser_comm_s", "total_s", "data_peak_bytes",
        "denoiser_peak_bytes", "torch_version", "deepinv_version", "distinv_version", "git_commit", "device_name",
        "backend", "threads_per_rank", "host_count", "kind", "bytes_sent", "bytes_received", "memory_baseline_bytes",
    }  # fmt: skip
    assert expected <= set(rows[0])
    two = [r for r in rows if r["engine"] == "distinv" and r["world_size"] == 2]
    assert sorted({r["rank"] for r in two}) == [0, 1] and len(two) == 2 * SOLVER["iterations"]
    assert all(r["comm_s"] > 0 and r["backend"] == "gloo" for r in two)
    assert len({r["psnr"] for r in two if r["iteration"] == SOLVER["iterations"]}) == 1  # every rank, the same
    assert all(r["bytes_sent"] > 0 and r["bytes_received"] > 0 for r in two)
    assert all(r["memory_baseline_bytes"] > 0 and r["kind"] == "pnp" for r in rows)
    assert all(r["denoiser_peak_bytes"] > 0 for r in rows)
    # the same iterates whoever runs them: final PSNR equal across engines and world sizes
    finals = {e["run_key"]: e["psnr"] for e in summarise(config.output)}
    assert max(finals.values()) - min(finals.values()) < 1e-3
    assert any("speedup" in line for line in lines)
    again: list[str] = []
    assert run_config(config, out=again.append, live=False) == 0
    assert "3 already in" in again[0] and "0 to do" in again[0]
    assert len(read_rows(config.output)) == len(rows)


def test_a_rank_that_raises_fails_its_run_quickly_with_its_message_and_the_next_run_still_runs(tmp_path):
    failing = {**TOMO, "denoiser": {"model": "python:runner_models:fails_on_rank_1"}}
    fine = {**TOMO, "sizes": [48], "denoiser": {"model": "python:runner_models:tiny"}}
    config = validate(_config(tmp_path, engines=["distinv"], world_sizes=[2], problems=[failing, fine]))
    lines: list[str] = []
    started = time.perf_counter()
    assert run_config(config, out=lines.append, live=False) == 1
    assert time.perf_counter() - started < 90
    failed = [r for r in read_rows(config.output) if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["failed_rank"] == 1
    assert "rank 1 broke on purpose" in failed[0]["error"] and Path(failed[0]["log_dir"]).is_dir()
    assert any("FAILED on rank 1" in line and "rank 1 broke on purpose" in line for line in lines)
    assert {r["size"] for r in read_rows(config.output) if r["status"] == "ok"} == {"48"}  # sizes: JSON text
    assert len(finished_runs(config.output)) == 1  # the run after the failure finished


def test_results_survive_a_run_killed_midway_and_the_next_invocation_resumes(tmp_path):
    slow = {**TOMO, "sizes": [48], "denoiser": {"model": "python:runner_models:slow"}}
    fast = {**TOMO, "denoiser": {"model": "python:runner_models:tiny"}}
    path = _write(tmp_path, _config(tmp_path, engines=["none"], world_sizes=[1], problems=[fast, slow]))
    output = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "distinv.cli", "run", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (output / "results.parquet").exists():
            time.sleep(0.5)
        time.sleep(3)  # the slow run is under way
        assert process.poll() is None
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert len(finished_runs(output)) == 1
    config = load_config(path)
    lines: list[str] = []
    assert run_config(config, dry_run=True, out=lines.append) == 0
    assert "1 already in" in lines[0] and "1 to do" in lines[0]


def test_slurm_jobs_are_sized_from_the_config_and_nothing_is_submitted(tmp_path, monkeypatch):
    from distinv.bench.launch import slurm_executor, srun_command

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    slurm = {"nodes": 4, "gpus_per_node": 4, "partition": "gpu", "qos": "normal", "account": "proj"}
    slurm["setup"] = ["module load cuda"]
    raw = _config(tmp_path, device="cuda", world_sizes=[8], engines=["distinv"], slurm=slurm)
    spec = validate(raw, slurm=True).runs()[0]
    executor = slurm_executor(spec, validate(raw, slurm=True).raw["slurm"], tmp_path / "slurm")
    parameters = executor._executor.parameters
    assert parameters["nodes"] == 2 and parameters["ntasks_per_node"] == 4 and parameters["gpus_per_node"] == 4
    assert parameters["partition"] == "gpu" and parameters["qos"] == "normal" and parameters["account"] == "proj"
    assert parameters["setup"] == ["module load cuda"] and parameters["job_name"] == spec.key
    assert not (tmp_path / "slurm").exists() or not any((tmp_path / "slurm").iterdir())
    command = srun_command(spec, tmp_path, "abc", validate(raw, slurm=True).raw["slurm"])
    assert command[:4] == ["srun", "--ntasks=8", "--nodes=2", "--ntasks-per-node=4"]  # one per GPU of a node
    assert "--gpus-per-task=1" in command and command[-4:-3] == ["distinv.bench.worker"]


def test_cpu_ranks_without_tasks_per_node_share_one_node_in_validation_and_both_launchers(tmp_path, monkeypatch):
    from distinv.bench.launch import slurm_executor, srun_command

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    raw = _config(tmp_path, device="cpu", world_sizes=[2], engines=["distinv"], slurm={"nodes": 1})
    config = validate(raw, slurm=True)  # was refused: validation assumed one task per node
    spec = config.runs()[0]
    parameters = slurm_executor(spec, config.raw["slurm"], tmp_path / "slurm")._executor.parameters
    assert parameters["nodes"] == 1 and parameters["ntasks_per_node"] == 2
    assert srun_command(spec, tmp_path, "abc", config.raw["slurm"])[1:4] == [
        "--ntasks=2",
        "--nodes=1",
        "--ntasks-per-node=2",
    ]


def test_auto_denoiser_is_the_shipped_model_for_the_problem(tmp_path):
    from distinv.bench.worker import load_model
    from distinv.denoisers import load_denoiser

    problems = [{"name": name, "sizes": [32]} for name in ("radio", "tomography_2d", "highres_blur")]
    runs = {spec.problem: spec for spec in validate(_config(tmp_path, problems=problems)).runs()}
    expected = {"radio": ("drunet-small-radio", 1), "tomography_2d": ("drunet-small-grey", 1)}
    expected["highres_blur"] = ("drunet-small-colour", 3)
    for problem, (name, channels) in expected.items():
        chosen = load_model(runs[problem], channels, volume=False).state_dict()
        for key, value in load_denoiser(f"shipped:{name}").state_dict().items():
            assert torch.equal(chosen[key], value), (problem, key)
