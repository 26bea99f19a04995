"""The GPU insight studies: what a denoiser costs as the image's shape and the batch of patches change.

- **shape-memory**: one image ``(1, C, height, width)`` per width, widths from ``start`` to ``stop`` in steps
  of 64 and of 68 (the 68-step series crosses widths that are not multiples of 8, where cuDNN may choose
  other algorithms); peak memory and time per call of each denoiser.
- **batch-throughput**: batches of ``batch`` patches ``(batch, C, patch, patch)``; peak memory, patches per
  second, and images per second for an ``image_size`` square image cut into such patches (no halo).

Each measurement: a warm-up call, then ``repetitions`` timed calls (median; a GPU is synchronised), the first
also read for peak memory (:class:`~distinv.runtime.memory.PeakMemory`: CUDA peak allocated, or the CPU's peak
resident set). Rows go to ``OUTPUT/insights.parquet``, one denoiser at a time, atomically; a measurement
already in the table is skipped (``redo=True`` measures again). Denoisers have random weights (cost does not
depend on them), so nothing is downloaded.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from distinv.bench.config import ConfigError, unknown_keys
from distinv.runtime.timing import timed_calls

TABLE = "insights.parquet"
STUDIES = ("shape-memory", "batch-throughput")
DEFAULT_CONFIGS = {s: Path("configs") / f"insights_{s.replace('-', '_')}.yml" for s in STUDIES}


@dataclass
class InsightConfig:
    """One study's settings (see ``configs/insights_*.yml``)."""

    study: str
    output: str = "results/insights"
    device: str = "cpu"
    threads: int = 1
    repetitions: int = 2
    channels: int = 3
    denoisers: list[dict] = field(default_factory=list)
    # shape-memory
    height: int = 32
    widths: dict = field(default_factory=lambda: {"start": 1024, "stop": 2048, "steps": [64, 68]})
    # batch-throughput
    image_size: int = 512
    patches: list[int] = field(default_factory=lambda: [32, 64, 128])
    batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])

    def widths_by_series(self) -> dict[str, list[int]]:
        """``{"64-step": [...], "68-step": [...]}``: each step's widths from start to stop (inclusive)."""
        w = self.widths
        return {f"{s}-step": list(range(w["start"], w["stop"] + 1, s)) for s in w["steps"]}


def load_insight_config(path: str | Path, study: str) -> InsightConfig:
    """Read and validate a study's YAML; every problem is reported at once, naming its key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} is not a file: give a YAML path, e.g. {DEFAULT_CONFIGS[study]}.")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values.")
    errors: list[str] = []
    unknown_keys(raw, InsightConfig.__dataclass_fields__, "", errors)
    if raw.get("study", study) != study:
        errors.append(
            f"study: this config is for {raw['study']!r}, not {study!r}: use `distinv insights {raw['study']}`."
        )
    config = InsightConfig(
        **{k: v for k, v in raw.items() if k in InsightConfig.__dataclass_fields__} | {"study": study}
    )
    for key in ("threads", "repetitions", "channels", "height", "image_size"):
        value = getattr(config, key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            errors.append(f"{key}={value!r}: give a positive integer.")
    if config.device not in ("cpu", "cuda"):
        errors.append(f"device={config.device!r}: use cpu or cuda.")
    elif config.device == "cuda" and not torch.cuda.is_available():
        errors.append("device=cuda but no GPU is visible here: use device: cpu (or run on a GPU machine).")
    for key in ("patches", "batches"):
        value = getattr(config, key)
        if not (isinstance(value, list) and value and all(isinstance(v, int) and v >= 1 for v in value)):
            errors.append(f"{key}={value!r}: give a list of positive integers.")
    w = config.widths
    if not (isinstance(w, dict) and set(w) == {"start", "stop", "steps"}):
        errors.append(f"widths={w!r}: give {{start: 1024, stop: 2048, steps: [64, 68]}}.")
    elif not (0 < w["start"] <= w["stop"] and all(isinstance(s, int) and s > 0 for s in w["steps"])):
        errors.append(f"widths={w!r}: need 0 < start <= stop and positive integer steps.")
    if not config.denoisers:
        errors.append("denoisers: list at least one, e.g. - {name: DRUNet, model: 'untrained:DRUNet'}.")
    for i, d in enumerate(config.denoisers):
        if not (isinstance(d, dict) and {"name", "model"} <= set(d) <= {"name", "model", "arch_kwargs"}):
            errors.append(f"denoisers[{i}]={d!r}: give name, model (e.g. 'untrained:DRUNet') and optional arch_kwargs.")
    if errors:
        raise ConfigError(f"{path}:\n  " + "\n  ".join(errors))
    return config


def measure_call(fn: Callable[[], Any], device: torch.device, repetitions: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` over ``repetitions`` calls after a warm-up, and the first's peak bytes."""
    times, peak = timed_calls(fn, device, repetitions)
    return statistics.median(times), peak


