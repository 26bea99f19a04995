"""One run of a benchmark as the engines read it: :class:`RunSpec` and its typed sections (:class:`SolverSpec`,
:class:`DenoiserSpec`, :class:`TilingSpec`, :class:`TrainingSpec`).

Each section's field defaults are the config's defaults, in this one place (:mod:`distinv.bench.config` derives its
``*_DEFAULTS`` from them). The sections hold the values as the YAML gave them: :func:`~distinv.bench.config.validate`
checks the raw values, then :meth:`~distinv.bench.config.Config.runs` builds the sections. Nothing here converts
a value (``1`` stays ``1``, not ``1.0``): a run's key hashes these values, and must stay the key its run had when
the sections were plain dicts, so that results tables written then are still resumed.

The sections live apart from the validator so that the engines, the trainer and the worker read a run without
the YAML rules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from distinv.tiling.planner import DEFAULT_OVERLAP


@dataclass(frozen=True)
class SolverSpec:
    """A PnP run's solver (``solver``, then a problem's own ``solver`` keys)."""

    algorithm: str = "hqs"  # one of distinv.pnp.ALGORITHMS
    iterations: int = 10
    step: float | None = None  # None: 1 / ||A||^2
    coupling: float | None = None  # DPIR's steps sigma_k^2 / (coupling * noise^2) instead of a fixed step
    sigma: float | list[float] = 0.05  # the denoiser's level, or [start, end] of a decreasing schedule
    cg_iterations: int = 5  # conjugate-gradient steps per data prox (hqs, admm)
    relaxation: float = 1.0
    tol: float | None = None  # None: every iteration runs


@dataclass(frozen=True)
class DenoiserSpec:
    """The denoiser's source (see :func:`~distinv.bench.worker.model_from_source`)."""

    model: str = "auto"


@dataclass(frozen=True)
class TilingSpec:
    """The tiled denoiser's knobs as the config gives them; each engine's reading of them is
    :func:`~distinv.bench.engines.tiling_knobs`."""

    patch_size: int | Literal["auto"] | None = None  # None: distinv plans its windows
    overlap: int = DEFAULT_OVERLAP
    max_batch_size: int | Literal["auto"] | None = None  # None: the device's default
    # how distinv's engines distribute the denoiser: "windows" (overlapping windows, the knobs above; deepinv's
    # way) or "domain" (the network run as one domain over the ranks' row bands, exact; the knobs above unused)
    parallel: Literal["windows", "domain"] = "windows"


@dataclass(frozen=True)
class TrainingSpec:
    """A training run's settings (``training``): an unrolled network trained with Adam, one fresh image a step."""

    algorithm: str = "pgd"  # unrolled: pgd or drs
    iterations: int = 4  # unrolled iterations
    steps: int = 20  # optimiser steps, one fresh image each
    lr: float = 1e-4
    sigma: float = 0.03  # the prior's denoiser level
    stepsize: float | None = None  # None: 1 / ||A||^2
    validate_every: int = 5
    checkpoint_iterations: bool = False  # distinv: recompute each unrolled iteration in backward
    checkpoint_batches: str | None = None  # the tiled denoiser: always / never / auto; None: each engine's default


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: a problem at one size, one engine at one world size, one repetition."""

    problem: str
    size: Any
    params: dict
    engine: str
    world_size: int
    repetition: int
    # A training run has no PnP solver: its solver is {} (what its key has hashed since training runs exist).
    solver: SolverSpec | dict
    denoiser: DenoiserSpec
    tiling: TilingSpec
    device: str
    threads_per_rank: int
    timeout_s: float
    seed: int
    training: TrainingSpec | None = None  # a training run's settings; None for PnP

    @property
    def kind(self) -> str:
        """``"training"`` or ``"pnp"``: the table's ``kind`` column."""
        return "pnp" if self.training is None else "training"

    def _defining(self) -> dict:
        fields = asdict(self)  # the sections as the dicts they were before they had types: the same hash
        if fields["training"] is None:  # PnP runs keep the keys they had before training runs existed
            del fields["training"]
        if fields["tiling"]["parallel"] == "windows":  # and the keys they had before the domain denoiser
            del fields["tiling"]["parallel"]
        return fields

    @property
    def key(self) -> str:
        """Stable over runs of the same config (and independent of its other runs): readable, then a hash of
        everything that defines the run."""
        digest = hashlib.sha1(json.dumps(self._defining(), sort_keys=True, default=str).encode()).hexdigest()[:10]
        size = "x".join(map(str, self.size)) if isinstance(self.size, list | tuple) else self.size
        prefix = "train-" if self.training is not None else ""
        return f"{prefix}{self.problem}-{size}-{self.engine}-w{self.world_size}-r{self.repetition}-{digest}"

    @property
    def group(self) -> str:
        """Runs that compare with each other (same problem, size, solver, denoiser): the speedup's scope."""
        fields = {k: v for k, v in self._defining().items() if k not in ("engine", "world_size", "repetition")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def to_json(self) -> str:
        """The run as JSON text, as the launcher hands it to the ranks (:meth:`from_json` reads it back)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        """The run :meth:`to_json` wrote, its sections typed again (the same key).

        :raises ValueError: if ``text`` is not JSON.
        :raises KeyError, TypeError: if it is not a run's (a field missing, or one no run has).
        """
        fields = json.loads(text)
        training = fields["training"]
        fields["solver"] = SolverSpec(**fields["solver"]) if training is None else {}
        fields["denoiser"] = DenoiserSpec(**fields["denoiser"])
        fields["tiling"] = TilingSpec(**fields["tiling"])
        fields["training"] = None if training is None else TrainingSpec(**training)
        return cls(**fields)


def slurm_tasks_per_node(slurm: dict[str, Any], device: str, world_size: int) -> int:
    """Ranks per node of a ``world_size`` run on SLURM, as the config validation, ``--slurm`` (submitit) and
    ``--srun`` all read the config's ``slurm`` section: ``tasks_per_node`` where given, else one per GPU of a node
    (``gpus_per_node``) on ``cuda``, else every rank on one node; never more than the run's ranks."""
    per_node = slurm.get("tasks_per_node") or (slurm.get("gpus_per_node") if device == "cuda" else None)
    return max(1, min(int(per_node or world_size), world_size))
