"""Progress notes of running runs: rank 0 writes where its run is; the runner's display reads it."""

from __future__ import annotations

import json
from pathlib import Path

PROGRESS_DIR = ".progress"


def progress_path(output: str | Path, key: str) -> Path:
    """Where run ``key``'s note lives in the results folder ``output``."""
    return Path(output) / PROGRESS_DIR / f"{key}.json"


def write_progress(output: str | Path, key: str, iteration: int, psnr: float | None) -> None:
    """Rank 0's note of where its run is (written atomically)."""
    path = progress_path(output, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"iteration": iteration, "psnr": psnr}))
    tmp.replace(path)


def remove_stale_progress(output: str | Path) -> None:
    """Progress notes (and their temporary files) of runs that were killed: no run is under way yet."""
    folder = Path(output) / PROGRESS_DIR
    for stale in folder.glob("*") if folder.is_dir() else ():
        stale.unlink(missing_ok=True)
