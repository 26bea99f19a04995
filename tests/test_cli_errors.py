"""The command line's errors and edge cases: one clear line naming the argument (or the folder) and the fix, never a
traceback; read-only results folders can be listed and summarised; Ctrl-C during `distinv run` says how to resume."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distinv.bench.config import validate
from distinv.bench.results import finished_runs, table_path
from distinv.bench.runner import run_config
from distinv.cli import main

TESTS = Path(__file__).parent
TOMO = {"name": "tomography_2d", "sizes": [32], "params": {"num_angles": 12, "num_operators": 2}}
SOLVER = {"algorithm": "hqs", "iterations": 2, "step": 5.0, "sigma": [0.1, 0.05], "cg_iterations": 2}


def _config(output: Path, model: str = "python:runner_models:tiny") -> dict:
    return {
        "name": "cli",
        "output": str(output),
        "world_sizes": [1],
        "engines": ["none"],
        "timeout_s": 120,
        "oversubscribe": True,
        "problems": [{**TOMO, "denoiser": {"model": model}}],
        "solver": SOLVER,
        "tiling": {"overlap": 8},
    }


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def _distinv(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [*prefix, sys.executable, "-m", "distinv.cli", *args]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------ plan's arguments


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--problem", "highres_blur", "--size", "64", "--param", "bogus=1"], "argument --param: highres_blur has no"),
        (["--problem", "highres_blur", "--size", "64", "--threads", "0"], "argument --threads: 0: give a whole"),
        (["--problem", "tomography_3d", "--size", "64", "64", "64"], "argument --size: tomography_3d takes one size"),
        (["--problem", "highres_blur", "--size", "64", "64", "64"], "argument --size: highres_blur takes one size"),
        (["--problem", "highres_blur", "--size", "8"], "argument --size: size=8: highres_blur needs at least"),
        (["--problem", "mri", "--size", "64"], "argument --problem: problem='mri': choose one of"),
        (["--problem", "highres_blur", "--size", "64", "--cores", "0"], "argument --cores: 0: give a whole number"),
        (["--shape", "3", "64", "64", "--batch", "0"], "argument --batch: 0: give a whole number >= 1"),
        (["--shape", "3", "64", "64", "--world", "0"], "argument --world: 0: give a whole number >= 1"),
        (["--shape", "3", "64", "64", "--overlap", "-1"], "argument --overlap: -1: give a whole number >= 0"),
    ],
)
def test_plan_refuses_a_bad_argument_with_one_line_naming_it_and_exit_code_2(capsys, args, expected):
    argv = ["plan", *args] if "--world" in args else ["plan", "--world", "2", *args]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[-1].startswith("distinv plan: error: ") and expected in errors[-1], errors
    assert not any("Traceback" in line for line in errors)


def test_plan_sizes_a_problem_accepts_still_run():
    assert (
        main(
            [
                "plan",
                "--problem",
                "highres_blur",
                "--size",
                "96",
                "80",
                "--world",
                "1",
                "2",
                "--costs",
                "published-v100",
            ]
        )
        == 0
    )


# ------------------------------------------------------------------------------------------ read-only folders


@functools.cache
def _read_only_prefix() -> tuple[str, ...] | None:
    """How to run a command for which file permissions hold: as is for a user, under a user namespace for root
    (whose permission checks otherwise pass whatever the mode); ``None`` when neither is possible here."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "--user", "true"], capture_output=True)
    return ("unshare", "--user") if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def finished_folder(tmp_path_factory) -> Path:
    """A results folder holding one finished run (and its report), made by a real run."""
    tests = str(TESTS)
    sys.path.insert(0, tests)
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([tests, previous or ""])
    try:
        folder = tmp_path_factory.mktemp("finished") / "results"
        assert run_config(validate(_config(folder)), out=lambda _: None, live=False) == 0
    finally:
        sys.path.remove(tests)
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous
    return folder


