"""The results table: ``DIR/results.parquet``, one row per (run, rank, iteration), plus one row per failed run.

Rows of a run are written in one step: read, drop the run's earlier rows (a rerun replaces its run), append,
write a temporary file in the same folder, rename it over the table, all under a lock file, so a crash (or a
second writer, e.g. SLURM jobs) never leaves a half-written table and finished runs are never lost; temporary
files a killed writer left behind are removed by the next writer. A run counts as done once it has rows with
``status == "ok"``; a failed attempt (:func:`append_failure`) never replaces them. Reading takes no lock (the
table is only ever renamed into place): a folder one cannot write can still be read.

Every column has one type whatever the runs: nested values (solver settings, parameters) and sizes (``64`` or
``[64, 96]``) are JSON text, and a column whose values still mix types is stored as text.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TABLE = "results.parquet"
JSON_COLUMNS = ("size",)  # a number or a list depending on the run: always JSON text
RUN_KEY = "run_key"


def run_row(spec: Any, config_hash: str, status: str, **fields: Any) -> dict:
    """The columns every row of a run has (its key, comparison group, config hash, status and settings), then
    ``fields`` (per-iteration measurements of a finished run, or the error of a failed one): the table's one
    schema, for the ranks' rows and the runner's failure rows alike."""
    plain = asdict(spec)  # the sections as dicts (stored as JSON text)
    settings = {k: v for k, v in plain.items() if k not in ("tiling", "solver", "denoiser", "params", "training")}
    return {
        RUN_KEY: spec.key,
        "group": spec.group,
        "config_hash": config_hash,
        "kind": spec.kind,
        "status": status,
        **settings,
        "params": spec.params,
        "solver": plain["solver"],
        "denoiser_model": spec.denoiser.model,
        "tiling": plain["tiling"],
        "training": plain["training"],
        **fields,
    }


def table_path(directory: str | Path, table: str = TABLE) -> Path:
    """Where ``table`` lives in ``directory``."""
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
    """Every row of the table (an empty list when there is none yet)."""
    path = table_path(directory, table)
    return pq.read_table(path).to_pylist() if path.exists() else []


def append_rows(
    directory: str | Path, rows: Iterable[dict], table: str = TABLE, replace_on: str | None = RUN_KEY
) -> Path:
    """Add rows to the table atomically and return its path (columns may differ between rows: missing ones
    are null). ``replace_on``: earlier rows with the same value in this column as a new row are removed in
    the same write (a rerun replaces its run); ``None`` keeps everything. ``table``: the file in
    ``directory`` (the insight studies keep theirs apart). Raises ``OSError`` when the folder cannot be
    written."""
    _append(Path(directory), [_flat(r) for r in rows], table, replace_on, keep_finished=False)
    return table_path(directory, table)


def append_failure(directory: str | Path, rows: Iterable[dict]) -> bool:
    """Record the failure rows of runs atomically, unless a run already has finished rows: those are kept
    (a failed rerun, or a failure recorded while another attempt finished, never replaces a finished run), and
    that run's failure rows are dropped. Returns whether every row was written (``False``: some run kept its
    finished rows). Raises ``OSError`` when the folder cannot be written."""
    rows = [_flat(r) for r in rows]
    return _append(Path(directory), rows, TABLE, RUN_KEY, keep_finished=True) == len(rows)


def _append(directory: Path, rows: list[dict], table: str, replace_on: str | None, keep_finished: bool) -> int:
    """Append ``rows`` under the lock (see :func:`append_rows`); returns how many were written."""
    with _locked(directory):
        _remove_temporaries(directory, table)
        existing = read_rows(directory, table)
        if keep_finished:
            finished = {r.get(RUN_KEY) for r in existing if r.get("status") == "ok"}
            rows = [r for r in rows if r.get("status") == "ok" or r.get(RUN_KEY) not in finished]
            if not rows:
                return 0
        replaced = {r.get(replace_on) for r in rows} - {None} if replace_on else set()
        kept = [r for r in existing if r.get(replace_on) not in replaced]
        _write(kept + rows, table_path(directory, table))
    return len(rows)


def remove_stale_temporaries(directory: str | Path, table: str = TABLE) -> None:
    """Delete the temporary files of writers that were killed mid-write (none is in use while we hold the
    lock)."""
    directory = Path(directory)
    if directory.is_dir():
        with _locked(directory):
            _remove_temporaries(directory, table)


def _remove_temporaries(directory: Path, table: str) -> None:
    for stale in directory.glob(f".{table}.*.tmp"):
        stale.unlink(missing_ok=True)


def _write(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    data = pa.Table.from_pylist(_one_type_per_column([{c: r.get(c) for c in columns} for r in rows], columns))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            pq.write_table(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _flat(row: dict) -> dict:
    """Nested values (solver settings, sizes) as JSON strings: one type per column whatever the run."""
    return {k: _json(v) if k in JSON_COLUMNS or isinstance(v, dict | list | tuple) else v for k, v in row.items()}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _one_type_per_column(rows: list[dict], columns: list[str]) -> list[dict]:
    """Rows whose every column holds one kind of value: whole and decimal numbers together as decimals, any
    other mix as text (JSON for non-strings), so that a table can always be written."""
    for column in columns:
        kinds = {_kind(r[column]) for r in rows if r[column] is not None}
        if kinds == {int, float}:
            for r in rows:
                r[column] = None if r[column] is None else float(r[column])
        elif len(kinds) > 1:
            for r in rows:
                value = r[column]
                r[column] = value if value is None or isinstance(value, str) else json.dumps(value, default=str)
    return rows


def _kind(value: Any) -> type:
    return bool if isinstance(value, bool) else int if isinstance(value, int) else type(value)


def finished_runs(directory: str | Path) -> set[str]:
    """The run keys with rows of a finished (``ok``) run."""
    return {r[RUN_KEY] for r in read_rows(directory) if r.get("status") == "ok"}


def quality_text(entry: dict, width: int = 0) -> str:
    """A run's score for a table: its PSNR in dB, else (no ground truth) its data residual ``r=...``, else n/a."""
    if entry.get("psnr") is not None:
        return f"{entry['psnr']:{width}.2f}"
    if entry.get("residual") is not None:
        return f"r={entry['residual']:.1e}".rjust(width)
    return "n/a".rjust(width)


