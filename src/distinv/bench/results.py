"""The results table: ``DIR/results.parquet``, one row per (run, rank, iteration), plus one row per failed run.

Rows of a finished run are appended in one step: read, append, write a temporary file, rename over the table,
under a lock file, so a crash (or a second writer, e.g. SLURM jobs) never leaves a half-written table and earlier
runs are never lost. A run counts as done once it has rows with ``status == "ok"``.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TABLE = "results.parquet"


def table_path(directory: str | Path, table: str = TABLE) -> Path:
    return Path(directory) / table


@contextmanager
def _locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_rows(directory: str | Path, table: str = TABLE) -> list[dict]:
    path = table_path(directory, table)
    return pq.read_table(path).to_pylist() if path.exists() else []


def append_rows(directory: str | Path, rows: Iterable[dict], table: str = TABLE) -> Path:
    """Add rows to the table atomically (columns may differ between rows: missing ones are null); ``table``:
    the file in ``directory`` (the insight studies keep theirs apart)."""
    directory = Path(directory)
    rows = [_flat(r) for r in rows]
    with _locked(directory):
        everything = read_rows(directory, table) + rows
        columns = list(dict.fromkeys(k for r in everything for k in r))
        data = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in everything])
        path = table_path(directory, table)
        tmp = path.with_name(f".{table}.{os.getpid()}.tmp")
        pq.write_table(data, tmp)
        os.replace(tmp, path)
    return path


def _flat(row: dict) -> dict:
    """Nested values (solver settings, sizes) as JSON strings: one type per column whatever the run."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list | tuple) else v for k, v in row.items()}


def finished_runs(directory: str | Path) -> set[str]:
    return {r["run_key"] for r in read_rows(directory) if r.get("status") == "ok"}


def summarise(directory: str | Path) -> list[dict]:
    """Per run: world size, final PSNR, median seconds per iteration by component (the first iteration, a
    warm-up, left out when there are more) and speedup and parallel efficiency against its baseline
    (:func:`baseline_of`; S = T_baseline / T_N, E = S N_baseline / N)."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for row in read_rows(directory):
        runs[row["run_key"]].append(row)
    summary = []
    for rows in runs.values():
        rows = [r for r in rows if r.get("status") == "ok"] or rows[-1:]  # a rerun's rows replace its failure
        first = rows[0]
        entry = {k: first.get(k) for k in ("run_key", "group", "problem", "size", "engine", "world_size", "repetition")}
        entry["status"] = first.get("status")
        if first.get("status") != "ok":
            entry["error"] = first.get("error")
            summary.append(entry)
            continue
        iterations = sorted({r["iteration"] for r in rows})
        timed = iterations[1:] if len(iterations) > 1 else iterations
        for component in ("total_s", "data_s", "denoiser_s", "comm_s", "data_comm_s", "denoiser_comm_s"):
            # an iteration lasts as long as its slowest rank
            per_iteration = [max(r.get(component) or 0.0 for r in rows if r["iteration"] == i) for i in timed]
            entry[component] = statistics.median(per_iteration)
        last = [r for r in rows if r["iteration"] == iterations[-1] and r.get("psnr") is not None]
        entry["psnr"] = last[0]["psnr"] if last else None
        entry["init_psnr"] = first.get("init_psnr")
        entry["iterations"] = len(iterations)
        peaks = [max(r.get("data_peak_bytes") or 0, r.get("denoiser_peak_bytes") or 0) for r in rows]
        entry["peak_bytes"] = max(peaks) if peaks else None
        summary.append(entry)
    for e in summary:
        base, label = baseline_of(e, summary)
        if e["status"] != "ok" or not base:
            continue
        e["baseline"] = label
        scale = base[0]["world_size"]
        for component in ("total_s", "denoiser_s", "data_s"):
            reference = statistics.median(b[component] for b in base)
            speedup = reference / e[component] if e[component] > 0 else None
            e[f"speedup_{component[:-2]}"] = speedup
            e[f"efficiency_{component[:-2]}"] = speedup * scale / e["world_size"] if speedup else None
    return summary


def baseline_of(entry: dict, summary: list[dict]) -> tuple[list[dict], str]:
    """The runs an entry's speedup is measured against: the untiled single-device runs (engine ``none``) of its
    group, else (when the problem does not fit one device) distinv's runs at the smallest world size."""
    group = [e for e in summary if e["group"] == entry["group"] and e["status"] == "ok"]
    untiled = [e for e in group if e["engine"] == "none"]
    if untiled:
        return untiled, "untiled single device"
    ours = [e for e in group if e["engine"] == "distinv"]
    if not ours:
        return [], ""
    smallest = min(e["world_size"] for e in ours)
    return [e for e in ours if e["world_size"] == smallest], f"distinv at {smallest} device(s)"


def format_summary(summary: list[dict]) -> str:
    """A plain-text table, one line per run, grouped by problem and size."""
    head = (
        f"{'problem':<14} {'size':>7} {'engine':<8} {'ranks':>5} {'PSNR':>6} {'it/s':>6} {'total':>7} {'grad':>7} "
        f"{'denoise':>7} {'comm':>6} {'speedup':>7} {'denoiser':>8} {'eff.':>5}"
    )
    lines = [head, "-" * len(head)]
    order = {"none": 0, "distinv": 1, "deepinv": 2}
    for e in sorted(summary, key=lambda e: (e["problem"], str(e["size"]), order.get(e["engine"], 3), e["world_size"])):
        if e["status"] != "ok":
            lines.append(
                f"{e['problem']:<14} {e['size']!s:>7} {e['engine']:<8} {e['world_size']:>5} FAILED: "
                + last_line(e.get("error"))
            )
            continue
        psnr = f"{e['psnr']:6.2f}" if e.get("psnr") is not None else "   n/a"

        eff = f"{e['efficiency_total']:.0%}" if e.get("efficiency_total") else "n/a"
        lines.append(
            f"{e['problem']:<14} {e['size']!s:>7} {e['engine']:<8} {e['world_size']:>5} {psnr} "
            f"{1 / e['total_s']:6.2f} {e['total_s']:6.2f}s {e['data_s']:6.2f}s {e['denoiser_s']:6.2f}s "
            f"{e['comm_s']:5.2f}s {_ratio(e, 'speedup_total'):>7} {_ratio(e, 'speedup_denoiser'):>8} {eff:>5}"
        )
    lines.append("times: median seconds per iteration (slowest rank, first iteration left out); speedups against")
    bases = sorted({e["baseline"] for e in summary if e.get("baseline")})
    lines.append(f"the same problem and size run by: {' / '.join(bases) or 'no baseline in the table'}.")
    return "\n".join(lines)


def last_line(error: str | None, default: str = "") -> str:
    """The last line of an error's traceback (the exception and its message)."""
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else default


def _ratio(entry: dict, name: str) -> str:
    return f"{entry[name]:.2f}x" if entry.get(name) else "n/a"
