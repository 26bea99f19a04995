"""Runs sharing a results folder: one runner per folder (a second is refused before it touches anything, a killed
runner's lock is taken over), a failed attempt never replaces a finished run's rows, no launch removes the log
folder another launch of the run is using, and a run whose PSNR or loss is not finite is recorded as failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from distinv.bench.config import validate
from distinv.bench.launch import RunOutcome, launch_local
from distinv.bench.results import append_failure, append_rows, finished_runs, read_rows, run_row, table_path
from distinv.bench.runner import RUNNER_LOCK, FolderInUseError, run_config, runner_lock

TESTS = Path(__file__).parent
TOMO = {"name": "tomography_2d", "sizes": [32], "params": {"num_angles": 12, "num_operators": 2}}
SOLVER = {"algorithm": "hqs", "iterations": 2, "step": 5.0, "sigma": [0.1, 0.05], "cg_iterations": 2}

pytestmark = pytest.mark.usefixtures("test_models_importable")


class _NotANumber(torch.nn.Module):
    def forward(self, x, sigma=None):
        return x * float("nan")


def not_a_number(channels: int) -> torch.nn.Module:
    """A denoiser (``python:test_concurrent_runs:not_a_number``) whose every output is NaN."""
    return _NotANumber()


def _config(tmp_path: Path, model: str = "python:runner_models:tiny", **changes) -> dict:
    raw = {
        "name": "shared",
        "output": str(tmp_path / "results"),
        "world_sizes": [1],
        "engines": ["none"],
        "timeout_s": 120,
        "oversubscribe": True,
        "problems": [{**TOMO, "denoiser": {"model": model}}],
        "solver": SOLVER,
        "tiling": {"overlap": 8},
    }
    return raw | changes


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _wait_for(condition, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def _attempts(log_dir: Path) -> list[Path]:
    """The launcher's per-attempt folders of a run (there once its ranks are being started)."""
    return sorted(p for p in log_dir.glob("*_*") if p.is_dir()) if log_dir.is_dir() else []


# ------------------------------------------------------------------------------------------ one runner per folder


