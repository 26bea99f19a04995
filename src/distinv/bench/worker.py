"""One run on one rank: build the problem, the engine and the denoiser, reconstruct with PnP (or train an unrolled
network, for a training run), record rows.

:func:`run_rank` is what every rank executes, whoever started it (``torch.distributed.run``'s API locally,
submitit or ``srun`` on a cluster); rank 0 gathers the rows of all ranks and appends them to the results table.
``python -m distinv.bench.worker SPEC_JSON OUTPUT`` runs it from a shell (e.g. under ``srun``).
"""

from __future__ import annotations

import json
import math
import platform
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from distinv.bench.spec import RunSpec, SolverSpec

# what a run measures per row that must be a finite number for the run to count as finished
CHECKED_METRICS = {"pnp": ("psnr", "measurement_residual"), "training": ("loss", "val_psnr")}
AUTO_MODELS = {"radio": "shipped:drunet-small-radio"}  # problems whose images are unlike dead leaves
PREVIEW_SIDE = 2048  # largest side of a sharded run's previews (gathered subsampled)


def load_model(spec: RunSpec, channels: int, volume: bool) -> torch.nn.Module:
    """The run's denoiser (see :func:`model_from_source`)."""
    return model_from_source(spec.denoiser.model, spec.problem, channels, volume)


def model_from_source(source: str, problem: str, channels: int, volume: bool) -> torch.nn.Module:
    """A denoiser for ``problem``: ``auto`` is the shipped model for the problem (radio: the one trained on radio skies,
    otherwise the grey or colour one by the problem's channel count); ``python:module:name``
    calls ``name(channels)`` from an importable module (your own network); anything else goes to
    :func:`~distinv.denoisers.load_denoiser`. Volumes get the 2D model slice by slice along three axes."""
    import importlib

    from distinv.denoisers import load_denoiser
    from distinv.denoisers.slicewise import SlicewiseDenoiser3D

    if source == "auto":
        by_channels = "shipped:drunet-small-colour" if channels == 3 else "shipped:drunet-small-grey"
        source = AUTO_MODELS.get(problem, by_channels)
    if source.startswith("python:"):
        module, _, name = source.removeprefix("python:").partition(":")
        model = getattr(importlib.import_module(module), name)(channels)
    else:
        model = load_denoiser(source, channels=channels)
    return SlicewiseDenoiser3D(model) if volume else model


def sigma_levels(solver: SolverSpec) -> float | list[float]:
    """The denoiser's level: one, or the schedule from ``[start, end]`` over the iterations."""
    from distinv.pnp import sigma_schedule

    sigma = solver.sigma
    if isinstance(sigma, list | tuple):
        return sigma_schedule(sigma[0], sigma[-1], solver.iterations) if len(sigma) == 2 else sigma[0]
    return float(sigma)


def solver_steps(solver: SolverSpec, levels: float | list[float], noise_sigma: float) -> float | list[float] | None:
    """The solver's ``step``, or DPIR's steps ``sigma_k^2 / (coupling * noise^2)`` when ``coupling`` is set."""
    from distinv.pnp import coupled_steps

    if solver.coupling is None:
        return solver.step
    levels = levels if isinstance(levels, list) else [levels] * solver.iterations
    return coupled_steps(levels, noise_sigma, solver.coupling)


