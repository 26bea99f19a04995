"""R6: two ``distinv run`` on one output folder. While the first runs, a second is started on the same folder: does
it refuse at once (naming the folder, before touching anything), does the first finish every run, is any finished
run replaced by a failure row; then the first is SIGKILLed mid-way and a second started after it: does it take the
folder over (the killed runner's lock is released with its process) and finish every run.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .common import (
    REPO,
    child_env,
    distinv_run,
    finished,
    kill_group,
    read_table,
    run_command,
    runner_config,
    tomography,
    validated,
    verdict,
    write_config,
)

WHAT = "two distinv run on one output folder: the second refuses; after a kill, it takes over"


def part_r6(tiny: bool, work: Path) -> dict:
    """Concurrent runners: ``trials`` pairs started on one folder, and as many kill-then-take-over trials."""
    sizes = [32, 40] if tiny else [32, 40, 48]
    trials = 1 if tiny else 3
    raw = runner_config(work / "unused", [tomography(s, "tiny_network") for s in sizes], ["none"], [1], 2)
    all_keys = {s.key for s in validated(raw).runs()}
    pairs = [_pair_trial(raw, work / f"pair{t}", all_keys) for t in range(trials)]
    takeovers = [_takeover_trial(raw, work / f"kill{t}", all_keys) for t in range(trials)]
    summary = {
        "trials": trials,
        "runs_per_config": len(all_keys),
        "second_refused": sum(p["second_refused"] for p in pairs),
        "second_named_the_folder": sum(p["named_the_folder"] for p in pairs),
        "second_refusal_s": [p["second_seconds"] for p in pairs],
        "first_finished_all": sum(p["first_finished_all"] for p in pairs),
        "failure_rows": sum(p["failure_rows"] for p in pairs),
        "takeover_finished_all": sum(t["finished_all"] for t in takeovers),
        "takeover_refused": sum(t["refused"] for t in takeovers),
        "pair_details": pairs,
        "takeover_details": takeovers,
    }
    misses = []
    if summary["second_refused"] < trials:
        refusals = trials - summary["second_refused"]
        misses.append(f"a second runner on a busy folder did not refuse in {refusals} trial(s)")
    if summary["second_named_the_folder"] < trials:
        misses.append("a refusal did not name the folder")
    if summary["first_finished_all"] < trials:
        misses.append(f"the first runner left runs unfinished in {trials - summary['first_finished_all']} trial(s)")
    if summary["failure_rows"]:
        misses.append(f"{summary['failure_rows']} failure row(s) in the table")
    if summary["takeover_finished_all"] < trials:
        misses.append(
            f"a runner after a killed one did not finish every run in {trials - summary['takeover_finished_all']} "
            "trial(s)"
        )
    return verdict(summary, misses)


def _start(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            distinv_run(config), stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO, start_new_session=True
        )


def _wait_for_first_run(output: Path, proc: subprocess.Popen, limit: float = 120.0) -> None:
    """Until the runner has started a run (its logs folder exists), or has ended."""
    started = time.perf_counter()
    while proc.poll() is None and not (output / "logs").exists() and time.perf_counter() - started < limit:
        time.sleep(0.05)


def _pair_trial(raw: dict, folder: Path, all_keys: set[str]) -> dict:
    """A second runner started while the first runs its first run."""
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / "out"
    config = write_config(folder / "config.yml", {**raw, "output": str(output)})
    first = _start(config, folder / "first.log")
    _wait_for_first_run(output, first)
    second = run_command(distinv_run(config), 120, child_env(), folder / "second.log")
    first_code = first.wait(timeout=600)
    kill_group(first)
    rows, unreadable = read_table(output)
    text = second.output
    return {
        "second_exit_code": second.code,
        "second_seconds": round(second.seconds, 2),
        "second_refused": second.code not in (0, None) and "done in" not in text,
        "named_the_folder": str(output) in text or output.name in text,
        "second_last_line": text.strip().splitlines()[-1] if text.strip() else "",
        "first_exit_code": first_code,
        "first_finished_all": finished(rows or []) == all_keys and unreadable is None,
        "failure_rows": sum(r.get("status") != "ok" for r in rows or []),
    }


def _takeover_trial(raw: dict, folder: Path, all_keys: set[str]) -> dict:
    """The first runner SIGKILLed during its first run; a second started on the folder right after."""
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / "out"
    config = write_config(folder / "config.yml", {**raw, "output": str(output)})
    first = _start(config, folder / "first.log")
    _wait_for_first_run(output, first)
    kill_group(first)
    second = run_command(distinv_run(config), 300, child_env(), folder / "second.log")
    rows, unreadable = read_table(output)
    return {
        "second_exit_code": second.code,
        "refused": "another" in second.output.lower() and second.code not in (0, None),
        "finished_all": finished(rows or []) == all_keys and unreadable is None and second.code == 0,
    }


def headline(r: dict) -> str:
    """One line of what R6 measured."""
    n = r["trials"]
    return (
        f"second runner refused {r['second_refused']}/{n} (in {r['second_refusal_s']} s), first finished all "
        f"{r['first_finished_all']}/{n}, failure rows {r['failure_rows']}, after a kill the next finished all "
        f"{r['takeover_finished_all']}/{n}"
    )
