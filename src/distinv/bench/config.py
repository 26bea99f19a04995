"""Benchmark configs: a YAML file, validated before anything runs, expanded into a grid of runs.

A config names problems (each with its sizes to sweep and parameters), one PnP solver, a denoiser, the tiling
settings, the engines to compare, the world sizes, repetitions and an output folder; ``configs/quick.yml`` is the
annotated example. Every rule broken is reported at once, each naming its key and the fix.

Engines: ``distinv`` (this library), ``deepinv`` (deepinv's ``deepinv.distributed`` module, same settings) and
``none`` (the untiled single-device baseline: deepinv's stacked physics and the bare denoiser, world size 1).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENGINES = ("none", "distinv", "deepinv")
DEVICES = ("cpu", "cuda")

SOLVER_DEFAULTS: dict[str, Any] = {
    "algorithm": "hqs",
    "iterations": 10,
    "step": None,
    "coupling": None,
    "sigma": 0.05,
    "cg_iterations": 5,
    "relaxation": 1.0,
    "tol": None,
}
DENOISER_DEFAULTS: dict[str, Any] = {"model": "auto"}
TILING_DEFAULTS: dict[str, Any] = {"patch_size": None, "overlap": 32, "max_batch_size": None}
SLURM_DEFAULTS: dict[str, Any] = {
    "nodes": 1,
    "gpus_per_node": 0,
    "tasks_per_node": None,
    "cpus_per_task": 1,
    "time_min": 60,
    "partition": None,
    "qos": None,
    "account": None,
    "setup": [],
    "use_srun": False,
}
TOP_DEFAULTS: dict[str, Any] = {
    "name": None,
    "output": None,
    "device": "cpu",
    "threads_per_rank": 1,
    "world_sizes": [1, 2],
    "engines": list(ENGINES),
    "repetitions": 1,
    "timeout_s": 300,
    "oversubscribe": False,
    "seed": 0,
    "problems": None,
    "solver": {},
    "denoiser": {},
    "tiling": {},
    "slurm": {},
}
PROBLEM_KEYS = {"name", "sizes", "params", "solver", "denoiser", "tiling"}


class ConfigError(ValueError):
    """One or more rules broken; the message lists each with its key and fix."""


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: a problem at one size, one engine at one world size, one repetition."""

    problem: str
    size: Any
    params: dict
    engine: str
    world_size: int
    repetition: int
    solver: dict
    denoiser: dict
    tiling: dict
    device: str
    threads_per_rank: int
    timeout_s: float
    seed: int

    @property
    def key(self) -> str:
        """Stable over runs of the same config (and independent of its other runs): readable, then a hash of
        everything that defines the run."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:10]
        size = "x".join(map(str, self.size)) if isinstance(self.size, list | tuple) else self.size
        return f"{self.problem}-{size}-{self.engine}-w{self.world_size}-r{self.repetition}-{digest}"

    @property
    def group(self) -> str:
        """Runs that compare with each other (same problem, size, solver, denoiser): the speedup's scope."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("engine", "world_size", "repetition")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Config:
    """A validated config; :meth:`runs` expands it."""

    raw: dict
    path: Path | None = None
    output: Path = field(default=Path("results"))

    @property
    def hash(self) -> str:
        return hashlib.sha1(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def runs(self) -> list[RunSpec]:
        c = self.raw
        grid = []
        for entry in c["problems"]:
            solver = {**SOLVER_DEFAULTS, **c["solver"], **entry.get("solver", {})}
            denoiser = {**DENOISER_DEFAULTS, **c["denoiser"], **entry.get("denoiser", {})}
            for size in entry["sizes"]:
                for rep in range(c["repetitions"]):
                    for engine in c["engines"]:
                        worlds = [1] if engine == "none" else c["world_sizes"]
                        for world in worlds:
                            grid.append(
                                RunSpec(
                                    problem=entry["name"],
                                    size=size,
                                    params=dict(entry.get("params", {})),
                                    engine=engine,
                                    world_size=world,
                                    repetition=rep,
                                    solver=solver,
                                    denoiser=denoiser,
                                    tiling={**TILING_DEFAULTS, **c["tiling"], **entry.get("tiling", {})},
                                    device=c["device"],
                                    threads_per_rank=c["threads_per_rank"],
                                    timeout_s=float(c["timeout_s"]),
                                    seed=c["seed"],
                                )
                            )
        return grid


def available_devices(device: str) -> int:
    """Devices one machine offers: GPUs for ``cuda``, the cores this process may use for ``cpu``."""
    if device == "cuda":
        import torch

        return torch.cuda.device_count()
    from ..context import available_cores

    return available_cores()


def load_config(path: str | Path, slurm: bool = False, overrides: dict | None = None) -> Config:
    """Read and validate a YAML config (``overrides`` replace top-level keys, e.g. ``{"output": ...}``).
    ``slurm``: world sizes are checked against the allocation asked for instead of this machine."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} is not a file: e.g. configs/quick.yml.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    raw = {**(raw or {}), **(overrides or {})}
    config = validate(raw, slurm=slurm, name=path.stem)
    config.path = path
    return config


def validate(raw: dict, slurm: bool = False, name: str = "benchmark") -> Config:
    """Check every rule and raise one :class:`ConfigError` listing all broken ones."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping of keys (name, problems, solver, ...).")
    _unknown(raw, TOP_DEFAULTS, "", errors)
    c = copy.deepcopy({**TOP_DEFAULTS, **raw})
    c["name"] = c["name"] or name
    c["output"] = c["output"] or f"results/{c['name']}"
    for section, defaults in (("solver", SOLVER_DEFAULTS), ("denoiser", DENOISER_DEFAULTS)):
        _section(c, section, defaults, errors)
    _section(c, "tiling", TILING_DEFAULTS, errors)
    _section(c, "slurm", SLURM_DEFAULTS, errors)
    c["slurm"] = {**SLURM_DEFAULTS, **c["slurm"]}

    if c["device"] not in DEVICES:
        errors.append(f"device={c['device']!r}: choose one of {list(DEVICES)}.")
    for key in ("threads_per_rank", "repetitions"):
        if not _is_int(c[key]) or c[key] < 1:
            errors.append(f"{key}={c[key]!r}: give a whole number >= 1.")
    if not isinstance(c["timeout_s"], int | float) or isinstance(c["timeout_s"], bool) or c["timeout_s"] <= 0:
        errors.append(f"timeout_s={c['timeout_s']!r}: give the seconds a collective may wait (> 0), e.g. 300.")
    if not _is_int(c["seed"]):
        errors.append(f"seed={c['seed']!r}: give a whole number.")
    if not isinstance(c["oversubscribe"], bool):
        errors.append(f"oversubscribe={c['oversubscribe']!r}: give true or false.")
    engines = c["engines"]
    if not isinstance(engines, list) or not engines or any(e not in ENGINES for e in engines):
        errors.append(f"engines={engines!r}: give a list drawn from {list(ENGINES)}.")
    worlds = c["world_sizes"]
    if not isinstance(worlds, list) or not worlds or any(not _is_int(w) or w < 1 for w in worlds):
        errors.append(f"world_sizes={worlds!r}: give a list of whole numbers >= 1, e.g. [1, 2, 4].")
    elif c["device"] in DEVICES:
        _check_devices(c, slurm, errors)
    _check_solver(c["solver"], "solver", errors)
    _check_problems(c, errors)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
    return Config(raw=c, output=Path(c["output"]))