def environment(ctx) -> dict:
    """What the numbers depend on besides the config."""
    import deepinv

    import distinv

    hosts: list = [None] * ctx.world_size
    ctx.all_gather_object(hosts, socket.gethostname())
    device_name = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else platform.processor()
    return {
        "torch_version": torch.__version__,
        "deepinv_version": deepinv.__version__,
        "distinv_version": distinv.__version__,
        "git_commit": git_commit(),
        "device_type": ctx.device.type,
        "device_name": device_name or platform.machine(),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else "none",
        "threads_per_rank": torch.get_num_threads(),
        "host_count": len(set(hosts)),
        "hostname": socket.gethostname(),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


class NonFiniteMetricError(RuntimeError):
    """A run's PSNR or loss came out NaN or infinite: the run is recorded as failed (a resume runs it again)."""


def non_finite_cause(rows: list[dict], kind: str) -> str | None:
    """Why a run's rows do not make a finished run: each checked metric (:data:`CHECKED_METRICS`) that is NaN or
    infinite somewhere, with the first iteration (PnP) or step (training) where it is; ``None`` when all are
    finite."""
    unit = "step" if kind == "training" else "iteration"
    causes = []
    for metric in CHECKED_METRICS.get(kind, ("psnr",)):
        measured = [r for r in rows if r.get("step")] if metric == "loss" else rows  # step 0's loss: NaN, none yet
        bad = [r for r in measured if _is_number(r.get(metric)) and not math.isfinite(r[metric])]
        if bad:
            first = min(bad, key=lambda r: r.get(unit) or 0)
            causes.append(f"{metric} is {first[metric]} from {unit} {first.get(unit)}")
    if not causes:
        return None
    fix = "lower training.lr or training.stepsize" if kind == "training" else "lower solver.step or set solver.coupling"
    return f"{'; '.join(causes)}: the run diverged or overflowed, so it is not counted as finished ({fix})."


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@record
def run_rank(spec_json: str, output: str, config_hash: str = "") -> int:
    """Run ``spec`` on this rank (inside whatever launch started it); rank 0 appends the rows to ``output``.
    An exception is also written to ``output/logs/<key>/rank<R>.error.json`` (rank, time, traceback): the
    launcher reads these to name the rank that failed first. Returns 0.

    :raises NonFiniteMetricError: on every rank, when the run's PSNR (or loss, training) is NaN or infinite; rank 0
        records the run as failed instead of writing its rows (:func:`non_finite_cause`)."""
    import os
    import traceback

    try:
        return _run_rank(spec_json, output, config_hash)
    except BaseException as exc:
        rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
        key = RunSpec.from_json(spec_json).key
        path = Path(output) / "logs" / key / f"rank{rank}.error.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record_ = {"rank": rank, "time": time.time(), "error": traceback.format_exc(), "type": type(exc).__name__}
        path.write_text(json.dumps(record_))
        raise


def _run_rank(spec_json: str, output: str, config_hash: str) -> int:
    from distinv import DistributedContext
    from distinv.bench.problems import build
    from distinv.bench.results import append_failure, append_rows, run_row
    from distinv.runtime.memory import process_bytes

    warnings.simplefilter("ignore")
    spec = RunSpec.from_json(spec_json)
    started = time.time()
    with DistributedContext(
        seed=spec.seed,
        device_mode="gpu" if spec.device == "cuda" else "cpu",
        num_threads=spec.threads_per_rank,
        timeout=spec.timeout_s,
        time_collectives=True,  # the table's communication seconds, on GPU too
    ) as ctx:
        if ctx.world_size != spec.world_size:
            raise RuntimeError(f"run {spec.key} wants {spec.world_size} ranks, the launch gave {ctx.world_size}.")
        baseline = process_bytes(ctx.device)  # libraries imported, nothing of the run built yet
        # a file one rank cannot read (a scan, a Measurement Set) fails every rank here, not a later collective
        problem = ctx.run_agreed(
            "building the problem", lambda: build(spec.problem, ctx=ctx, size=spec.size, **spec.params)
        )
        model = load_model(spec, problem.ground_truth.shape[1], problem.ground_truth.ndim == 5).to(ctx.device)
        run = _train if spec.training is not None else _reconstruct
        fields, rows = run(ctx, spec, problem, model, output)
        env = environment(ctx)
        fields["memory_baseline_bytes"] = baseline
        base = run_row(spec, config_hash, "ok", error=None, rank=ctx.rank, started=started, **fields, **env)
        rows = [{**base, **r} for r in rows]
        everyone: list = [None] * ctx.world_size
        ctx.all_gather_object(everyone, rows)
        rows = [row for rank_rows in everyone for row in rank_rows]
        # every rank judges the same gathered rows: all raise together, none waits in a collective
        cause = non_finite_cause(rows, spec.kind)
        if cause is not None:
            if ctx.rank == 0:  # recorded here too for runs no local runner watches (SLURM jobs)
                log_dir = str(Path(output) / "logs" / spec.key)
                error = f"{NonFiniteMetricError.__module__}.NonFiniteMetricError: {cause}"
                failure = run_row(spec, config_hash, "failed", error=error, log_dir=log_dir, started=started)
                append_failure(output, [failure])
            raise NonFiniteMetricError(cause)
        if ctx.rank == 0:
            append_rows(output, rows)
    return 0


def _reconstruct(ctx, spec: RunSpec, problem, model, output: str) -> tuple[dict, list[dict]]:
    """PnP on this rank: the run's fields and one row per iteration (rank 0 also saves the previews)."""
    from distinv.bench.engines import build_engine
    from distinv.bench.progress import write_progress
    from distinv.numerics.metrics import psnr
    from distinv.pnp import pnp

    engine = build_engine(spec.engine, ctx, problem, model, spec.tiling)

    def progress(record, _x) -> None:
        write_progress(output, spec.key, record.iteration, record.psnr)

    with torch.no_grad():
        truth = engine.ground_truth(problem)  # placed as the iterates are (sharded for distinv-sharded)
        scored = problem.has_reference  # else the truth gives the shape only: the data residual scores the run
        engine.release(problem)
        y = engine.measure(problem)
        x0 = engine.initial(problem, y)
        init_psnr = psnr(x0, truth, problem.data_range) if scored else None
        solver = spec.solver
        levels = sigma_levels(solver)
        measurement = y[0] if y else None  # for the preview: the loop keeps none of the K once it has A^T y
        handover = [y]
        del y
        x, records = pnp(
            solver.algorithm,
            engine.physics,
            engine.denoiser,
            handover.pop(),
            x0,
            levels,
            iterations=solver.iterations,
            step=solver_steps(solver, levels, problem.noise_sigma),
            relaxation=solver.relaxation,
            tol=solver.tol,
            cg_iterations=solver.cg_iterations,
            ground_truth=truth if scored else None,  # every rank: metrics cost the same everywhere, none waits
            data_range=problem.data_range,
            ctx=ctx,
            measure_memory=True,
            residual=not scored,
            callback=progress if ctx.rank == 0 else None,
        )
        # measured data: the reconstruction in the field's format (TIFF slices, FITS), each rank its part
        problem.write_results(Path(output) / "reconstructions" / spec.key, x, engine.view)
        # previews want whole images: gathered on every rank (collectives), after the timed iterations; sharded
        # ones subsampled to PREVIEW_SIDE pixels per side (the sizes they are for do not fit a rank gathered whole)
        x, x0, truth = (engine.replicated(t, PREVIEW_SIDE) for t in (x, x0, truth))
        first = engine.replicated(measurement, PREVIEW_SIDE) if measurement is not None else None
    if ctx.rank == 0:
        save_previews(Path(output) / "previews", spec, problem, engine.view, first, x0, x, truth if scored else None)
    return {"init": problem.init_name, "init_psnr": init_psnr}, [asdict(r) for r in records]


def _train(ctx, spec: RunSpec, problem, model, output: str) -> tuple[dict, list[dict]]:
    """Training on this rank: the run's fields and one row per step (step 0: the validation PSNR at the
    start)."""
    from distinv.bench.progress import write_progress
    from distinv.bench.training import build_trainee, train, training_image

    trainee = build_trainee(spec.engine, ctx, problem, model, spec.training, spec.tiling)

    def progress(record) -> None:
        write_progress(output, spec.key, record.step, record.val_psnr)

    def image(step: int) -> torch.Tensor:
        return training_image(spec.problem, spec.size, spec.params, problem.seed + 1 + step)

    records = train(ctx, trainee, problem, image, spec.training, on_step=progress if ctx.rank == 0 else None)
    return {"init": "unrolled model at its start"}, [asdict(r) for r in records]


def save_previews(
    folder: Path, spec: RunSpec, problem, view, y, x0: torch.Tensor, x: torch.Tensor, truth: torch.Tensor
) -> None:
    """``previews/<run key>.png`` (the reconstruction) and, once per comparison group, the group's ground truth,
    one measurement ``y`` (rank 0's first; ``None`` when it has none) and start in ``previews/<group>/`` (no ground
    truth picture when ``truth`` is ``None``)."""
    from distinv.bench.preview import image_picture, measurement_picture, save_pictures

    group = folder / spec.group
    if not (group / "initial.png").exists():
        pictures = {"initial": image_picture(problem, x0)}
        if truth is not None:  # None: a measured scan without a reference
            pictures["ground_truth"] = image_picture(problem, truth)
        if y is not None:
            operator = view.local_physics[0] if view.local_physics else None
            pictures["measurement"] = measurement_picture(problem, operator, y)
        save_pictures(pictures, group)
    save_pictures({spec.key: image_picture(problem, x)}, folder)


if __name__ == "__main__":
    sys.exit(run_rank(*sys.argv[1:]))
