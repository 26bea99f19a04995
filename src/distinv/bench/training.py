"""The benchmark's training half: an unrolled network trained under one engine, one new image per step.

An unrolled PGD or DRS (deepinv's ``BaseOptim(unfold=True)``; trainable step size; the run's denoiser, e.g. the
shipped DRUNet, as its initial PnP prior with trainable weights) is trained with Adam on the mean squared error.
Step ``s`` trains on a fresh image from the problem's own generator (its ``seed`` is the problem's seed ``+ 1 + s``)
and its measurements; the validation image is the problem's own, which no step trains on.

Engines, as for PnP: ``none`` (one process, deepinv's ``StackedLinearPhysics`` and the untiled network),
``distinv`` (:func:`distinv.distribute` of the operators and of the unrolled model) and ``deepinv``
(``deepinv.distributed`` on the same process group). ``checkpoint_batches`` (null: each engine's default) and the
tiling settings go to both tiled engines. Every rank computes the
same replicated loss; the parameters stay identical on every rank.

Per step and rank a :class:`StepRecord`: seconds of forward (model and loss), backward and optimiser step, of
communication (within them), the bytes sent and received, the peak memory the step adds above its start, the loss,
and the validation PSNR every ``validate_every`` steps (and after the first and last).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from distinv.bench.engines import engine_parts
from distinv.bench.problems import build
from distinv.bench.problems.base import Problem
from distinv.bench.spec import TilingSpec, TrainingSpec
from distinv.comm.context import DistributedContext
from distinv.numerics.metrics import psnr
from distinv.runtime.memory import PeakMemory
from distinv.runtime.timing import DeviceTimer


@dataclass
class StepRecord:
    """One training step on one rank (seconds of wall time; bytes above the step's start)."""

    step: int
    loss: float
    forward_s: float
    backward_s: float
    optimizer_s: float
    comm_s: float
    step_s: float
    bytes_sent: int  # by this rank in the step's collectives (see distinv.comm.collectives)
    bytes_received: int
    peak_bytes: int
    elapsed_s: float  # since the first step began, validation excluded
    val_psnr: float | None = None


@dataclass
class Trainee:
    """What one engine trains: ``model(y, physics)``, the ``physics`` it is given, and ``measure(x, seed)``
    giving the measurements of image ``x`` (noise seeded by ``seed``) as the model takes them; ``place(x)`` the
    image as the model's output is placed (replicated, or this rank's band), and ``loss(out, x)`` the loss this rank
    back-propagates with its value (the whole loss: for sharded iterates, this rank's share and their sum)."""

    model: torch.nn.Module
    physics: Any
    measure: Callable[[torch.Tensor, int], Any]
    place: Callable[[torch.Tensor], Any] = lambda x: x
    loss: Callable[[Any, Any], tuple[torch.Tensor, float]] | None = None  # None: the replicated MSE
    takes_physics: bool = True  # deepinv's unrolled models take (y, physics); the sharded one holds its physics

    def __post_init__(self) -> None:
        if self.loss is None:
            self.loss = _replicated_loss

    def output(self, y: Any) -> Any:
        """The model's reconstruction from ``y``."""
        return self.model(y, self.physics) if self.takes_physics else self.model(y)


def _replicated_loss(out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    loss = torch.nn.functional.mse_loss(out, x)
    return loss, loss.item()


def unrolled_model(network: torch.nn.Module, training: TrainingSpec, stepsize: float) -> torch.nn.Module:
    """deepinv's unrolled ``PGD`` or ``DRS`` with ``network`` (made trainable) as its PnP prior.

    :return: the unrolled model (``BaseOptim(unfold=True)``), its step size trainable.
    """
    from deepinv.optim import DRS, PGD
    from deepinv.optim.data_fidelity import L2
    from deepinv.optim.prior import PnP

    network.train()
    for p in network.parameters():
        p.requires_grad_(True)
    algorithm = {"pgd": PGD, "drs": DRS}[training.algorithm]
    return algorithm(
        prior=PnP(network),
        data_fidelity=L2(),
        stepsize=stepsize,
        sigma_denoiser=training.sigma,
        max_iter=training.iterations,
        unfold=True,
        trainable_params=["stepsize"],
    )


def build_trainee(
    engine: str,
    ctx: DistributedContext,
    problem: Problem,
    network: torch.nn.Module,
    training: TrainingSpec,
    tiling: TilingSpec,
) -> Trainee:
    """The unrolled model and physics of ``engine`` on ``problem``, from the engine's parts as PnP runs have them
    (:func:`~distinv.bench.engines.engine_parts`: its operators, and the model distributed with ``tiling``'s knobs).
    The step size (when ``training.stepsize`` is null, ``1 / ||A||^2``, exact, the same for every engine) is
    computed on distinv's physics.

    ``distinv-sharded`` trains an unrolled PGD on row bands (:func:`_sharded_trainee`).

    :return: the :class:`Trainee`.
    :raises ValueError: for an engine other than ``distinv``, ``distinv-sharded``, ``deepinv`` and ``none``.
    """
    ours = problem.distribute(ctx)
    stepsize = training.stepsize
    if stepsize is None:
        stepsize = 1.0 / float(ours.compute_sqnorm(problem.ground_truth.to(ctx.device), verbose=False))
    if engine == "distinv-sharded":
        del ours
        return _sharded_trainee(ctx, problem, network, training, stepsize)
    model = unrolled_model(network, training, stepsize)
    reused = ours if engine == "distinv" else None
    del ours  # the other engines hold their own operators
    parts = engine_parts(engine, ctx, problem, tiling, distinv_physics=reused)
    options = {} if training.checkpoint_batches is None else {"checkpoint_batches": training.checkpoint_batches}
    if engine == "distinv":
        options["checkpoint_iterations"] = training.checkpoint_iterations
    model = parts.distribute(model, **options)
    return Trainee(model, parts.physics, _measurements(engine, ctx, problem, parts.view))


def _sharded_trainee(
    ctx: DistributedContext, problem: Problem, network: torch.nn.Module, training: TrainingSpec, stepsize: float
) -> Trainee:
    """``distinv-sharded``: :class:`~distinv.sharded.unrolled.ShardedUnrolledPGD` on the problem's sharded physics
    and the domain-parallel denoiser (``network``, trainable); images and measurements in its bands; each rank
    back-propagates its share of the loss (:func:`~distinv.sharded.unrolled.sharded_mse`)."""
    from distinv.domain.denoiser import DomainParallelDenoiser
    from distinv.sharded.unrolled import ShardedUnrolledPGD, sharded_mse

    network.train()
    for p in network.parameters():
        p.requires_grad_(True)
    denoiser = DomainParallelDenoiser(ctx, network.to(ctx.device))
    physics = problem.sharded(problem, ctx)
    model = ShardedUnrolledPGD(physics, denoiser, training.iterations, stepsize, training.sigma)

    def loss(out, x) -> tuple[torch.Tensor, float]:
        share = sharded_mse(out, x)
        return share, float(ctx.all_reduce(share.detach().reshape(1))[0])

    return Trainee(
        model,
        physics,
        lambda x, seed: _with_image(problem, x, seed).measure_sharded(physics, denoiser.shard(x)),
        place=denoiser.shard,
        loss=loss,
        takes_physics=False,
    )


def _measurements(
    engine: str, ctx: DistributedContext, problem: Problem, view: Any
) -> Callable[[torch.Tensor, int], Any]:
    """``measure(x, seed)`` giving the measurements as ``engine``'s model takes them: distinv's, this rank's (its
    operators' list); none's, all K (a ``TensorList``); deepinv's, all K on every rank (a ``TensorList``): each rank
    measures with the operators it holds, then one all-gather."""
    from deepinv.utils.tensorlist import TensorList

    if engine == "distinv":
        return lambda x, seed: _with_image(problem, x, seed).measure(view)
    if engine == "none":
        return lambda x, seed: TensorList(_with_image(problem, x, seed).measure(view))
    from distinv.comm.gather import exchange_layout, gather_items

    local = view.local_indexes
    held: list = [None] * ctx.world_size
    ctx.all_gather_object(held, local)
    owners = [0] * problem.num_operators
    for rank, indexes in enumerate(held):
        for i in indexes:
            owners[i] = rank

    def measure(x: torch.Tensor, seed: int) -> TensorList:
        mine = list(_with_image(problem, x, seed).measure(view))
        layout = exchange_layout(ctx, owners, local, mine)
        return TensorList(gather_items(ctx, local, mine, problem.num_operators, "concatenated", layout))

    return measure


def _with_image(problem: Problem, x: torch.Tensor, seed: int) -> Problem:
    return dataclasses.replace(problem, ground_truth=x, seed=seed)


def training_image(spec_problem: str, size: Any, params: dict, seed: int) -> torch.Tensor:
    """A fresh ground truth from the problem's own generator (its ``seed`` parameter)."""
    return build(spec_problem, size=size, **{**params, "seed": seed}).ground_truth


def train(
    ctx: DistributedContext,
    trainee: Trainee,
    problem: Problem,
    image: Callable[[int], torch.Tensor],
    training: TrainingSpec,
    *,
    on_step: Callable[[StepRecord], None] | None = None,
) -> list[StepRecord]:
    """``training.steps`` Adam steps on fresh images ``image(step)``; every rank returns its own records.

    :param image: the ground truth of step ``s`` (the same on every rank; the problem's generator at seed
        ``problem.seed + 1 + s``, so never the validation image, which is the problem's own).
    """
    model = trainee.model
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=training.lr)
    truth = problem.ground_truth.to(ctx.device)
    y_val, placed_truth = trainee.measure(truth, problem.seed), trainee.place(truth)

    def validate() -> float:
        with torch.no_grad():
            return psnr(trainee.output(y_val), placed_truth, problem.data_range)

    records: list[StepRecord] = []
    start_psnr = validate()
    elapsed = 0.0
    for step in range(training.steps):
        x = image(step).to(ctx.device)
        y = trainee.measure(x, problem.seed + 1 + step)
        ctx.barrier()
        comm_before, sent_before, received_before = ctx.comm_seconds, ctx.bytes_sent, ctx.bytes_received
        with PeakMemory(ctx.device) as memory:
            with DeviceTimer(ctx.device) as forward:  # each phase synchronised: GPU work lands in its phase
                optimiser.zero_grad(set_to_none=True)
                loss, loss_value = trainee.loss(trainee.output(y), trainee.place(x))
            with DeviceTimer(ctx.device) as backward:
                loss.backward()
            with DeviceTimer(ctx.device) as update:
                optimiser.step()
        step_s = forward.seconds + backward.seconds + update.seconds
        comm_s, sent, received = (
            ctx.comm_seconds - comm_before,
            ctx.bytes_sent - sent_before,
            ctx.bytes_received - received_before,
        )
        elapsed += step_s
        last = step == training.steps - 1
        val = validate() if last or (step + 1) % training.validate_every == 0 else None
        record = StepRecord(
            step=step + 1,
            loss=loss_value,
            forward_s=forward.seconds,
            backward_s=backward.seconds,
            optimizer_s=update.seconds,
            comm_s=comm_s,
            step_s=step_s,
            bytes_sent=sent,
            bytes_received=received,
            peak_bytes=memory.peak_bytes,
            elapsed_s=elapsed,
            val_psnr=val,
        )
        records.append(record)
        if on_step is not None:
            on_step(record)
    start = StepRecord(0, float("nan"), 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0.0, start_psnr)
    return [start, *records]
