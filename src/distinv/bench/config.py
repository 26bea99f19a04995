"""Benchmark configs: a YAML file, validated before anything runs, expanded into a grid of runs.

A config names problems (each with its sizes to sweep and parameters), one PnP solver, a denoiser, the tiling
settings, the engines to compare, the world sizes, repetitions and an output folder; ``configs/quick.yml`` is the
annotated example. Every rule broken is reported at once, each naming its key and the fix, before anything
runs: what a run would only find out at run time (a tiling or solver value out of range, a number that is not
finite, a denoiser that does not exist, two grid entries that are the same run, a ``distinv-sharded`` run whose
row bands cannot supply its halos) is checked here. Every number follows one rule, :func:`in_range` (finite, in
its key's range), and so does every numeric parameter of a problem (``check_number`` in its ``build``).

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

from distinv.bench.spec import DenoiserSpec, RunSpec, SolverSpec, TilingSpec, TrainingSpec, slurm_tasks_per_node

ENGINES = ("none", "distinv", "distinv-sharded", "deepinv")
DEVICES = ("cpu", "cuda")

# the sections' keys and defaults, from their dataclasses (distinv.bench.spec)
SOLVER_DEFAULTS: dict[str, Any] = asdict(SolverSpec())
TRAINING_DEFAULTS: dict[str, Any] = asdict(TrainingSpec())
DENOISER_DEFAULTS: dict[str, Any] = asdict(DenoiserSpec())
TILING_DEFAULTS: dict[str, Any] = asdict(TilingSpec())
PARALLEL_MODES = ("windows", "domain")
SHARDED_TRAINING_PROBLEMS = ("highres_blur",)  # whose sharded physics is differentiable on row bands
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
# Seeds a config may give: 64-bit signed, so that a training run's problem seed + 1 + step (its training images)
# stays within what torch's generators take (TORCH_SEED_RANGE, what a problem built outside a config accepts).
SEED_RANGE = (-(2**63), 2**63 - 1)
TORCH_SEED_RANGE = (-(2**63), 2**64 - 1)
MAX_TIMEOUT_S = 365 * 24 * 3600  # gloo refuses a timeout of ~1e13 s and timedelta() overflows at ~8.6e13 s
MAX_THREADS = 2**31 - 1  # torch.set_num_threads takes a C int


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
    _check_number(
        errors,
        "threads_per_rank",
        c["threads_per_rank"],
        1,
        MAX_THREADS,
        whole=True,
        give=f"a whole number >= 1 (at most {MAX_THREADS})",
    )
    _check_number(errors, "repetitions", c["repetitions"], 1, whole=True)
    _check_number(
        errors,
        "timeout_s",
        c["timeout_s"],
        0,
        MAX_TIMEOUT_S,
        above=True,
        give=f"the seconds a collective may wait (> 0, at most {MAX_TIMEOUT_S}: a year), e.g. 300",
    )
    _check_number(errors, "seed", c["seed"], *SEED_RANGE, whole=True, give="a whole number (64 bits), e.g. 0")
    if not isinstance(c["oversubscribe"], bool):
        errors.append(f"oversubscribe={c['oversubscribe']!r}: give true or false.")
    engines = c["engines"]
    if not isinstance(engines, list) or not engines or any(e not in ENGINES for e in engines):
        errors.append(f"engines={engines!r}: give a list drawn from {list(ENGINES)}.")
    else:
        _check_once(engines, "engines", "engine", errors)
    worlds = c["world_sizes"]
    if not isinstance(worlds, list) or not worlds or any(not in_range(w, 1, whole=True) for w in worlds):
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
    if isinstance(engines, list) and "distinv-sharded" in engines and isinstance(c["training"], dict):
        _check_sharded_training(c, errors)
    if "model" in c["denoiser"]:
        _check_model(c["denoiser"]["model"], "denoiser", slurm, errors)
    _check_problems(c, slurm, errors)
    if not errors:  # both read the grid as runs() expands it: every value must be valid first
        _check_distinct_runs(c, errors)
        _check_sharded_runs(c, slurm, errors)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(dict.fromkeys(errors)))
    return Config(raw=c, output=Path(c["output"]))


def _check_devices(c: dict, slurm: bool, errors: list[str]) -> None:
    largest = max(c["world_sizes"])
    if slurm:
        s = c["slurm"]
        per_node = slurm_tasks_per_node(s, c["device"], largest)
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
    cores = largest * c["threads_per_rank"] if in_range(c["threads_per_rank"], 1, whole=True) else largest
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
    _check_number(errors, f"{where}.iterations", solver["iterations"], 1, whole=True)
    sigma = solver["sigma"]
    levels = sigma if isinstance(sigma, list) else [sigma]
    if not 1 <= len(levels) <= 2 or any(not in_range(s, 0, above=True) for s in levels):
        errors.append(
            f"{where}.sigma={sigma!r}: give one level > 0 or [start, end] of a decreasing schedule{number_hint(sigma)}."
        )
    step, coupling = solver["step"], solver["coupling"]
    _check_number(errors, f"{where}.step", step, 0, above=True, null=True, give="a step > 0, or null for 1 / ||A||^2")
    _check_number(
        errors,
        f"{where}.coupling",
        coupling,
        0,
        above=True,
        null=True,
        give="a value > 0 (DPIR: 0.23), or null for a fixed step",
    )
    if coupling is not None and step is not None:
        errors.append(f"{where}: step and coupling both given: coupling sets the steps from sigma, drop one.")
    # the ranges pnp() enforces when the run starts
    _check_number(
        errors,
        f"{where}.relaxation",
        solver["relaxation"],
        0,
        2,
        above=True,
        below=True,
        give="a number in (0, 2), e.g. 1.0 (no relaxation)",
    )
    _check_number(
        errors,
        f"{where}.cg_iterations",
        solver["cg_iterations"],
        1,
        whole=True,
        give="a whole number >= 1 of conjugate-gradient steps per data prox (hqs, admm), e.g. 5",
    )
    _check_number(
        errors,
        f"{where}.tol",
        solver["tol"],
        0,
        above=True,
        null=True,
        give="the relative change > 0 below which the solver stops, e.g. 0.0001, or null to run every iteration",
    )


def _check_sharded_training(c: dict, errors: list[str]) -> None:
    """What training on sharded iterates takes (:class:`~distinv.sharded.unrolled.ShardedUnrolledPGD`): PGD, the
    domain-parallel denoiser (``tiling.parallel: domain``), physics differentiable on row bands (highres_blur's)."""
    if {**TRAINING_DEFAULTS, **c["training"]}["algorithm"] != "pgd":
        errors.append("training.algorithm: distinv-sharded trains an unrolled pgd (drs: use the distinv engine).")
    for index, entry in enumerate(c["problems"] if isinstance(c["problems"], list) else []):
        if not isinstance(entry, dict):
            continue
        tiling = {**TILING_DEFAULTS, **c["tiling"], **(entry.get("tiling") or {})}
        if entry.get("name") not in SHARDED_TRAINING_PROBLEMS:
            errors.append(
                f"problems[{index}] ({entry.get('name')}): distinv-sharded trains on "
                f"{', '.join(SHARDED_TRAINING_PROBLEMS)} (physics differentiable on row bands); train the others with "
                "distinv."
            )
        elif tiling["parallel"] != "domain":
            errors.append(
                f"problems[{index}].tiling.parallel={tiling['parallel']!r}: distinv-sharded trains through the "
                "domain-parallel denoiser: set tiling: {parallel: domain}."
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
        _check_number(errors, f"training.{key}", t[key], 1, whole=True)
    for key in ("lr", "sigma"):
        _check_number(errors, f"training.{key}", t[key], 0, above=True)
    _check_number(
        errors, "training.stepsize", t["stepsize"], 0, above=True, null=True, give="a step > 0, or null for 1 / ||A||^2"
    )
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
    if patch is not None and not (in_range(patch, 1, whole=True) or patch == "auto" and not deepinv):
        errors.append(
            f"{where}.patch_size={patch!r}: give the pixels a window owns per side (a whole number >= 1), null "
            f"(distinv plans its windows){auto}{not_auto}."
        )
    _check_number(
        errors,
        f"{where}.overlap",
        tiling["overlap"],
        0,
        whole=True,
        give="the halo in pixels, a whole number >= 0 (e.g. 32)",
    )
    if tiling["parallel"] not in PARALLEL_MODES:
        errors.append(
            f"{where}.parallel={tiling['parallel']!r}: give 'windows' (overlapping windows, deepinv's way) or 'domain' "
            "(the network run as one domain over the ranks' row bands, exact)."
        )
    batch = tiling["max_batch_size"]
    if batch is not None and not (in_range(batch, 1, whole=True) or batch == "auto" and not deepinv):
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
        _check_number(errors, f"slurm.{key}", s[key], least, whole=True)
    _check_number(
        errors,
        "slurm.tasks_per_node",
        s["tasks_per_node"],
        1,
        whole=True,
        null=True,
        give="a whole number >= 1, or null",
    )
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


def _check_sharded_runs(c: dict, slurm: bool, errors: list[str]) -> None:
    """What the ``distinv-sharded`` engine would refuse at launch, per problem, size and world size: its row-band
    plan of the denoiser's windows (:func:`_sharded_layout_problem`), at the run's size multiple
    (:func:`_size_multiple`), against the halo of the problem's sharded physics
    (:func:`~distinv.bench.problems.sharded_halo`). The first world size refused is reported, per size."""
    if "distinv-sharded" not in c["engines"]:
        return
    from distinv.bench.problems import sharded_halo, signal_shape

    multiples: dict[tuple, int | None] = {}
    for index, entry in enumerate(c["problems"]):
        where, name, params = f"problems[{index}]", entry["name"], entry.get("params", {})
        own_model = "model" in entry.get("denoiser", {})
        model = {**DENOISER_DEFAULTS, **c["denoiser"], **entry.get("denoiser", {})}["model"]
        tiling = TilingSpec(**{**TILING_DEFAULTS, **c["tiling"], **entry.get("tiling", {})})
        for size in entry["sizes"]:
            run = f"{where} ({name}, size {size}), distinv-sharded"
            shape = signal_shape(name, size, **params)
            key = (model, name, shape[1])
            if key not in multiples:
                model_where = f"{where}.denoiser" if own_model else "denoiser"
                multiples[key] = _size_multiple(model, name, shape[1], slurm, model_where, errors)
            if multiples[key] is None:  # unknown here (a factory under SLURM), or already reported
                continue
            try:
                halo = sharded_halo(name, size, **params)
            except ValueError as exc:
                errors.append(f"{run}: {exc}")
                continue
            for world in c["world_sizes"]:
                if tiling.parallel == "domain":
                    problem = _domain_layout_problem(shape, world, multiples[key], halo)
                else:
                    problem = _sharded_layout_problem(shape, world, tiling, multiples[key], c["device"], halo)
                if problem:
                    errors.append(f"{run} at world size {world}: {problem}")
                    break


def _size_multiple(model: str, problem: str, channels: int, slurm: bool, where: str, errors: list[str]) -> int | None:
    """The size multiple of the network the runs of ``problem`` would load from ``model`` (a valid source, see
    :func:`_check_model`), as the tiled denoiser reads it (:func:`~distinv.tiling.planner.size_multiple_of`). A
    shipped or named architecture is built without weights (on the meta device: nothing allocated, nothing
    downloaded); a weights file is read as the runs read it; a factory is called as they call it.

    :return: the multiple; ``None`` when it cannot be known here (a factory under SLURM, whose environment may
        differ) or the network cannot be had (the error, naming ``where``, is added to ``errors``).
    """
    import torch

    from distinv.bench.worker import AUTO_MODELS, model_from_source
    from distinv.denoisers.networks import build_network
    from distinv.denoisers.zoo import load_denoiser, shipped_models
    from distinv.tiling.planner import size_multiple_of

    source = model
    if source == "auto":  # as the worker resolves it (model_from_source)
        source = AUTO_MODELS.get(
            problem, "shipped:drunet-small-colour" if channels == 3 else "shipped:drunet-small-grey"
        )
    shipped, name = shipped_models(), source.removeprefix("shipped:")
    try:
        if name in shipped:
            entry = shipped[name]
            with torch.device("meta"):
                network = build_network(
                    entry["arch"], entry["channels"], entry["arch_kwargs"], entry.get("residual", False)
                )
        elif source.startswith(("download:", "untrained:")):
            try:
                with torch.device("meta"):
                    network = build_network(source.partition(":")[2], channels, {})
            except NotImplementedError:  # a constructor that moves its weights (deepinv's DnCNN): built for real
                network = build_network(source.partition(":")[2], channels, {})
        elif source.startswith("python:"):
            if slurm:
                return None
            network = model_from_source(source, problem, channels, volume=False)
        else:
            network = load_denoiser(source, channels=channels)
    except Exception as exc:  # whatever loading raised, every rank of a run would raise it too
        errors.append(f"{where}.model={model!r}: the network could not be had ({type(exc).__name__}: {exc}).")
        return None
    return size_multiple_of(network)


def _sharded_layout_problem(
    shape: tuple[int, ...], world: int, tiling: TilingSpec, multiple: int, device: str, halo: tuple[int, int]
) -> str | None:
    """Why ``distinv-sharded`` could not run on a signal of ``shape`` at world size ``world``, or None: its denoiser's
    plan computed as :meth:`~distinv.sharded.denoiser.ShardedDenoiser.layout_for` computes it (the same functions,
    the same knobs: :func:`~distinv.bench.engines.tiling_knobs`, the device's window limit), its bands against the
    rows the windows read beyond them (not periodic) and against the physics' ``halo`` (rows above and below,
    periodic), as :func:`~distinv.placements.row_bands.row_halos` compares them."""
    from distinv.bench.engines import tiling_knobs
    from distinv.placements.row_bands import ROWS, check_bounds
    from distinv.sharded.denoiser import band_bounds_of, halo_rows, row_band_patch, row_band_plan
    from distinv.tiling.geometry import TilePlan, validate_tiling
    from distinv.tiling.planner import CPU_MAX_WINDOW_PIXELS, tiling_dims_of

    knobs = tiling_knobs("distinv-sharded", tiling, shape[ROWS:])
    spatial = [shape[d] for d in tiling_dims_of(len(shape), None)]  # the engine tiles every spatial dim
    patch, overlap = knobs["patch_size"], knobs["overlap"]
    max_window_pixels = CPU_MAX_WINDOW_PIXELS if device == "cpu" else None  # DistributedProcessing's "auto"
    try:
        validate_tiling(patch, overlap, multiple)
    except ValueError as exc:  # the tiled denoiser's own rule, whatever the world size
        return f"the tiled denoiser refuses tiling (patch_size={patch!r}, overlap={overlap!r}): {exc}"
    try:
        band_patch = row_band_patch(patch, spatial, world, multiple, overlap)
        plan = TilePlan.build(spatial, world, band_patch, overlap, multiple, max_window_pixels, rows_at_least=world)
        plan = row_band_plan(plan)
        bounds = band_bounds_of(plan)
        check_bounds(bounds, spatial[0], world)
    except ValueError as exc:
        return (
            f"the denoiser's windows (at the network's size multiple {multiple}) cannot be dealt in row bands: {exc} "
            "In this config: fewer ranks (world_sizes), a smaller tiling.patch_size or tiling.overlap, or a larger "
            "size."
        )
    heights = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    above, below = halo_rows(plan, bounds)
    above[0], below[-1] = 0, 0  # the windows stop at the signal's border
    short = [r for r in range(world) if heights[r] < max(above[(r + 1) % world], below[(r - 1) % world])]
    if short:
        return (
            f"bands of {[heights[r] for r in short]} rows (ranks {short}) cannot supply the denoiser's windows their "
            f"halo of {max(above + below)} rows (tiling.overlap={tiling.overlap}, rounded up to the network's size "
            f"multiple {multiple}): use fewer ranks in world_sizes, a smaller tiling.overlap, or a larger size."
        )
    short = [r for r in range(world) if heights[r] < max(halo)]
    if short:
        return (
            f"bands of {[heights[r] for r in short]} rows (ranks {short}) cannot supply the sharded physics its "
            f"halo of {max(halo)} rows ({halo[0]} above and {halo[1]} below each band, for A^T A): use fewer ranks "
            "in world_sizes, a larger size, or operators of a shorter reach (highres_blur: smaller sigma_major "
            "and sigma_minor)."
        )
    return None


def _domain_layout_problem(shape: tuple[int, ...], world: int, multiple: int, halo: tuple[int, int]) -> str | None:
    """Why ``distinv-sharded`` with ``parallel: domain`` could not cut a signal of ``shape`` at world size ``world``,
    or None: its bands start at multiples of the network's size multiple
    (:func:`~distinv.domain.denoiser.band_bounds`; the network's own strides and halos are checked when it is
    built), each at least the physics' ``halo`` tall."""
    from distinv.domain.denoiser import band_bounds
    from distinv.placements.row_bands import ROWS

    try:
        bounds = band_bounds(shape[ROWS], world, multiple, multiple)
    except ValueError as exc:
        return f"the domain-parallel denoiser's bands: {exc}"
    heights = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    if min(heights) < max(halo):
        return (
            f"bands of {min(heights)} rows cannot supply the sharded physics its halo of {max(halo)} rows: use fewer "
            "ranks in world_sizes or a larger size."
        )
    return None


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
        if "seed" in params and not _check_number(
            errors, f"{where}.params.seed", params["seed"], *SEED_RANGE, whole=True, give="a whole number (64 bits)"
        ):
            params = {k: v for k, v in params.items() if k != "seed"}  # reported once, not again by check()
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


def in_range(
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    whole: bool = False,
) -> bool:
    """Whether ``value`` is a finite number between ``low`` and ``high``, the one rule every number of a config
    (and every numeric parameter of a problem) follows.

    :param low, high: the bounds, each included unless ``above`` (``value > low``) or ``below`` (``value < high``);
        ``None``: no bound on that side.
    :param whole: only an int is in range (``3.0`` is not: YAML wrote a float).
    :return: ``False`` for a bool, text, ``.nan``, ``.inf`` or an int no float holds (where ``whole`` is not
        asked), and for a number outside the bounds; else ``True``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
        return False
    if not whole and not _finite(value):
        return False
    if low is not None and (value <= low if above else value < low):
        return False
    return high is None or (value < high if below else value <= high)


def range_text(
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    whole: bool = False,
) -> str:
    """What :func:`in_range` with these arguments accepts, as a fix to give: e.g. ``"a whole number >= 1"``,
    ``"a number > 0"``, ``"a number in (0, 1]"``.

    :return: the phrase, without a final stop.
    """
    kind = "a whole number" if whole else "a number"
    if low is not None and high is not None:
        return f"{kind} in {'(' if above else '['}{low}, {high}{')' if below else ']'}"
    if low is not None:
        return f"{kind} {'>' if above else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if below else '<='} {high}"
    return kind


def number_hint(value: Any) -> str:
    """Why a value that looks like a number is not one a run can use: YAML 1.1 reads ``1e-4`` (no dot) as text,
    ``.nan`` and ``.inf`` are not finite, and an int may be too large for a float.

    :return: the reason in parentheses, after a space, or ``""`` when there is none to give.
    """
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            return f" ({v} is not finite: a run needs a finite number, not .nan or .inf)"
        if _is_int(v) and not _finite(v):
            return " (too large for a float)"
        try:
            number = float(v) if isinstance(v, str) else None
        except ValueError:
            continue
        if number is not None and math.isfinite(number):
            return f" (YAML reads {v} as text: write it with a dot, e.g. {number!r})"
    return ""


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the largest float
        return False


def _check_number(
    errors: list[str],
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    whole: bool = False,
    null: bool = False,
    give: str | None = None,
) -> bool:
    """Append ``key=value: give ...`` to ``errors`` unless ``value`` is in range (:func:`in_range`), or null
    where ``null`` allows it; ``give`` replaces the default fix (:func:`range_text`) with the key's own words.

    :return: whether ``value`` passed.
    """
    if (null and value is None) or in_range(value, low, high, above=above, below=below, whole=whole):
        return True
    fix = give or range_text(low, high, above=above, below=below, whole=whole)
    errors.append(f"{key}={value!r}: give {fix}{number_hint(value)}.")
    return False