def series_of(row: dict) -> str:
    """The engine as the summary and the report name it: ``distinv`` and ``distinv-sharded`` runs whose denoiser is
    the domain-parallel one (``tiling.parallel: domain``) are ``distinv/domain`` and ``distinv-sharded/domain``."""
    tiling = row.get("tiling")
    if isinstance(tiling, str):
        tiling = json.loads(tiling)
    domain = isinstance(tiling, dict) and tiling.get("parallel") == "domain"
    engine = row["engine"]
    return f"{engine}/domain" if domain and engine in ("distinv", "distinv-sharded") else engine


def engine_of(series: str) -> str:
    """The engine behind a :func:`series_of` name."""
    return series.partition("/")[0]


def summarise(directory: str | Path) -> list[dict]:
    """Per PnP run (training runs: :func:`~distinv.bench.training_report.summarise_training`): its engine as
    :func:`series_of` names it, world size, final
    PSNR, median seconds per iteration by component (the first iteration, a
    warm-up, left out when there are more) and speedup and parallel efficiency against its baseline
    (:func:`baseline_of`; S = T_baseline / T_N, E = S N_baseline / N)."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for row in read_rows(directory):
        if row.get("kind") != "training":  # rows from before the column existed are PnP
            runs[row["run_key"]].append(row)
    summary = []
    for rows in runs.values():
        rows = _latest_attempt(rows)
        first = rows[0]
        entry = {k: first.get(k) for k in ("run_key", "group", "problem", "size", "world_size", "repetition")}
        entry["engine"] = series_of(first)  # the denoiser's distribution shown with the engine
        entry["status"] = first.get("status")
        if first.get("status") != "ok":
            entry["error"] = first.get("error")
            entry["failed_rank"] = first.get("failed_rank")
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
        scored = [r for r in rows if r["iteration"] == iterations[-1] and r.get("measurement_residual") is not None]
        entry["residual"] = scored[0]["measurement_residual"] if scored else None  # runs without a ground truth
        entry["init_psnr"] = first.get("init_psnr")
        entry["iterations"] = len(iterations)
        entry["peak_bytes"] = max(run_memory(r) for r in rows) if rows else None
        if any(r.get("bytes_sent") is not None for r in rows):  # tables from before the counter have none
            entry["bytes_moved"] = statistics.median(
                max((r.get("bytes_sent") or 0) + (r.get("bytes_received") or 0) for r in rows if r["iteration"] == i)
                for i in timed
            )
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


def run_memory(row: dict) -> int:
    """Bytes an iteration's row held at its peak (the larger of the gradient's and the denoiser's), above the
    process's baseline when the row has one (what the run added, not the libraries' resident set)."""
    peak = max(row.get("data_peak_bytes") or 0, row.get("denoiser_peak_bytes") or 0)
    return max(0, peak - (row.get("memory_baseline_bytes") or 0))


def _latest_attempt(rows: list[dict]) -> list[dict]:
    """A run's rows to summarise: its finished rows, else its last failure. Tables written before reruns
    replaced their run may hold several attempts: the last row per (rank, iteration) wins."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return rows[-1:]
    return list({(r.get("rank"), r.get("iteration")): r for r in ok}.values())


