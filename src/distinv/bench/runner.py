"""``distinv run``: the grid of a config, one run after the other, skipping those already in the table.

Locally each run gets its own ranks (``torch.distributed.run``'s API); a run that fails, or cannot even be
launched, is recorded as failed (rank, exception, log folder) and the next one starts. With ``slurm`` every run
is submitted as a job; with ``srun`` each becomes a job step of the current allocation. A rerun (``redo``)
replaces the run's rows in the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from distinv.bench.config import Config
from distinv.bench.launch import RunOutcome, launch_local, srun_command, submit_slurm
from distinv.bench.progress import progress_path, remove_stale_progress
from distinv.bench.results import (
    append_rows,
    finished_runs,
    format_summary,
    last_line,
    read_rows,
    remove_stale_temporaries,
    run_row,
    summarise,
)
from distinv.bench.spec import RunSpec
from distinv.bench.training_report import format_training_summary, summarise_training


def select(runs: list[RunSpec], only: list[str] | None) -> list[RunSpec]:
    """Runs whose key contains every word of ``only`` (e.g. ``["radio", "distinv"]``)."""
    return [r for r in runs if not only or all(word in r.key for word in only)]


def run_config(
    config: Config,
    only: list[str] | None = None,
    redo: bool = False,
    dry_run: bool = False,
    slurm: bool = False,
    srun: bool = False,
    out: Callable[[str], None] = print,
    live: bool | None = None,
) -> int:
    """Run (or plan, or submit) the config's grid; returns the exit status: 0 if every run finished, 1 if some
    failed. ``live``: redraw one progress line in place (default: when stdout is a terminal)."""
    output = config.output
    runs = select(config.runs(), only)
    remove_stale_temporaries(output)
    remove_stale_progress(output)
    done = set() if redo else finished_runs(output)
    todo = [r for r in runs if r.key not in done]
    out(f"{config.raw['name']}: {len(runs)} runs, {len(runs) - len(todo)} already in {output}, {len(todo)} to do")
    if dry_run:
        for spec in runs:
            out(f"  {'done' if spec.key in done else 'todo'}  {spec.key}")
        return 0
    if slurm:
        return _submit_all(todo, config, out)
    live = sys.stdout.isatty() if live is None else live
    failed = []
    for number, spec in enumerate(todo, 1):
        label = f"[{number}/{len(todo)}] {spec.key}"
        if srun:
            outcome = _run_srun(spec, config)
        else:
            launch = lambda s=spec: launch_local(s, output, config.hash)  # noqa: E731
            outcome = _with_progress(launch, spec, output, label, out, live)
        if outcome.ok:
            out(f"{label}: done in {outcome.seconds:.1f} s")
            continue
        failed.append(outcome)
        record_failure(output, spec, outcome, config.hash, out)
        where = f"on rank {outcome.failed_rank}" if outcome.failed_rank is not None else "to launch"
        out(
            f"{label}: FAILED {where} after {outcome.seconds:.1f} s: "
            f"{last_line(outcome.error, 'no message')} (logs: {outcome.log_dir})"
        )
    summary = summarise(output)
    trained = summarise_training(read_rows(output))
    if summary or trained:
        from distinv.bench.report import write_report

        out("")
        if summary:
            out(format_summary(summary))
        if trained:
            out(format_training_summary(trained))
        out(f"report: {write_report(output)}")
    if failed:
        out(f"{len(failed)} run(s) failed: " + ", ".join(f.key for f in failed))
    return 1 if failed else 0


def _submit_all(todo: list[RunSpec], config: Config, out: Callable[[str], None]) -> int:
    """Submit every run as a SLURM job; one that cannot be submitted is recorded as failed. Returns the exit
    status."""
    failures = 0
    for spec in todo:
        started = time.perf_counter()
        try:
            job = submit_slurm(spec, config.raw["slurm"], config.output, config.hash)
        except Exception as exc:  # any submission error fails this run only
            failures += 1
            error = traceback.format_exc()
            outcome = RunOutcome(spec.key, False, time.perf_counter() - started, config.output / "slurm", None, error)
            record_failure(config.output, spec, outcome, config.hash, out)
            out(f"  could not submit {spec.key}: {type(exc).__name__}: {exc}")
            continue
        out(f"  submitted {spec.key}: SLURM job {job.job_id}")
    out(f"results will be appended to {config.output}/results.parquet as jobs finish")
    return 1 if failures else 0


def record_failure(
    output: Path, spec: RunSpec, outcome: RunOutcome, config_hash: str, out: Callable[[str], None]
) -> None:
    """Write the run's failure row; if even that cannot be written, a bare one (key, status, both errors); if
    nothing can be written, say so and go on with the next run."""
    try:
        append_rows(output, [failure_row(spec, outcome, config_hash)])
        return
    except Exception:  # the run failed already; its record must not stop the others
        reason = traceback.format_exc()
    bare = {"run_key": spec.key, "group": spec.group, "status": "failed", "problem": spec.problem}
    bare |= {"engine": spec.engine, "world_size": spec.world_size, "size": spec.size}
    bare["error"] = f"{outcome.error}\n\nits failure row could not be written either:\n{reason}"
    try:
        append_rows(output, [bare])
    except Exception as exc:
        out(f"  {spec.key}: could not record the failure in {output}: {type(exc).__name__}: {exc}")


def failure_row(spec: RunSpec, outcome: RunOutcome, config_hash: str) -> dict:
    """The table's record of a failed run (so reports show it, and a resumed run retries it)."""
    return run_row(
        spec,
        config_hash,
        "failed",
        error=outcome.error,
        failed_rank=outcome.failed_rank,
        log_dir=str(outcome.log_dir),
        started=time.time() - outcome.seconds,
    )


