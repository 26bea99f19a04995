"""R1: a rank raising mid-run (PnP iteration 3 of 5, 2 ranks) under ``distinv run``: seconds from the raise to
the failure row in the results table, the row's rank and cause, and whether the config's next run finishes.
"""

from __future__ import annotations

import json
import os
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
    runner_config,
    tiny_network,
    tomography,
    validated,
    verdict,
    write_config,
)

WHAT = "a rank raising at PnP iteration 3 of 5 (2 ranks) under distinv run"
INJECTED = "injected failure at PnP iteration 3"
R1_LIMIT_S = 30.0


def fails_at_iteration_3(channels: int):
    """The small network, but rank 1 raises when asked for a third noise level (PnP iteration 3 of a
    decreasing schedule); the time of the raise goes to ``$RELIABILITY_MARK``. In a config:
    ``python:reliability:fails_at_iteration_3`` (``reliability.py`` re-exports it)."""
    import torch

    net = tiny_network(channels)
    levels: list[float] = []

    class FailsAtIteration3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, sigma=None):
            level = float(sigma) if sigma is not None and torch.as_tensor(sigma).numel() == 1 else None
            if level is not None and level not in levels:
                levels.append(level)
            if os.environ.get("RANK") == "1" and len(levels) >= 3:
                mark = os.environ.get("RELIABILITY_MARK")
                if mark:
                    Path(mark).write_text(json.dumps({"time": time.time(), "rank": 1}))
                raise RuntimeError(INJECTED)
            return self.net(x, sigma)

    return FailsAtIteration3()


def part_r1(tiny: bool, work: Path) -> dict:
    """A rank raising at PnP iteration 3 of 5 (2 ranks), then a run that must still finish."""
    output, mark = work / "results", work / "raised.json"
    raw = runner_config(
        output, [tomography(32, "fails_at_iteration_3"), tomography(48, "tiny_network")], ["distinv"], [2], 5
    )
    config = write_config(work / "r1.yml", raw)
    log = work / "r1.log"
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            distinv_run(config),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(RELIABILITY_MARK=str(mark)),
            cwd=REPO,
            start_new_session=True,
        )
        recorded_at, deadline = None, started + (50 if tiny else 150)
        while proc.poll() is None and time.time() < deadline:
            rows, _ = read_table(output)
            if recorded_at is None and rows and any(r.get("status") == "failed" for r in rows):
                recorded_at = time.time()
            time.sleep(0.1)
        timed_out = proc.poll() is None
        kill_group(proc)
    rows, unreadable = read_table(output)
    rows = rows or []
    failed_rows = [r for r in rows if r.get("status") == "failed"]
    if recorded_at is None and failed_rows:  # written between the last poll and the exit
        recorded_at = (output / "results.parquet").stat().st_mtime
    raised_at = json.loads(mark.read_text())["time"] if mark.exists() else None
    lines = log.read_text().splitlines()
    row = failed_rows[0] if failed_rows else {}
    error = row.get("error") or ""
    delay = recorded_at - raised_at if recorded_at is not None and raised_at is not None else None
    fine_key = [s.key for s in validated(raw).runs() if s.size == 48][0]
    result = {
        "seconds_raise_to_record": delay,
        "limit_s": R1_LIMIT_S,
        "raised": raised_at is not None,
        "failure_row": {
            "failed_rank": row.get("failed_rank"),
            "error_last_line": _last_line(error),
            "names_cause": INJECTED in error,
            "log_dir_exists": bool(row.get("log_dir")) and Path(row["log_dir"]).is_dir(),
        },
        "runner_line": next((line for line in lines if "FAILED" in line), None),
        "summary_line": _summary_failure_line(output),
        "next_run_finished": fine_key in finished(rows),
        "exit_code": None if timed_out else proc.returncode,
        "timed_out": timed_out,
        "table_unreadable": unreadable,
        "seconds_total": time.time() - started,
    }
    misses = []
    if delay is None or delay > R1_LIMIT_S:
        misses.append(f"failure not recorded within {R1_LIMIT_S:.0f} s of the raise (delay {delay})")
    if row.get("failed_rank") != 1:
        misses.append(f"the failure row names rank {row.get('failed_rank')!r}, not the raising rank 1")
    if INJECTED not in error:
        misses.append("the failure row's error does not hold the cause")
    if not result["next_run_finished"]:
        misses.append("the config's next run did not finish")
    return verdict(result, misses)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _summary_failure_line(output: Path) -> str | None:
    """The FAILED line ``distinv results`` prints for the failed run."""
    try:
        from distinv.bench.results import format_summary, summarise

        return next((line for line in format_summary(summarise(output)).splitlines() if "FAILED" in line), None)
    except Exception as exc:  # noqa: BLE001
        return f"could not summarise: {type(exc).__name__}: {exc}"


def headline(r: dict) -> str:
    """One line of what R1 measured."""
    row = r["failure_row"]
    delay = "not recorded" if r["seconds_raise_to_record"] is None else f"{r['seconds_raise_to_record']:.1f} s"
    return (
        f"raise -> failure row: {delay} (limit {r['limit_s']:.0f} s); row: failed_rank={row['failed_rank']}, "
        f"{row['error_last_line'][:70]!r}; next run finished: {r['next_run_finished']}"
    )