def run_study(config: InsightConfig, redo: bool = False, progress: Callable[[str], None] = print) -> Path:
    """Measure every (denoiser, shape) of ``config`` not yet in the table; return the table's path."""
    from distinv.bench.results import append_rows, read_rows

    done = set() if redo else {r["key"] for r in read_rows(config.output, TABLE)}
    for spec in config.denoisers:
        cases = [c for c in study_cases(config) if _key(config, spec, c) not in done]
        if cases:
            rows = measure_cases(config, spec, cases, progress)
            append_rows(config.output, rows, TABLE, replace_on="key")  # a redo replaces its cases
    return Path(config.output) / TABLE


def measure_cases(
    config: InsightConfig, spec: dict, cases: list[dict], progress: Callable[[str], None] = print
) -> list[dict]:
    """One denoiser ``spec`` (``name``, ``model``) on ``cases`` (:func:`study_cases`): one row per case, written
    nowhere (:func:`run_study` keeps them in the table)."""
    from distinv.denoisers import load_denoiser

    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    environment = {
        "study": config.study,
        "device": config.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": config.threads,
        "torch_version": torch.__version__,
    }
    network = load_denoiser(spec["model"], device=device, arch_kwargs=spec.get("arch_kwargs"), channels=config.channels)
    rows = []
    for case in cases:
        x = torch.rand(case["input_shape"], generator=torch.Generator().manual_seed(0)).to(device)
        row = environment | {"key": _key(config, spec, case), "denoiser": spec["name"], "model": spec["model"]}
        row |= {k: v for k, v in case.items() if k != "input_shape"}
        try:
            with torch.no_grad():
                seconds, peak = measure_call(partial(network, x, 0.05), device, config.repetitions)
            row |= {"status": "ok", "seconds": seconds, "peak_bytes": peak}
            if config.study == "batch-throughput":
                row["patches_per_s"] = case["batch"] / seconds
                row["images_per_s"] = row["patches_per_s"] / case["patches_per_image"]
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            row |= {"status": "out of memory", "seconds": None, "peak_bytes": None}
        rows.append(row)
        progress(_describe(row))
        del x
    return rows


def study_cases(config: InsightConfig) -> list[dict]:
    """The study's shapes: one case per width (shape-memory) or per (patch, batch) (batch-throughput)."""
    c = config.channels
    if config.study == "shape-memory":
        series = config.widths_by_series()
        widths = sorted({w for ws in series.values() for w in ws})
        return [
            {
                "height": config.height,
                "width": w,
                "series": ",".join(name for name, ws in series.items() if w in ws),
                "multiple_of_8": w % 8 == 0,
                "input_shape": (1, c, config.height, w),
            }
            for w in widths
        ]
    return [
        {
            "patch": p,
            "batch": b,
            "image_size": config.image_size,
            "patches_per_image": math.ceil(config.image_size / p) ** 2,
            "input_shape": (b, c, p, p),
        }
        for p in config.patches
        for b in config.batches
    ]


def _key(config: InsightConfig, spec: dict, case: dict) -> str:
    shape = "x".join(map(str, case["input_shape"]))
    return f"{config.study}/{config.device}/{spec['name']}/{spec['model']}/{shape}"


def _describe(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['key']}: {row['status']}"
    text = f"{row['key']}: {row['seconds'] * 1e3:.1f} ms, peak {row['peak_bytes'] / 2**20:.1f} MiB"
    if "patches_per_s" in row:
        text += f", {row['patches_per_s']:.1f} patches/s, {row['images_per_s']:.3f} images/s"
    return text