def _with_progress(
    launch: Callable[[], RunOutcome],
    spec: RunSpec,
    output: Path,
    label: str,
    out: Callable[[str], None],
    live: bool,
) -> RunOutcome:
    """Run ``launch`` in a thread while showing the iteration and PSNR rank 0 reports in its progress file."""
    progress = progress_path(output, spec.key)
    progress.unlink(missing_ok=True)
    result: list[RunOutcome] = []

    def target() -> None:
        try:
            result.append(launch())
        except BaseException:  # reported as the run's failure, never lost with the thread
            error = traceback.format_exc()
            result.append(RunOutcome(spec.key, False, 0.0, Path(output) / "logs" / spec.key, None, error))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    shown = None
    while thread.is_alive():
        thread.join(0.5)
        try:
            state = json.loads(progress.read_text())
        except (OSError, ValueError):
            continue
        if spec.training is not None:
            line = f"{label}: step {state['iteration']}/{spec.training.steps}"
        else:
            line = f"{label}: iteration {state['iteration']}/{spec.solver.iterations}"
        line += f", PSNR {state['psnr']:.2f} dB" if state.get("psnr") is not None else ""
        if line != shown:
            if live:
                sys.stdout.write("\r\033[K" + line)
                sys.stdout.flush()
            else:
                out(line)
            shown = line
    if live and shown:
        sys.stdout.write("\r\033[K")
    progress.unlink(missing_ok=True)
    return result[0]


def _run_srun(spec: RunSpec, config: Config) -> RunOutcome:
    log_dir = config.output / "logs" / spec.key
    log_dir.mkdir(parents=True, exist_ok=True)
    command = srun_command(spec, config.output, config.hash, config.raw["slurm"].get("tasks_per_node"))
    started = time.perf_counter()
    try:
        with open(log_dir / "srun.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    except OSError as exc:  # srun missing or not executable
        return RunOutcome(spec.key, False, time.perf_counter() - started, log_dir, None, f"{command[0]}: {exc}")
    seconds = time.perf_counter() - started
    if code == 0:
        return RunOutcome(spec.key, True, seconds, log_dir)
    tail = (log_dir / "srun.log").read_text()[-4000:]
    return RunOutcome(spec.key, False, seconds, log_dir, None, tail or f"srun exit code {code}")