def _check_devices(c: dict, slurm: bool, errors: list[str]) -> None:
    largest = max(c["world_sizes"])
    if slurm:
        s = c["slurm"]
        per_node = s["tasks_per_node"] or (s["gpus_per_node"] if c["device"] == "cuda" else 1)
        if largest > s["nodes"] * per_node:
            errors.append(
                f"world_sizes={c['world_sizes']}: {largest} ranks need more than slurm.nodes={s['nodes']} x "
                f"{per_node} tasks per node; raise slurm.nodes or slurm.tasks_per_node."
            )
        if c["device"] == "cuda" and s["gpus_per_node"] < 1:
            errors.append("slurm.gpus_per_node=0 with device=cuda: ask for GPUs per node (e.g. 4).")
        return
    have = available_devices(c["device"])
    if c["device"] == "cuda":
        if largest > have:
            errors.append(
                f"world_sizes={c['world_sizes']}: {largest} ranks need {largest} GPUs, this machine has {have}; "
                "lower world_sizes or run with --slurm on a cluster."
            )
        return
    cores = largest * c["threads_per_rank"] if _is_int(c["threads_per_rank"]) else largest
    if cores > have and not c["oversubscribe"]:
        errors.append(
            f"world_sizes={c['world_sizes']} x threads_per_rank={c['threads_per_rank']}: {cores} cores needed, "
            f"{have} available (one core per rank thread); lower them, or set oversubscribe: true to time "
            "ranks that share cores."
        )


