"""R2: ``distinv run`` killed with SIGKILL (its whole process group) at random moments, half of them while a
run's rows are being written: is the table readable, is any finished run lost, does a resume launch only the
missing runs, are temporary files left after the next run.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
from pathlib import Path

from .common import (
    REPO,
    child_env,
    distinv_run,
    finished,
    group_pids,
    kill_group,
    read_table,
    run_command,
    runner_config,
    tomography,
    validated,
    verdict,
    write_config,
)

WHAT = "distinv run SIGKILLed at random moments, then resumed"


def part_r2(tiny: bool, work: Path, trials: int | None = None, seed: int = 0) -> dict:
    """``distinv run`` SIGKILLed at random moments (every other trial while a run's rows are written)."""
    rng = random.Random(seed)
    sizes = [32, 40] if tiny else [32, 40, 48]
    trials = trials or (2 if tiny else 20)
    raw = runner_config(work / "unused", [tomography(s, "tiny_network") for s in sizes], ["none"], [1], 2)
    all_keys = {s.key for s in validated(raw).runs()}
    rows_per_run = raw["solver"]["iterations"]
    estimate = 4.0 * len(sizes) + 4.0
    calibration = None
    if not tiny:
        output = work / "calibration"
        config = write_config(work / "calibration.yml", {**raw, "output": str(output)})
        done = run_command(distinv_run(config), 300, child_env(), work / "calibration.log")
        calibration = {"seconds": done.seconds, "exit_code": done.code}
        estimate = done.seconds
    results = []
    for trial in range(trials):
        output = work / f"trial{trial}"
        config = write_config(work / f"trial{trial}.yml", {**raw, "output": str(output)})
        mode = "during a write" if trial % 2 == 0 else "random moment"
        results.append(_kill_trial(config, output, mode, rng, estimate, all_keys, rows_per_run, work / f"t{trial}"))
    summary = {
        "trials": trials,
        "runs_per_config": len(all_keys),
        "readable": sum(t["readable"] for t in results),
        "finished_runs_lost": sum(t["lost"] for t in results),
        "incomplete_finished_runs": sum(t["incomplete_runs"] for t in results),
        "resume_launched_only_missing": sum(t["resume_only_missing"] for t in results),
        "resume_finished_all": sum(t["resume_finished_all"] for t in results),
        "temporaries_left_after_next_run": sum(bool(t["temporaries_after_resume"]) for t in results),
        "kills_during_a_write": sum(t["killed_during_write"] for t in results),
        "kills_while_running": sum(not t["exited_before_kill"] for t in results),
        "finished_runs_at_kill": [len(t["finished_after_kill"]) for t in results],
        "calibration": calibration,
        "trial_details": results,
    }
    misses = []
    if summary["readable"] < trials:
        misses.append(f"table unreadable after {trials - summary['readable']} of {trials} kills")
    if summary["finished_runs_lost"]:
        misses.append(f"{summary['finished_runs_lost']} finished run(s) lost")
    if summary["incomplete_finished_runs"]:
        misses.append(f"{summary['incomplete_finished_runs']} finished run(s) with missing rows")
    if summary["resume_launched_only_missing"] < trials:
        misses.append(
            f"a resume launched other runs than the missing ones in "
            f"{trials - summary['resume_launched_only_missing']} trial(s)"
        )
    if summary["resume_finished_all"] < trials:
        misses.append(f"a resume left runs unfinished in {trials - summary['resume_finished_all']} trial(s)")
    if summary["temporaries_left_after_next_run"]:
        misses.append(
            f"temporary files left after the next run in {summary['temporaries_left_after_next_run']} trial(s)"
        )
    return verdict(summary, misses)


def _kill_trial(
    config: Path,
    output: Path,
    mode: str,
    rng: random.Random,
    estimate: float,
    all_keys: set[str],
    rows_per_run: int,
    logs: Path,
) -> dict:
    """One kill, then the checks on the table, then a resume to the end and the checks again.

    ``mode``: ``"during a write"`` kills within a few milliseconds of the appearance of the table's temporary
    file for a randomly chosen run; ``"random moment"`` at a uniform time over the config's expected duration.
    What must survive is every run the table showed finished before the kill (read every 0.3 s while waiting)
    and every run the runner reported done."""
    logs.mkdir(parents=True, exist_ok=True)
    target_write = rng.randrange(len(all_keys))
    when = rng.uniform(0.5, 0.8 * estimate)  # the runs end about 0.8 of the way: the rest is the summary
    known: set[str] = set()
    with open(logs / "killed.log", "w") as out:
        proc = subprocess.Popen(
            distinv_run(config), stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO, start_new_session=True
        )
        started = last_read = time.perf_counter()
        seen: set[str] = set()
        while proc.poll() is None and time.perf_counter() - started < estimate * 4 + 60:
            now = {n for n in _names(output) if n.startswith(".results.parquet.") and n.endswith(".tmp")}
            seen |= now
            if mode == "during a write" and now and len(seen) > target_write:
                time.sleep(rng.uniform(0, 0.001))
                break
            if mode != "during a write" and time.perf_counter() - started >= when:
                break
            if not now and time.perf_counter() - last_read > 0.3:
                rows, _ = read_table(output)
                known |= finished(rows or [])
                last_read = time.perf_counter()
            time.sleep(0.001 if mode == "during a write" else 0.01)
        exited_before_kill = proc.poll() is not None
        kill_seconds = time.perf_counter() - started
        kill_group(proc)
        strays = group_pids(proc.pid)
    torn_write = [n for n in _names(output) if n.startswith(".results.parquet.") and n.endswith(".tmp")]
    done_lines = re.findall(r"\] (\S+): done in", (logs / "killed.log").read_text())
    rows, unreadable = read_table(output)
    after = finished(rows) if rows is not None else set()
    must_keep = known | set(done_lines)
    left_at_kill = temporaries(output)
    resume = run_command(distinv_run(config), 300, child_env(), logs / "resume.log")
    text = resume.output
    first = re.search(r"(\d+) runs, (\d+) already in .*, (\d+) to do", text)
    launched = set(re.findall(r"\] (\S+): done in", text)) | set(re.findall(r"\] (\S+): FAILED", text))
    final_rows, final_unreadable = read_table(output)
    final = finished(final_rows or [])
    counts = {k: sum(r["run_key"] == k and r["status"] == "ok" for r in final_rows or []) for k in final}
    missing = all_keys - after
    return {
        "mode": mode,
        "kill_after_s": round(kill_seconds, 3),
        "exited_before_kill": exited_before_kill,
        "killed_during_write": bool(torn_write) and not exited_before_kill,
        "processes_left_after_kill": strays,
        "readable": rows is not None,
        "unreadable_error": unreadable,
        "finished_after_kill": sorted(after),
        "lost": len(must_keep - after),
        "temporaries_at_kill": left_at_kill,
        "resume_to_do": int(first.group(3)) if first else None,
        "resume_launched": sorted(launched),
        "resume_only_missing": first is not None and launched == missing and int(first.group(3)) == len(missing),
        "resume_exit_code": resume.code,
        "resume_finished_all": final == all_keys and final_unreadable is None,
        "incomplete_runs": sum(count != rows_per_run for count in counts.values()),
        "temporaries_after_resume": temporaries(output),
    }


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def temporaries(output: Path) -> list[str]:
    """Temporary files anywhere under ``output``."""
    if not output.exists():
        return []
    return sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file() and "tmp" in p.name)


def headline(r: dict) -> str:
    """One line of what R2 measured."""
    n = r["trials"]
    return (
        f"readable {r['readable']}/{n}, finished runs lost {r['finished_runs_lost']}, resume only missing "
        f"{r['resume_launched_only_missing']}/{n}, temporaries after next run "
        f"{r['temporaries_left_after_next_run']}/{n}, killed while running {r['kills_while_running']}/{n} "
        f"(during a write {r['kills_during_a_write']})"
    )