@pytest.fixture
def read_only(finished_folder, tmp_path):
    """A copy of the finished folder nobody may write (restored for pytest to remove), its config, and the
    prefix that makes the permissions hold for the commands run under it."""
    prefix = _read_only_prefix()
    if prefix is None:
        pytest.skip("running as root without user namespaces: file permissions cannot be made to hold")
    folder = tmp_path / "results"
    shutil.copytree(finished_folder, folder)
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(_config(folder)))
    paths = [folder, *folder.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(modes[p] & 0o555 | 0o444 | (0o111 if p.is_dir() else 0))
    yield folder, config, prefix
    for p in reversed(paths):
        p.chmod(modes[p] | 0o700)


def _listing(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in [folder, *folder.rglob("*")]}


def test_a_dry_run_on_a_read_only_folder_lists_the_runs_and_writes_nothing(read_only):
    folder, config, prefix = read_only
    before = _listing(folder)
    done = _distinv("run", str(config), "--dry-run", prefix=prefix)
    assert done.returncode == 0, done.stderr
    assert "1 already in" in done.stdout and "  done  " in done.stdout and not done.stderr
    assert _listing(folder) == before


def test_a_run_with_nothing_left_to_do_on_a_read_only_folder_prints_the_summary(read_only):
    folder, config, prefix = read_only
    before = _listing(folder)
    done = _distinv("run", str(config), prefix=prefix)
    assert done.returncode == 0, done.stderr
    assert "0 to do" in done.stdout and "tomography_2d" in done.stdout and "not rewritten" in done.stdout
    assert not done.stderr and _listing(folder) == before


def test_results_on_a_read_only_folder_prints_the_summary(read_only):
    folder, _config_path, prefix = read_only
    done = _distinv("results", str(folder), prefix=prefix)
    assert done.returncode == 0 and "tomography_2d" in done.stdout and not done.stderr, done.stderr


def test_a_run_that_must_write_in_a_read_only_folder_says_so_in_one_line(read_only):
    folder, config, prefix = read_only
    before = _listing(folder)
    done = _distinv("run", str(config), "--redo", prefix=prefix)
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert str(folder) in line and "cannot write" in line and "--output" in line, done.stderr
    assert _listing(folder) == before


def test_a_lock_file_that_cannot_be_opened_gives_the_same_one_line_error(tmp_path, monkeypatch, capsys):
    import distinv.bench.runner as runner

    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "results")))
    real = os.open

    def refused(path, flags, *args, **kwargs):
        if str(path).endswith(runner.RUNNER_LOCK):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(runner.os, "open", refused)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(config)])
    message = str(exit_.value.code)
    assert len(message.splitlines()) == 1 and str(tmp_path / "results") in message and "cannot write" in message
    assert not table_path(tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------ Ctrl-C


def _live_processes(group: int) -> list[int]:
    """The processes of a process group that have not exited (zombies left to a non-reaping init excluded)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


@pytest.mark.parametrize("to", ["group", "runner"])
def test_ctrl_c_during_a_run_says_how_to_resume_without_a_traceback_and_exits_130(tmp_path, to):
    config = tmp_path / "config.yml"
    output = tmp_path / "results"
    raw = _config(output, model="python:runner_models:slow")
    raw["problems"].insert(0, {**TOMO, "sizes": [48], "denoiser": {"model": "python:runner_models:tiny"}})
    config.write_text(yaml.safe_dump(raw))
    started = tmp_path / "slow-network-called"
    runner = subprocess.Popen(
        [sys.executable, "-m", "distinv.cli", "run", str(config)],
        env={**_env(), "DISTINV_TEST_SLOW_STARTED": str(started)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        # the slow run's ranks are under way once one is in its network (on a loaded machine starting them takes
        # longer than any fixed wait, and a rank interrupted while importing prints its own traceback)
        while time.time() < deadline and not started.exists():
            time.sleep(0.2)
        time.sleep(0.5)
        # Ctrl-C in a terminal signals the whole foreground group; `kill -INT` the runner alone
        if to == "group":
            os.killpg(runner.pid, signal.SIGINT)
        else:
            os.kill(runner.pid, signal.SIGINT)
        stdout, stderr = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    assert runner.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr, stderr
    (line,) = stderr.strip().splitlines()
    assert "interrupted" in line and f"distinv run {config}" in line and "kept" in line
    assert len(finished_runs(output)) == 1  # the first run's rows are kept
    deadline = time.time() + 15
    while _live_processes(runner.pid) and time.time() < deadline:  # none of its ranks is left behind
        time.sleep(0.2)
    assert not _live_processes(runner.pid)


def test_wait_without_slurm_is_one_line_naming_the_flag_it_goes_with(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "results")))
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(config), "--wait"])
    assert "--wait waits for SLURM jobs: give it with --slurm" in str(exit_.value.code)
    assert not (tmp_path / "results").exists()