def _check_solver(solver: dict, where: str, errors: list[str]) -> None:
    from ..pnp import ALGORITHMS

    if solver.get("algorithm", "hqs") not in ALGORITHMS:
        errors.append(f"{where}.algorithm={solver['algorithm']!r}: choose one of {list(ALGORITHMS)}.")
    iterations = solver.get("iterations", 1)
    if not _is_int(iterations) or iterations < 1:
        errors.append(f"{where}.iterations={iterations!r}: give a whole number >= 1.")
    sigma = solver.get("sigma", 0.05)
    levels = sigma if isinstance(sigma, list) else [sigma]
    if not 1 <= len(levels) <= 2 or any(not isinstance(s, int | float) or s <= 0 for s in levels):
        errors.append(f"{where}.sigma={sigma!r}: give one level > 0 or [start, end] of a decreasing schedule.")
    step = solver.get("step")
    if step is not None and (not isinstance(step, int | float) or step <= 0):
        errors.append(f"{where}.step={step!r}: give a step > 0, or null for 1 / ||A||^2.")
    coupling = solver.get("coupling")
    if coupling is not None and (not isinstance(coupling, int | float) or coupling <= 0):
        errors.append(f"{where}.coupling={coupling!r}: give a value > 0 (DPIR: 0.23), or null for a fixed step.")
    if coupling is not None and step is not None:
        errors.append(f"{where}: step and coupling both given: coupling sets the steps from sigma, drop one.")


def _check_problems(c: dict, errors: list[str]) -> None:
    from .problems import BUILDERS, check

    problems = c["problems"]
    if not isinstance(problems, list) or not problems:
        errors.append("problems: give a list, e.g. [{name: highres_blur, sizes: [256]}].")
        return
    for i, entry in enumerate(problems):
        where = f"problems[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            errors.append(f"{where}: give a mapping with a name, one of {sorted(BUILDERS)}.")
            continue
        _unknown(entry, PROBLEM_KEYS, where + ".", errors)
        sizes = entry.get("sizes")
        if not isinstance(sizes, list) or not sizes:
            errors.append(f"{where}.sizes={sizes!r}: give a list of sizes to sweep, e.g. [256, 512].")
            sizes = []
        params = entry.get("params", {})
        if not isinstance(params, dict) or "size" in params:
            errors.append(f"{where}.params: give a mapping of the problem's parameters (the size goes in sizes).")
            params = {}
        for key in ("solver", "denoiser", "tiling"):
            if not isinstance(entry.get(key, {}), dict):
                errors.append(f"{where}.{key}: give a mapping that overrides the top-level {key}.")
        if isinstance(entry.get("solver"), dict):
            _unknown(entry["solver"], SOLVER_DEFAULTS, f"{where}.solver.", errors)
            _check_solver(entry["solver"], f"{where}.solver", errors)
        if isinstance(entry.get("denoiser"), dict):
            _unknown(entry["denoiser"], DENOISER_DEFAULTS, f"{where}.denoiser.", errors)
        if isinstance(entry.get("tiling"), dict):
            _unknown(entry["tiling"], TILING_DEFAULTS, f"{where}.tiling.", errors)
        for size in sizes:
            try:
                check(entry["name"], size=size, **params)
            except (ValueError, TypeError) as exc:
                errors.append(f"{where} ({entry['name']}, size {size}): {exc}")
                break


def _section(c: dict, section: str, defaults: dict, errors: list[str]) -> None:
    if not isinstance(c[section], dict):
        errors.append(f"{section}: give a mapping of its keys {sorted(defaults)}.")
        c[section] = {}
    _unknown(c[section], defaults, section + ".", errors)


def _unknown(given: dict, allowed, prefix: str, errors: list[str]) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"allowed: {sorted(allowed)}."
            errors.append(f"{prefix}{key} is not a config key: {hint}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