def test_a_second_runner_on_the_same_folder_is_refused_before_it_touches_anything(tmp_path):
    raw = _config(tmp_path, model="python:runner_models:slow")
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(raw))
    output = tmp_path / "results"
    spec = validate(raw).runs()[0]
    earlier = run_row(spec, "older", "ok", rank=0, iteration=1, psnr=20.0, total_s=1.0)
    append_rows(output, [{**earlier, "run_key": "an-earlier-run"}])
    table = table_path(output).read_bytes()
    command = [sys.executable, "-m", "distinv.cli", "run", str(path)]
    first = subprocess.Popen(
        command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_for(lambda: _attempts(output / "logs" / spec.key))
        using = _attempts(output / "logs" / spec.key)
        second = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # still running its (slow) run
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode != 0
    message = second.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, second.stderr
    assert str(output) in message and f"pid {first.pid}" in message and "--output" in message
    assert _attempts(output / "logs" / spec.key) == using  # the first runner's log folder was left alone
    assert table_path(output).read_bytes() == table
    # the killed runner's lock went with it: the next runner takes the folder
    with runner_lock(output):
        assert (output / RUNNER_LOCK).read_text().split()[0] == str(os.getpid())


def test_a_stale_lock_whose_runner_is_dead_is_taken_over(tmp_path):
    output = tmp_path / "results"
    output.mkdir()
    (output / RUNNER_LOCK).write_text(f"{_dead_pid()} somehost\n")
    with runner_lock(output):
        assert (output / RUNNER_LOCK).read_text().split()[0] == str(os.getpid())
        held = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from distinv.bench.runner import runner_lock\nwith runner_lock({str(output)!r}):\n  pass",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert held.returncode != 0 and "FolderInUseError" in held.stderr and f"pid {os.getpid()}" in held.stderr
    with runner_lock(output):  # released when the holder leaves
        pass
    assert issubclass(FolderInUseError, RuntimeError)


# ------------------------------------------------------------------------------------------ failures never replace


def test_a_failure_row_never_replaces_a_finished_run(tmp_path):
    spec = validate(_config(tmp_path)).runs()[0]
    finished = [run_row(spec, "h", "ok", rank=0, iteration=i, psnr=20.0, total_s=1.0) for i in (1, 2)]
    append_rows(tmp_path, finished)
    assert not append_failure(tmp_path, [run_row(spec, "h", "failed", error="boom")])
    assert finished_runs(tmp_path) == {spec.key} and all(r["status"] == "ok" for r in read_rows(tmp_path))
    other = validate(_config(tmp_path, solver={**SOLVER, "iterations": 3})).runs()[0]
    assert append_failure(tmp_path, [run_row(other, "h", "failed", error="boom")])
    assert append_failure(tmp_path, [run_row(other, "h", "failed", error="again")])  # a failure replaces a failure
    assert [r["error"] for r in read_rows(tmp_path) if r["run_key"] == other.key] == ["again"]


def test_a_redo_that_fails_keeps_the_finished_rows_of_its_run(tmp_path, monkeypatch):
    import distinv.bench.runner as runner

    config = validate(_config(tmp_path))
    spec = config.runs()[0]
    append_rows(config.output, [run_row(spec, config.hash, "ok", rank=0, iteration=1, psnr=20.0, total_s=1.0)])
    before = read_rows(config.output)

    def fails(spec, output, config_hash=""):
        return RunOutcome(spec.key, False, 0.1, Path(output) / "logs" / spec.key, 0, "RuntimeError: boom")

    monkeypatch.setattr(runner, "launch_local", fails)
    lines: list[str] = []
    assert run_config(config, redo=True, out=lines.append, live=False) == 1
    assert read_rows(config.output) == before and finished_runs(config.output) == {spec.key}
    assert any("FAILED" in line and "keeps" in line for line in lines)


# ------------------------------------------------------------------------------------------ log folders

LAUNCH = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from distinv.bench.launch import launch_local
    from distinv.bench.spec import RunSpec
    launch_local(RunSpec.from_json(sys.argv[1]), Path(sys.argv[2]))
    """
)


def test_no_launch_removes_a_log_folder_another_launch_of_the_run_is_using(tmp_path):
    spec = validate(_config(tmp_path, model="python:runner_models:slow")).runs()[0]
    output = tmp_path / "results"
    log_dir = output / "logs" / spec.key
    other = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, spec.to_json(), str(output)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: _attempts(log_dir))
        using = _attempts(log_dir)
        started = time.perf_counter()
        outcome = launch_local(spec, output)
        assert time.perf_counter() - started < 30  # refused at once, not after the other's run
        assert other.poll() is None
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()
    assert not outcome.ok and outcome.failed_rank is None
    assert str(log_dir) in outcome.error and "in use" in outcome.error
    assert _attempts(log_dir) == using


# ------------------------------------------------------------------------------------------ non-finite metrics


@pytest.mark.parametrize("kind", ["pnp", "training"])
def test_a_run_whose_metric_is_not_finite_is_recorded_as_failed_and_resume_runs_it_again(tmp_path, kind):
    raw = _config(tmp_path, model="python:test_concurrent_runs:not_a_number")
    if kind == "training":
        raw["solver"] = {}
        raw["training"] = {"algorithm": "pgd", "iterations": 2, "steps": 2, "lr": 1e-3, "validate_every": 2}
    config = validate(raw)
    lines: list[str] = []
    assert run_config(config, out=lines.append, live=False) == 1
    (row,) = read_rows(config.output)
    assert row["status"] == "failed" and row["kind"] == kind
    metric = "loss" if kind == "training" else "psnr"
    assert f"{metric} is nan" in row["error"] and "NonFiniteMetricError" in row["error"]
    assert any("FAILED" in line and f"{metric} is nan" in line for line in lines)
    assert finished_runs(config.output) == set()
    again: list[str] = []
    assert run_config(config, dry_run=True, out=again.append) == 0
    assert "1 to do" in again[0]


def test_non_finite_metrics_are_named_with_where_they_start_and_a_training_start_row_without_loss_is_fine():
    from distinv.bench.worker import non_finite_cause

    start = {"step": 0, "loss": float("nan"), "val_psnr": 12.0, "rank": 0}  # step 0: validation only, no loss yet
    assert non_finite_cause([start, {"step": 1, "loss": 0.1, "rank": 0}], "training") is None
    pnp = [{"iteration": 1, "psnr": 20.0}, {"iteration": 2, "psnr": float("inf")}, {"iteration": 3, "psnr": None}]
    cause = non_finite_cause(pnp, "pnp")
    assert cause.startswith("psnr is inf from iteration 2") and "solver.step" in cause
    assert non_finite_cause(pnp[:1], "pnp") is None
