"""Benchmark configs: a YAML file, validated before anything runs, expanded into a grid of runs.

A config names problems (each with its sizes to sweep and parameters), one PnP solver, a denoiser, the tiling
settings, the engines to compare, the world sizes, repetitions and an output folder; ``configs/quick.yml`` is the
annotated example. Every rule broken is reported at once, each naming its key and the fix, before anything
runs: what a run would only find out at run time (a tiling or solver value out of range, a denoiser that does
not exist, two grid entries that are the same run) is checked here.

Engines: ``distinv`` (this library), ``deepinv`` (deepinv's ``deepinv.distributed`` module, same settings) and
``none`` (the untiled single-device baseline: deepinv's stacked physics and the bare denoiser, world size 1).

A config with a ``training`` section (``configs/training.yml``) runs the training half instead of PnP: each run
trains an unrolled network (:mod:`distinv.bench.training`); its rows say ``kind: training`` in the same table.

:meth:`Config.runs` gives each run its ``solver``, ``denoiser``, ``tiling`` and ``training`` sections typed
(:mod:`distinv.bench.spec`, where their defaults are), built from the values :func:`validate` checked.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distinv.bench.spec import DenoiserSpec, RunSpec, SolverSpec, TilingSpec, TrainingSpec

ENGINES = ("none", "distinv", "distinv-sharded", "deepinv")
DEVICES = ("cpu", "cuda")

# the sections' keys and defaults, from their dataclasses (distinv.bench.spec)
SOLVER_DEFAULTS: dict[str, Any] = asdict(SolverSpec())
TRAINING_DEFAULTS: dict[str, Any] = asdict(TrainingSpec())
DENOISER_DEFAULTS: dict[str, Any] = asdict(DenoiserSpec())
TILING_DEFAULTS: dict[str, Any] = asdict(TilingSpec())
TRAINING_ALGORITHMS = ("pgd", "drs")
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
    "engines": ["none", "distinv", "deepinv"],  # distinv-sharded is asked for by name
    "repetitions": 1,
    "timeout_s": 300,
    "oversubscribe": False,
    "seed": 0,
    "problems": None,
    "solver": {},
    "denoiser": {},
    "tiling": {},
    "slurm": {},
    "training": None,
}
PROBLEM_KEYS = {"name", "sizes", "params", "solver", "denoiser", "tiling"}


class ConfigError(ValueError):
    """One or more rules broken; the message lists each with its key and fix."""


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
        """The grid: per problem, size, repetition, engine and world size (1 alone for ``none``), one run. Its
        sections are the top-level ones with the problem's own keys over them (their defaults where neither gives
        a key); a training run has no solver (``{}``)."""
        c = self.raw
        grid = []
        training = None if c["training"] is None else TrainingSpec(**c["training"])
        for entry in c["problems"]:
            solver = {} if training is not None else SolverSpec(**{**c["solver"], **entry.get("solver", {})})
            denoiser = DenoiserSpec(**{**c["denoiser"], **entry.get("denoiser", {})})
            tiling = TilingSpec(**{**c["tiling"], **entry.get("tiling", {})})
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
                                    tiling=tiling,
                                    device=c["device"],
                                    threads_per_rank=c["threads_per_rank"],
                                    timeout_s=float(c["timeout_s"]),
                                    seed=c["seed"],
                                    training=training,
                                )
                            )
        return grid


def available_devices(device: str) -> int:
    """Devices one machine offers: GPUs for ``cuda``, the cores this process may use for ``cpu``."""
    if device == "cuda":
        import torch

        return torch.cuda.device_count()
    from distinv.comm.context import available_cores

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
    unknown_keys(raw, TOP_DEFAULTS, "", errors)
    c = copy.deepcopy({**TOP_DEFAULTS, **raw})
    c["name"] = c["name"] or name
    c["output"] = c["output"] or f"results/{c['name']}"
    sections = (("solver", SOLVER_DEFAULTS), ("denoiser", DENOISER_DEFAULTS), ("tiling", TILING_DEFAULTS))
    for section, defaults in (*sections, ("slurm", SLURM_DEFAULTS)):
        _section(c, section, defaults, errors)
    c["slurm"] = {**SLURM_DEFAULTS, **c["slurm"]}
    slurm_ok = _check_slurm(c["slurm"], errors)

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
    else:
        _check_once(engines, "engines", "engine", errors)
    worlds = c["world_sizes"]
    if not isinstance(worlds, list) or not worlds or any(not _is_int(w) or w < 1 for w in worlds):
        errors.append(f"world_sizes={worlds!r}: give a list of whole numbers >= 1, e.g. [1, 2, 4].")
    else:
        _check_once(worlds, "world_sizes", "world size", errors)
        if c["device"] in DEVICES and (slurm_ok or not slurm):
            _check_devices(c, slurm, errors)
    if c["training"] is not None:
        _check_training(c, errors)
    else:
        _check_solver(c["solver"], "solver", errors)
    _check_tiling(c["tiling"], "tiling", c["engines"], errors)
    if isinstance(engines, list) and "distinv-sharded" in engines and c["training"] is not None:
        errors.append("engines: distinv-sharded runs PnP; a training config trains with none, distinv or deepinv.")
    if "model" in c["denoiser"]:
        _check_model(c["denoiser"]["model"], "denoiser", slurm, errors)
    _check_problems(c, slurm, errors)
    if not errors:
        _check_distinct_runs(c, errors)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(dict.fromkeys(errors)))
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


def _check_solver(given: dict, where: str, errors: list[str]) -> None:
    """The solver keys given in ``given`` (the section or a problem's overrides; the defaults pass)."""
    from distinv.pnp import ALGORITHMS

    solver = {**SOLVER_DEFAULTS, **given}
    if solver["algorithm"] not in ALGORITHMS:
        errors.append(f"{where}.algorithm={solver['algorithm']!r}: choose one of {list(ALGORITHMS)}.")
    iterations = solver["iterations"]
    if not _is_int(iterations) or iterations < 1:
        errors.append(f"{where}.iterations={iterations!r}: give a whole number >= 1.")
    sigma = solver["sigma"]
    levels = sigma if isinstance(sigma, list) else [sigma]
    if not 1 <= len(levels) <= 2 or any(not _is_number(s) or s <= 0 for s in levels):
        errors.append(
            f"{where}.sigma={sigma!r}: give one level > 0 or [start, end] of a decreasing schedule{_hint(sigma)}."
        )
    step = solver["step"]
    if step is not None and (not _is_number(step) or step <= 0):
        errors.append(f"{where}.step={step!r}: give a step > 0, or null for 1 / ||A||^2{_hint(step)}.")
    coupling = solver["coupling"]
    if coupling is not None and (not _is_number(coupling) or coupling <= 0):
        errors.append(
            f"{where}.coupling={coupling!r}: give a value > 0 (DPIR: 0.23), or null for a fixed step{_hint(coupling)}."
        )
    if coupling is not None and step is not None:
        errors.append(f"{where}: step and coupling both given: coupling sets the steps from sigma, drop one.")
    # the ranges pnp() enforces when the run starts
    relaxation = solver["relaxation"]
    if not _is_number(relaxation) or not 0 < relaxation < 2:
        errors.append(
            f"{where}.relaxation={relaxation!r}: give a number in (0, 2), e.g. 1.0 (no relaxation){_hint(relaxation)}."
        )
    cg_iterations = solver["cg_iterations"]
    if not _is_int(cg_iterations) or cg_iterations < 1:
        errors.append(
            f"{where}.cg_iterations={cg_iterations!r}: give a whole number >= 1 of conjugate-gradient steps per "
            "data prox (hqs, admm), e.g. 5."
        )
    tol = solver["tol"]
    if tol is not None and (not _is_number(tol) or tol <= 0):
        errors.append(
            f"{where}.tol={tol!r}: give the relative change > 0 below which the solver stops, e.g. 0.0001, or "
            f"null to run every iteration{_hint(tol)}."
        )


def _check_training(c: dict, errors: list[str]) -> None:
    """The ``training`` section (a training config has no PnP ``solver``)."""
    training = c["training"]
    if not isinstance(training, dict):
        errors.append(f"training: give a mapping of its keys {sorted(TRAINING_DEFAULTS)}, or leave it out for PnP.")
        return
    unknown_keys(training, TRAINING_DEFAULTS, "training.", errors)
    if c["solver"] or any(isinstance(e, dict) and "solver" in e for e in c["problems"] or []):
        errors.append("solver: a training config trains an unrolled network; set its keys under training instead.")
    t = {**TRAINING_DEFAULTS, **training}
    if t["algorithm"] not in TRAINING_ALGORITHMS:
        errors.append(f"training.algorithm={t['algorithm']!r}: choose one of {list(TRAINING_ALGORITHMS)} (unrolled).")
    for key in ("iterations", "steps", "validate_every"):
        if not _is_int(t[key]) or t[key] < 1:
            errors.append(f"training.{key}={t[key]!r}: give a whole number >= 1.")
    for key in ("lr", "sigma"):
        if not _is_number(t[key]) or t[key] <= 0:
            errors.append(f"training.{key}={t[key]!r}: give a number > 0{_hint(t[key])}.")
    if t["stepsize"] is not None and (not _is_number(t["stepsize"]) or t["stepsize"] <= 0):
        errors.append(f"training.stepsize={t['stepsize']!r}: give a step > 0, or null for 1 / ||A||^2.")
    if t["checkpoint_batches"] not in (None, "auto", "always", "never"):
        errors.append(
            f"training.checkpoint_batches={t['checkpoint_batches']!r}: give always (recompute the denoiser's "
            "windows in backward), never (keep their activations), auto, or null for each engine's default."
        )
    if not isinstance(t["checkpoint_iterations"], bool):
        errors.append(f"training.checkpoint_iterations={t['checkpoint_iterations']!r}: give true or false.")


def _check_tiling(given: dict, where: str, engines: Any, errors: list[str]) -> None:
    """The tiling keys given in ``given`` (the section or a problem's overrides; the defaults pass)."""
    tiling = {**TILING_DEFAULTS, **given}
    fixed = [e for e in ("deepinv", "distinv-sharded") if isinstance(engines, list) and e in engines]
    deepinv = bool(fixed)  # an engine that takes fixed knobs only
    auto = "" if deepinv else ", or 'auto' (distinv measures its network)"
    not_auto = f" ('auto' is distinv's replicated engine's alone: {' and '.join(fixed)} in engines)" if deepinv else ""
    patch = tiling["patch_size"]
    if patch is not None and not (_is_int(patch) and patch >= 1 or patch == "auto" and not deepinv):
        errors.append(
            f"{where}.patch_size={patch!r}: give the pixels a window owns per side (a whole number >= 1), null "
            f"(distinv plans its windows){auto}{not_auto}."
        )
    overlap = tiling["overlap"]
    if not _is_int(overlap) or overlap < 0:
        errors.append(f"{where}.overlap={overlap!r}: give the halo in pixels, a whole number >= 0 (e.g. 32).")
    batch = tiling["max_batch_size"]
    if batch is not None and not (_is_int(batch) and batch >= 1 or batch == "auto" and not deepinv):
        errors.append(
            f"{where}.max_batch_size={batch!r}: give the most windows per network call (a whole number >= 1), "
            f"null (the device's default){auto}{not_auto}."
        )


def _check_windows(tiling: dict, where: str, errors: list[str]) -> None:
    """Overlap and patch size together (``tiling``: every key, a problem's overrides over the section's)."""
    patch, overlap = tiling["patch_size"], tiling["overlap"]
    if _is_int(patch) and _is_int(overlap) and patch >= 1 and overlap > patch:
        errors.append(
            f"{where}: overlap={overlap} is larger than patch_size={patch}: windows would be mostly halo; lower "
            "overlap or raise patch_size."
        )


def _check_model(model: Any, where: str, slurm: bool, errors: list[str]) -> None:
    """A denoiser source the worker can load (see :func:`~distinv.bench.worker.load_model`), without loading
    any weights."""
    from distinv.denoisers.zoo import shipped_models

    shipped = shipped_models()
    choices = (
        f"'auto', shipped:NAME ({', '.join(sorted(shipped))}), a weights file, download:ARCH, untrained:ARCH or "
        "python:module:factory"
    )
    if not isinstance(model, str) or not model:
        errors.append(f"{where}.model={model!r}: give {choices}.")
        return
    if model == "auto" or model in shipped:
        return
    if model.startswith("shipped:"):
        if model.removeprefix("shipped:") not in shipped:
            names = ", ".join(f"shipped:{name}" for name in sorted(shipped))
            errors.append(f"{where}.model={model!r}: no such shipped model; choose one of {names}.")
    elif model.startswith(("download:", "untrained:")):
        arch = model.partition(":")[2]
        if not _is_deepinv_denoiser(arch):
            errors.append(f"{where}.model={model!r}: {arch!r} is not a deepinv denoiser class, e.g. DRUNet, DnCNN.")
    elif model.startswith("python:"):
        problem = _factory_problem(model.removeprefix("python:"), slurm)
        if problem:
            errors.append(f"{where}.model={model!r}: {problem}")
    elif not Path(model).is_file():
        errors.append(f"{where}.model={model!r}: no such file; give {choices}.")


def _is_deepinv_denoiser(arch: str) -> bool:
    import deepinv.models
    import torch

    cls = getattr(deepinv.models, arch, None)
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def _factory_problem(target: str, slurm: bool) -> str | None:
    """Why ``module:factory`` cannot give a network here, or None. Under SLURM the job's environment (its setup
    lines) may differ from this one: only the form is checked."""
    module, _, name = target.partition(":")
    if not module or not name:
        return "write python:module:factory, e.g. python:my_models:build (build(channels) returns the network)."
    if slurm:
        return None
    try:
        factory = getattr(importlib.import_module(module), name, None)
    except Exception as exc:  # whatever the import raised, the ranks would raise it too
        return f"module {module!r} cannot be imported ({type(exc).__name__}: {exc}); put its folder on PYTHONPATH."
    if not callable(factory):
        return f"module {module!r} has no function {name!r}: give the factory that takes the channel count."
    return None


def _check_slurm(s: dict, errors: list[str]) -> bool:
    """The ``slurm`` section's values; returns whether they are usable to size jobs."""
    before = len(errors)
    for key, least in (("nodes", 1), ("gpus_per_node", 0), ("cpus_per_task", 1), ("time_min", 1)):
        if not _is_int(s[key]) or s[key] < least:
            errors.append(f"slurm.{key}={s[key]!r}: give a whole number >= {least}.")
    if s["tasks_per_node"] is not None and (not _is_int(s["tasks_per_node"]) or s["tasks_per_node"] < 1):
        errors.append(f"slurm.tasks_per_node={s['tasks_per_node']!r}: give a whole number >= 1, or null.")
    for key in ("partition", "qos", "account"):
        if s[key] is not None and not isinstance(s[key], str):
            errors.append(f"slurm.{key}={s[key]!r}: give a name, or null for the cluster's default.")
    if not isinstance(s["setup"], list) or any(not isinstance(line, str) for line in s["setup"]):
        errors.append(f"slurm.setup={s['setup']!r}: give a list of shell lines, e.g. ['module load cuda'].")
    if not isinstance(s["use_srun"], bool):
        errors.append(f"slurm.use_srun={s['use_srun']!r}: give true or false.")
    return len(errors) == before


def _check_once(values: list, key: str, what: str, errors: list[str]) -> None:
    """Each value of a grid list once: a repeated one would be the same run twice under one key."""
    seen: set[str] = set()
    for value in values:
        text = json.dumps(value, sort_keys=True, default=str)
        if text in seen:
            errors.append(f"{key}={values!r}: the {what} {value!r} is given more than once; list each once.")
            return
        seen.add(text)


def _check_distinct_runs(c: dict, errors: list[str]) -> None:
    """Two problem entries that expand to the same runs (same key) would overwrite each other's rows."""
    owner: dict[str, int] = {}
    for index, entry in enumerate(c["problems"]):
        for spec in Config(raw={**c, "problems": [entry]}).runs():
            first = owner.setdefault(spec.key, index)
            if first != index:
                errors.append(
                    f"problems[{first}] and problems[{index}] give the same runs (e.g. {spec.key}): drop one, or "
                    "change its sizes, params, solver, denoiser or tiling."
                )
                break


def _check_problems(c: dict, slurm: bool, errors: list[str]) -> None:
    from distinv.bench.problems import BUILDERS, check

    problems = c["problems"]
    if not isinstance(problems, list) or not problems:
        errors.append("problems: give a list, e.g. [{name: highres_blur, sizes: [256]}].")
        return
    for i, entry in enumerate(problems):
        where = f"problems[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            errors.append(f"{where}: give a mapping with a name, one of {sorted(BUILDERS)}.")
            continue
        unknown_keys(entry, PROBLEM_KEYS, where + ".", errors)
        sizes = entry.get("sizes")
        if not isinstance(sizes, list) or not sizes:
            errors.append(f"{where}.sizes={sizes!r}: give a list of sizes to sweep, e.g. [256, 512].")
            sizes = []
        _check_once(sizes, f"{where}.sizes", "size", errors)
        params = entry.get("params", {})
        if not isinstance(params, dict) or "size" in params:
            errors.append(f"{where}.params: give a mapping of the problem's parameters (the size goes in sizes).")
            params = {}
        for key in ("solver", "denoiser", "tiling"):
            if not isinstance(entry.get(key, {}), dict):
                errors.append(f"{where}.{key}: give a mapping that overrides the top-level {key}.")
        if isinstance(entry.get("solver"), dict):
            unknown_keys(entry["solver"], SOLVER_DEFAULTS, f"{where}.solver.", errors)
            _check_solver(entry["solver"], f"{where}.solver", errors)
        if isinstance(entry.get("denoiser"), dict):
            unknown_keys(entry["denoiser"], DENOISER_DEFAULTS, f"{where}.denoiser.", errors)
            if "model" in entry["denoiser"]:
                _check_model(entry["denoiser"]["model"], f"{where}.denoiser", slurm, errors)
        own_tiling = entry.get("tiling") if isinstance(entry.get("tiling"), dict) else {}
        unknown_keys(own_tiling, TILING_DEFAULTS, f"{where}.tiling.", errors)
        _check_tiling(own_tiling, f"{where}.tiling", c["engines"], errors)
        windows_from = f"{where}.tiling" if {"patch_size", "overlap"} & set(own_tiling) else "tiling"
        _check_windows({**TILING_DEFAULTS, **c["tiling"], **own_tiling}, windows_from, errors)
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
    unknown_keys(c[section], defaults, section + ".", errors)


def unknown_keys(given: dict, allowed, prefix: str, errors: list[str]) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"allowed: {sorted(allowed)}."
            errors.append(f"{prefix}{key} is not a config key: {hint}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _hint(value: Any) -> str:
    """YAML 1.1 reads ``1e-4`` (no dot) as text: say so when a number was meant."""
    for v in value if isinstance(value, list) else [value]:
        try:
            number = float(v) if isinstance(v, str) else None
        except ValueError:
            continue
        if number is not None and math.isfinite(number):
            return f" (YAML reads {v} as text: write it with a dot, e.g. {number!r})"
    return ""
