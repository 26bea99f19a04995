"""The results table: one type per column whatever the runs, a rerun replaces its run, a launch that fails is
recorded and the next run goes on, and writes are atomic (a writer killed at any moment loses no finished run
and its temporary files are removed by the next one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distinv.bench.config import validate
from distinv.bench.results import (
    append_failure,
    append_rows,
    finished_runs,
    format_summary,
    read_rows,
    summarise,
    table_path,
)
from distinv.bench.runner import run_config

TINY = {"model": "python:runner_models:tiny"}
SOLVER = {"algorithm": "hqs", "iterations": 2, "step": 5.0, "sigma": 0.05, "cg_iterations": 2}


pytestmark = pytest.mark.usefixtures("test_models_importable")


def _config(tmp_path: Path, sizes: list, **changes) -> dict:
    problem = {"name": "highres_blur", "sizes": sizes, "params": {"num_operators": 1}, "denoiser": TINY}
    raw = {
        "name": "table",
        "output": str(tmp_path / "results"),
        "world_sizes": [1],
        "engines": ["distinv"],
        "timeout_s": 60,
        "problems": [problem],
        "solver": SOLVER,
        "tiling": {"overlap": 8},
    }
    return raw | changes


def _run_rows(key: str, seconds: float, psnr: float, size=64, ranks: int = 2) -> list[dict]:
    return [
        {"run_key": key, "group": "g", "status": "ok", "problem": "p", "size": size, "engine": "distinv"}
        | {"world_size": ranks, "repetition": 0, "rank": rank, "iteration": it, "total_s": seconds, "data_s": 0.0}
        | {"denoiser_s": 0.0, "comm_s": 0.0, "psnr": psnr if rank == 0 else None}
        for rank in range(ranks)
        for it in (1, 2)
    ]


# ------------------------------------------------------------------------------------------ one type per column


def test_a_config_mixing_a_square_and_a_pair_size_records_both_runs_and_a_rerun_skips_them(tmp_path):
    config = validate(_config(tmp_path, sizes=[32, [32, 48]]))
    lines: list[str] = []
    assert run_config(config, out=lines.append, live=False) == 0
    assert len(finished_runs(config.output)) == 2
    assert {r["size"] for r in read_rows(config.output)} == {"32", "[32, 48]"}
    assert pq.read_schema(table_path(config.output)).field("size").type == pa.string()
    assert any("32x48" in line for line in lines)  # the summary writes sizes as labels
    again: list[str] = []
    assert run_config(config, out=again.append, live=False) == 0
    assert "2 already in" in again[0] and "0 to do" in again[0]


def test_sizes_are_json_text_whatever_the_first_run_wrote(tmp_path):
    append_rows(tmp_path, _run_rows("square", 1.0, 20.0, size=64))
    append_rows(tmp_path, _run_rows("pair", 1.0, 20.0, size=[64, 96]))
    assert {r["size"] for r in read_rows(tmp_path)} == {"64", "[64, 96]"}
    assert "64x96" in format_summary(summarise(tmp_path))


def test_a_column_whose_values_mix_types_is_still_written_as_text(tmp_path):
    append_rows(tmp_path, [{"run_key": "a", "status": "ok", "note": 3, "ratio": 1}])
    append_rows(tmp_path, [{"run_key": "b", "status": "ok", "note": "three", "ratio": 1.5, "flag": True}])
    rows = {r["run_key"]: r for r in read_rows(tmp_path)}
    assert rows["a"]["note"] == "3" and rows["b"]["note"] == "three"
    assert rows["a"]["ratio"] == 1.0 and rows["b"]["ratio"] == 1.5  # whole and decimal numbers: decimals
    assert rows["b"]["flag"] is True and rows["a"]["flag"] is None


# ------------------------------------------------------------------------------------------ a rerun replaces its run


def test_new_rows_of_a_run_replace_its_earlier_rows_in_one_write(tmp_path):
    append_rows(tmp_path, _run_rows("run", seconds=9.0, psnr=10.0) + _run_rows("other", 1.0, 30.0))
    append_rows(tmp_path, _run_rows("run", seconds=1.0, psnr=20.0))
    rows = read_rows(tmp_path)
    assert len([r for r in rows if r["run_key"] == "run"]) == 4 and len(rows) == 8
    entry = next(e for e in summarise(tmp_path) if e["run_key"] == "run")
    assert entry["total_s"] == 1.0 and entry["psnr"] == 20.0


def test_a_rerun_that_fails_keeps_the_finished_run_and_a_finished_rerun_replaces_a_failure(tmp_path):
    append_rows(tmp_path, _run_rows("run", 1.0, 20.0))
    failure = {"run_key": "run", "status": "failed", "error": "boom", "problem": "p", "size": 64}
    assert not append_failure(tmp_path, [failure])
    assert finished_runs(tmp_path) == {"run"} and all(r["status"] == "ok" for r in read_rows(tmp_path))
    assert append_failure(tmp_path, [{**failure, "run_key": "other"}])
    append_rows(tmp_path, _run_rows("other", 1.0, 20.0))
    assert finished_runs(tmp_path) == {"run", "other"} and all(r["status"] == "ok" for r in read_rows(tmp_path))


def test_a_table_written_before_reruns_replaced_their_run_summarises_the_latest_attempt(tmp_path):
    older = _run_rows("run", seconds=9.0, psnr=10.0)
    newer = _run_rows("run", seconds=1.0, psnr=20.0)
    pq.write_table(pa.Table.from_pylist(older + newer), table_path(tmp_path))
    entry = summarise(tmp_path)[0]
    assert entry["total_s"] == 1.0 and entry["psnr"] == 20.0 and entry["iterations"] == 2


def test_redo_reruns_a_finished_run_and_the_table_holds_only_the_rerun(tmp_path):
    config = validate(_config(tmp_path, sizes=[32]))
    assert run_config(config, out=lambda _: None, live=False) == 0
    first = read_rows(config.output)
    assert run_config(config, redo=True, out=lambda _: None, live=False) == 0
    second = read_rows(config.output)
    assert len(second) == len(first) and len(summarise(config.output)) == 1
    assert min(r["started"] for r in second) > max(r["started"] for r in first)


# ------------------------------------------------------------------------------------------ launch failures


def test_a_launch_that_fails_before_any_rank_is_recorded_and_the_next_run_still_runs(tmp_path, monkeypatch):
    import torch.distributed.launcher.api as launcher

    real = launcher.elastic_launch
    calls = []

    def flaky(config, entrypoint):
        calls.append(config.run_id)
        if len(calls) == 1:
            raise RuntimeError("rendezvous failed: address already in use")
        return real(config, entrypoint)

    monkeypatch.setattr(launcher, "elastic_launch", flaky)
    config = validate(_config(tmp_path, sizes=[32, 40]))
    lines: list[str] = []
    assert run_config(config, out=lines.append, live=False) == 1
    rows = read_rows(config.output)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["run_key"] == calls[0] and failed[0]["failed_rank"] is None
    assert "address already in use" in failed[0]["error"]
    assert any("FAILED to launch" in line and "address already in use" in line for line in lines)
    assert finished_runs(config.output) == {calls[1]}


def test_a_rendezvous_port_taken_by_another_process_fails_the_run_at_once(tmp_path, monkeypatch):
    import socket

    import distinv.bench.launch as launch

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]
    real = launch.free_port
    monkeypatch.setattr(launch, "free_port", lambda: ports.pop() if ports else real())
    config = validate(_config(tmp_path, sizes=[32, 40]))
    started = time.perf_counter()
    try:
        assert run_config(config, out=lambda line: None, live=False) == 1
    finally:
        taken.close()
    assert time.perf_counter() - started < 120  # no wait on the other process's port
    failed = [r for r in read_rows(config.output) if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["failed_rank"] is None
    assert "could not be launched" in failed[0]["error"]
    assert len(finished_runs(config.output)) == 1


def test_an_error_in_the_launch_thread_is_recorded_not_lost(tmp_path, monkeypatch):
    import distinv.bench.runner as runner

    def broken(spec, output, config_hash=""):
        raise OSError("cannot spawn")

    monkeypatch.setattr(runner, "launch_local", broken)
    config = validate(_config(tmp_path, sizes=[32, 40]))
    assert run_config(config, out=lambda _: None, live=False) == 1
    failed = read_rows(config.output)
    assert len(failed) == 2 and all("cannot spawn" in r["error"] for r in failed)


def test_srun_missing_fails_each_run_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    config = validate(_config(tmp_path, sizes=[32]))
    assert run_config(config, srun=True, out=lambda _: None, live=False) == 1
    (failed,) = read_rows(config.output)
    assert failed["status"] == "failed" and "srun" in failed["error"]


def test_a_failure_row_that_cannot_be_written_is_recorded_bare_with_both_reasons(tmp_path, monkeypatch):
    import distinv.bench.runner as runner
    from distinv.bench.launch import RunOutcome

    real = runner.append_failure

    def refuses_full_rows(directory, rows):
        if any("config_hash" in row for row in rows):
            raise ValueError("column 'solver' cannot be written")
        return real(directory, rows)

    monkeypatch.setattr(runner, "append_failure", refuses_full_rows)
    spec = validate(_config(tmp_path, sizes=[[32, 48]])).runs()[0]
    outcome = RunOutcome(spec.key, False, 1.0, tmp_path / "logs", 0, "ArrowInvalid: the run's rows")
    runner.record_failure(tmp_path, spec, outcome, "hash", out=lambda _: None)
    (row,) = read_rows(tmp_path)
    assert row["run_key"] == spec.key and row["status"] == "failed" and row["size"] == "[32, 48]"
    assert "the run's rows" in row["error"] and "column 'solver' cannot be written" in row["error"]


def test_a_job_that_cannot_be_submitted_is_recorded_and_the_others_are_submitted(tmp_path, monkeypatch):
    import distinv.bench.runner as runner

    submitted = []

    def submit(spec, slurm, output, config_hash=""):
        if not submitted:
            submitted.append(None)
            raise RuntimeError("sbatch: error: invalid partition")
        submitted.append(spec.key)
        return type("Job", (), {"job_id": "42"})()

    monkeypatch.setattr(runner, "submit_slurm", submit)
    config = validate(_config(tmp_path, sizes=[32, 40]))
    lines: list[str] = []
    assert run_config(config, slurm=True, out=lines.append) == 1
    (failed,) = read_rows(config.output)
    assert "invalid partition" in failed["error"] and submitted[1] != failed["run_key"]
    assert any("could not submit" in line for line in lines) and any("SLURM job 42" in line for line in lines)


# ------------------------------------------------------------------------------------------ atomic writes

WRITER = textwrap.dedent(
    """
    import sys
    from distinv.bench.results import append_rows
    folder = sys.argv[1]
    for n in range(10_000):
        append_rows(folder, [{"run_key": f"run{n}", "status": "ok", "iteration": i, "payload": "x" * 2000}
                             for i in range(50)])
        print(n, flush=True)
    """
)


@pytest.mark.parametrize("delay", [0.0, 0.013])
def test_a_writer_killed_at_any_moment_leaves_a_readable_table_with_every_finished_write(tmp_path, delay):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        acknowledged = [int(writer.stdout.readline()) for _ in range(3)]
        time.sleep(delay)
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait()
    runs = {r["run_key"] for r in read_rows(tmp_path)}
    assert {f"run{n}" for n in acknowledged} <= runs
    append_rows(tmp_path, [{"run_key": "after", "status": "ok"}])  # the next writer cleans up
    assert not list(tmp_path.glob("*.tmp")) and "after" in {r["run_key"] for r in read_rows(tmp_path)}


def test_a_write_that_fails_midway_leaves_the_table_as_it_was_and_no_temporary_file(tmp_path, monkeypatch):
    import distinv.bench.results as results

    append_rows(tmp_path, _run_rows("kept", 1.0, 20.0))

    def half_written(table, where, **kwargs):
        with open(where, "wb") if isinstance(where, str | Path) else where as file:
            file.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(results.pq, "write_table", half_written)
    with pytest.raises(OSError, match="disk full"):
        append_rows(tmp_path, _run_rows("lost", 1.0, 20.0))
    monkeypatch.undo()
    assert {r["run_key"] for r in read_rows(tmp_path)} == {"kept"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_run_removes_temporary_files_a_killed_writer_left(tmp_path):
    config = validate(_config(tmp_path, sizes=[32]))
    output = Path(config.output)
    (output / ".progress").mkdir(parents=True)
    stale = [output / ".results.parquet.4242.tmp", output / ".progress" / ".some-run.json.tmp"]
    for path in stale:
        path.write_text("half")
    assert run_config(config, dry_run=True, out=lambda _: None) == 0
    assert not any(path.exists() for path in stale)


def test_the_failed_rank_is_the_one_that_raised_not_a_peer_told_of_it(tmp_path):
    import json as _json

    from distinv.bench.launch import _root_cause

    peer = "distinv.comm.context.PeerRankError: the tiled denoiser's windows failed on rank(s) [1]: RuntimeError: boom"
    reports = {0: (peer, 100.0), 1: ("RuntimeError: boom", 100.001)}  # the peer's report is written first
    for rank, (error, when) in reports.items():
        (tmp_path / f"rank{rank}.error.json").write_text(_json.dumps({"rank": rank, "error": error, "time": when}))
    rank, text = _root_cause({}, tmp_path)
    assert rank == 1 and "RuntimeError: boom" in text
