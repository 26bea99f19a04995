"""``distinv run``: the grid of a config, one run after the other, skipping those already in the table.

Locally each run gets its own ranks (``torch.distributed.run``'s API); a run that fails, or cannot even be
launched, is recorded as failed (rank, exception, log folder) and the next one starts. With ``slurm`` every run
is submitted as a job; with ``srun`` each becomes a job step of the current allocation. A rerun (``redo``) that
finishes replaces the run's rows in the table; one that fails keeps them.

One runner at a time per results folder: a runner that has runs to do holds the folder's lock
(:func:`runner_lock`, an OS lock on ``.runner.lock``: a killed runner releases it) and a second one is refused
before it touches anything. Listing the runs (``dry_run``) and a run with nothing left to do only read the folder:
they work on one that cannot be written, or while another runner holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from distinv.bench.config import Config
from distinv.bench.launch import RunOutcome, launch_local, srun_command, submit_slurm
from distinv.bench.progress import progress_path, remove_stale_progress
from distinv.bench.results import (
    append_failure,
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

RUNNER_LOCK = ".runner.lock"


class OutputFolderError(RuntimeError):
    """The results folder cannot be used by this runner (the message names it and what to do)."""


class FolderInUseError(OutputFolderError):
    """Another runner holds the results folder's lock; ``holder``: who, e.g. ``"pid 123 on host"`` (empty while
    it has not written itself into the lock file yet)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class FolderNotWritableError(OutputFolderError):
    """The results folder (or its lock file) cannot be written."""