def baseline_of(entry: dict, summary: list[dict]) -> tuple[list[dict], str]:
    """The runs an entry's speedup is measured against: the untiled single-device runs (engine ``none``) of its
    group, else (when the problem does not fit one device) distinv's runs at the smallest world size."""
    group = [e for e in summary if e["group"] == entry["group"] and e["status"] == "ok"]
    untiled = [e for e in group if e["engine"] == "none"]
    if untiled:
        return untiled, "untiled single device"
    ours = [e for e in group if engine_of(e["engine"]) == "distinv"]
    if not ours:
        return [], ""
    smallest = min(e["world_size"] for e in ours)
    return [e for e in ours if e["world_size"] == smallest], f"distinv at {smallest} device(s)"


def format_summary(summary: list[dict]) -> str:
    """A plain-text table, one line per run, grouped by problem and size."""
    head = (
        f"{'problem':<14} {'size':>7} {'engine':<22} {'ranks':>5} {'PSNR':>6} {'it/s':>6} {'total':>7} {'grad':>7} "
        f"{'denoise':>7} {'comm':>6} {'speedup':>7} {'denoiser':>8} {'eff.':>5}"
    )
    lines = [head, "-" * len(head)]
    order = {"none": 0, "distinv": 1, "distinv/domain": 2, "distinv-sharded": 3, "distinv-sharded/domain": 4}
    for e in sorted(summary, key=lambda e: (e["problem"], str(e["size"]), order.get(e["engine"], 5), e["world_size"])):
        if e["status"] != "ok":
            lines.append(
                f"{e['problem']:<14} {size_text(e['size']):>7} {e['engine']:<22} {e['world_size']:>5} FAILED"
                + (f" on rank {e['failed_rank']}" if e.get("failed_rank") is not None else "")
                + ": "
                + last_line(e.get("error"))
            )
            continue
        psnr = quality_text(e, 6)

        eff = f"{e['efficiency_total']:.0%}" if e.get("efficiency_total") else "n/a"
        lines.append(
            f"{e['problem']:<14} {size_text(e['size']):>7} {e['engine']:<22} {e['world_size']:>5} {psnr} "
            f"{1 / e['total_s']:6.2f} {e['total_s']:6.2f}s {e['data_s']:6.2f}s {e['denoiser_s']:6.2f}s "
            f"{e['comm_s']:5.2f}s {_ratio(e, 'speedup_total'):>7} {_ratio(e, 'speedup_denoiser'):>8} {eff:>5}"
        )
    lines.append("times: median seconds per iteration (slowest rank, first iteration left out); speedups against")
    bases = sorted({e["baseline"] for e in summary if e.get("baseline")})
    lines.append(f"the same problem and size run by: {' / '.join(bases) or 'no baseline in the table'}.")
    return "\n".join(lines)


def size_text(size: Any) -> str:
    """A size as the table stores it (``"64"``, ``"[64, 96]"``) or as given, written ``64`` / ``64x96``."""
    if isinstance(size, str) and size.startswith("["):
        size = json.loads(size)
    return "x".join(map(str, size)) if isinstance(size, list | tuple) else str(size)


def last_line(error: str | None, default: str = "") -> str:
    """The last line of an error's traceback (the exception and its message)."""
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else default


def _ratio(entry: dict, name: str) -> str:
    return f"{entry[name]:.2f}x" if entry.get(name) else "n/a"