@contextmanager
def runner_lock(output: str | Path) -> Iterator[None]:
    """Hold the results folder's runner lock (created with the folder if need be) while the block runs; the lock
    file records this process's pid and host for whoever is refused. A lock file left by a runner that died is
    taken over: the OS released its lock with it.

    :raises FolderInUseError: another runner holds it.
    :raises FolderNotWritableError: the folder or its lock file cannot be written.
    """
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        if not os.access(output, os.W_OK):
            raise PermissionError(13, "Permission denied", str(output))
        fd = os.open(output / RUNNER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise FolderNotWritableError(
            f"cannot write in the results folder {output} ({exc.strerror or exc}): give a folder you can write "
            "with --output (or make this one writable); --dry-run and `distinv results` only read it."
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise FolderInUseError(
                f"another runner{f' ({holder})' if holder else ''} is using the results folder {output}: wait for "
                "it to finish (or stop it), or give this run another folder with --output.",
                holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """``pid N on HOST`` from a lock file, or nothing while its holder has not written it yet."""
    words = os.pread(fd, 300, 0).decode(errors="replace").split()
    if not words:
        return ""
    return f"pid {words[0]}" + (f" on {words[1]}" if len(words) > 1 else "")


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
    wait: bool = False,
) -> int:
    """Run (or plan, or submit) the config's grid; returns the exit status: 0 if every run finished, 1 if some
    failed. ``live``: redraw one progress line in place (default: when stdout is a terminal). ``wait``: with
    ``slurm``, wait for the submitted jobs and print the summary (the exit status then says whether they finished).

    :raises FolderInUseError: there are runs to do and another runner holds the results folder.
    :raises FolderNotWritableError: there are runs to do and the results folder cannot be written.
    :raises KeyboardInterrupt: on Ctrl-C, once the ranks of the run under way are stopped (finished runs stay
        in the table).
    """
    output = config.output
    runs = select(config.runs(), only)
    if dry_run or not _todo(runs, output, redo):
        return _look(config, runs, redo, dry_run, out)
    with runner_lock(output):
        remove_stale_temporaries(output)
        remove_stale_progress(output)
        todo = _todo(runs, output, redo)  # again: another runner may have finished some before we had the lock
        out(f"{config.raw['name']}: {len(runs)} runs, {len(runs) - len(todo)} already in {output}, {len(todo)} to do")
        if slurm:
            return _submit_all(todo, config, out, wait)
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
            recorded = record_failure(output, spec, outcome, config.hash, out)
            where = f"on rank {outcome.failed_rank}" if outcome.failed_rank is not None else "to launch"
            kept = "" if recorded else "; the table keeps the run's finished rows from before"
            out(
                f"{label}: FAILED {where} after {outcome.seconds:.1f} s: "
                f"{last_line(outcome.error, 'no message')} (logs: {outcome.log_dir}){kept}"
            )
        _summarise(output, out, None)
    if failed:
        out(f"{len(failed)} run(s) failed: " + ", ".join(f.key for f in failed))
    return 1 if failed else 0


def _todo(runs: list[RunSpec], output: Path, redo: bool) -> list[RunSpec]:
    done = set() if redo else finished_runs(output)
    return [r for r in runs if r.key not in done]


def _look(config: Config, runs: list[RunSpec], redo: bool, dry_run: bool, out: Callable[[str], None]) -> int:
    """List the runs (``dry_run``) or, with nothing left to do, print the summary: reading only. The leftovers of
    killed writers are tidied and the report rewritten only where this runner can take the folder's lock; the
    exit status is 0."""
    output = config.output
    with ExitStack() as held:
        busy = None
        if not output.is_dir():
            cannot = "the folder does not exist yet"
        else:
            try:
                held.enter_context(runner_lock(output))
                cannot = None
            except FolderInUseError as exc:
                busy = f"another runner{f' ({exc.holder})' if exc.holder else ''}"
                cannot = f"{busy} is using the folder"
            except FolderNotWritableError:
                cannot = "the folder cannot be written"
        if cannot is None:
            remove_stale_temporaries(output)
            remove_stale_progress(output)
        done = set() if redo else finished_runs(output)
        todo = [r for r in runs if r.key not in done]
        out(f"{config.raw['name']}: {len(runs)} runs, {len(runs) - len(todo)} already in {output}, {len(todo)} to do")
        if dry_run:
            for spec in runs:
                out(f"  {'done' if spec.key in done else 'todo'}  {spec.key}")
            if busy:
                out(f"  note: {busy} is running in {output}; the run it is on shows as todo")
            return 0
        _summarise(output, out, cannot)
    return 0


def _summarise(output: Path, out: Callable[[str], None], no_report: str | None) -> None:
    """Print the table's summaries and write the report, unless ``no_report`` says why it cannot be written."""
    summary = summarise(output)
    trained = summarise_training(read_rows(output))
    if not (summary or trained):
        return
    out("")
    if summary:
        out(format_summary(summary))
    if trained:
        out(format_training_summary(trained))
    if no_report is None:
        from distinv.bench.report import write_report

        out(f"report: {write_report(output)}")
    else:
        out(f"report: not rewritten ({no_report}): {output / 'report.html'}")


def _submit_all(todo: list[RunSpec], config: Config, out: Callable[[str], None], wait: bool = False) -> int:
    """Submit every run as a SLURM job; one that cannot be submitted is recorded as failed. With ``wait``, wait for
    the jobs (:func:`_wait_for_jobs`) and print the summary. Returns the exit status."""
    failures, submitted = 0, []
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
        submitted.append((spec, job))
    if not wait:
        out(f"results will be appended to {config.output}/results.parquet as jobs finish")
        return 1 if failures else 0
    failures += _wait_for_jobs(submitted, config, out)
    _summarise(config.output, out, None)
    if failures:
        out(f"{failures} run(s) failed")
    return 1 if failures else 0


def _wait_for_jobs(submitted: list, config: Config, out: Callable[[str], None], poll_s: float = 2.0) -> int:
    """Wait for each submitted ``(spec, job)``: a job that ends without its run's rows in the table (it raised, was
    killed, or ran past the config's ``slurm.time_min`` plus 5 minutes of queueing, then cancelled) is recorded as
    failed with SLURM's or the job's own error. Returns the number of failed runs."""
    deadline = time.monotonic() + 60 * (config.raw["slurm"]["time_min"] + 5) * max(1, len(submitted))
    # without SLURM accounting sacct fails, and submitit warns at each poll; a job's end is its result file
    submitit_log = logging.getLogger("submitit")
    level, submitit_log.level = submitit_log.level, logging.ERROR
    try:
        return sum(_wait_for_job(spec, job, config, out, deadline, poll_s) for spec, job in submitted)
    finally:
        submitit_log.level = level


def _wait_for_job(
    spec: RunSpec, job, config: Config, out: Callable[[str], None], deadline: float, poll_s: float
) -> int:
    """Wait for one job until ``deadline`` (``time.monotonic()``); returns 1 if its run failed (recorded), else 0."""
    started, error = time.perf_counter(), None
    while not job.done() and time.monotonic() < deadline:
        time.sleep(poll_s)
    if not job.done():
        job.cancel(check=False)
        error = f"SLURM job {job.job_id} had not ended by the deadline: cancelled"
    else:
        try:
            job.results()
        except Exception as exc:  # the job's own error (submitit keeps its traceback), or SLURM's state
            error = f"SLURM job {job.job_id}: {type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    if error is None and spec.key in finished_runs(config.output):
        out(f"  {spec.key}: done (SLURM job {job.job_id})")
        return 0
    error = error or f"SLURM job {job.job_id} ended but wrote no finished rows for its run"
    outcome = RunOutcome(spec.key, False, seconds, config.output / "slurm", None, error)
    record_failure(config.output, spec, outcome, config.hash, out)
    out(f"  {spec.key}: FAILED: {last_line(error, 'no message')} (logs: {config.output / 'slurm'})")
    return 1


def record_failure(
    output: Path, spec: RunSpec, outcome: RunOutcome, config_hash: str, out: Callable[[str], None]
) -> bool:
    """Write the run's failure row; if even that cannot be written, a bare one (key, status, both errors); if
    nothing can be written, say so and go on with the next run. Returns ``False`` when the failure was not
    recorded: the table keeps the run's finished rows (a failed rerun), or could not be written."""
    try:
        return append_failure(output, [failure_row(spec, outcome, config_hash)])
    except Exception:  # the run failed already; its record must not stop the others
        reason = traceback.format_exc()
    bare = {"run_key": spec.key, "group": spec.group, "status": "failed", "problem": spec.problem}
    bare |= {"engine": spec.engine, "world_size": spec.world_size, "size": spec.size}
    bare["error"] = f"{outcome.error}\n\nits failure row could not be written either:\n{reason}"
    try:
        return append_failure(output, [bare])
    except Exception as exc:
        out(f"  {spec.key}: could not record the failure in {output}: {type(exc).__name__}: {exc}")
        return False


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
    try:
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
    except KeyboardInterrupt:
        _stop_ranks(launcher=thread)
        raise
    finally:
        if live and shown:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
        progress.unlink(missing_ok=True)
    return result[0]


def _stop_ranks(grace_s: float = 5.0, launcher: threading.Thread | None = None, unwind_s: float = 30.0) -> None:
    """End the ranks of the launch under way (its processes are this process's children): Ctrl-C in a terminal
    reaches them too, an interrupt sent to the runner alone does not. A second Ctrl-C meanwhile is ignored.

    ``launcher``, the thread running the launch, is then given ``unwind_s`` seconds to see its ranks gone and
    return: it hosts the rendezvous store, whose C++ threads abort the interpreter (SIGABRT, "terminate called
    without an active exception") when the process exits with the store still open."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        children = multiprocessing.active_children()
        for child in children:
            child.terminate()
        deadline = time.monotonic() + grace_s
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(1.0)
        if launcher is not None:
            launcher.join(unwind_s)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _run_srun(spec: RunSpec, config: Config) -> RunOutcome:
    log_dir = config.output / "logs" / spec.key
    log_dir.mkdir(parents=True, exist_ok=True)
    command = srun_command(spec, config.output, config.hash, config.raw["slurm"])
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
