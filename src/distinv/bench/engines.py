"""The engines a benchmark compares, each giving the PnP loop what it calls on the same problem.

- ``distinv``: :func:`distinv.distribute` of the problem's operators (balanced by cost) and of the denoiser
  (replicated iterates).
- ``distinv-sharded``: iterates sharded by rows (:class:`~distinv.placements.row_bands.RowBands`), cut where the
  denoiser's row bands fall: of windows (:class:`~distinv.sharded.denoiser.ShardedDenoiser`), or with ``tiling:
  {parallel: domain}`` aligned to the network's strides (:class:`~distinv.domain.denoiser.DomainParallelDenoiser`:
  no halo recomputed, exact); the problem's spatially
  distributed physics where its operators decompose in space (``Problem.sharded``: highres_blur's
  :class:`~distinv.sharded.blur.ShardedBlur`, tomography_3d's :class:`~distinv.sharded.slabs.SlabStack`), else the
  operator split with the iterate gathered for the physics step alone
  (:class:`~distinv.sharded.gathered.GatheredPhysics`).
- ``deepinv``: deepinv's ``deepinv.distributed`` module on the same process group, with the same tiling
  settings (its defaults where ours are automatic); its collectives are timed like ours.
- ``none``: the untiled single-device baseline: deepinv's ``StackedLinearPhysics`` of all K operators and the
  bare denoiser on the whole image (world size 1 only).

Every engine measures and initialises through an :class:`OperatorView` of the operators it holds, so the
data and the start are the same for all three (noise is seeded per operator).

A training run (:func:`~distinv.bench.training.build_trainee`) builds its engine from the same parts as a PnP run
(:func:`engine_parts`: the operators, and the network distributed with the tiling knobs of :func:`tiling_knobs`).
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from distinv.bench.problems.base import Problem
from distinv.bench.spec import TilingSpec
from distinv.comm.context import DistributedContext
from distinv.comm.gather import sum_over_ranks
from distinv.placements.row_bands import ROWS, RowBands, shard_rows

DEEPINV_PATCH = 256  # deepinv.distributed.distribute's default patch size


@dataclass
class OperatorView:
    """The operators one rank holds under some engine, for :meth:`Problem.measure` and the init recipes:
    ``local_indexes``, ``local_physics``, ``ctx`` (ours, for the sums over ranks) and ``A_adjoint``; ``image``
    gives the shape and dtype of a rank's zero term when it holds no operator."""

    ctx: DistributedContext
    local_indexes: list[int]
    local_physics: list[Any]
    image: torch.Tensor

    def A_adjoint(self, y_local) -> torch.Tensor:  # noqa: N802 - deepinv's name
        terms = [op.A_adjoint(y) for op, y in zip(self.local_physics, y_local, strict=True)]
        return sum_over_ranks(self.ctx, terms, self.image.shape, self.image.dtype, self.ctx.device)


@dataclass
class Engine:
    """What one run of an engine uses: ``physics`` (``A_adjoint``, ``A_adjoint_A``, ``compute_sqnorm``),
    ``denoiser(x, sigma)`` and the :class:`OperatorView` to measure and initialise with; the iterates are
    replicated tensors."""

    name: str
    physics: Any
    denoiser: Any
    view: Any

    def measure(self, problem: Problem) -> list:
        """The measurements the PnP loop takes (this rank's operators')."""
        return problem.measure(self.view)

    def initial(self, problem: Problem, y: list) -> Any:
        return problem.initial(self.view, y)

    def ground_truth(self, problem: Problem) -> Any:
        """The reference PSNR and SSIM are computed against, placed as the iterates are."""
        return problem.ground_truth.to(self.view.ctx.device)

    def replicated(self, x: Any, largest_side: int | None = None) -> torch.Tensor:
        """The whole image on every rank (a collective for sharded iterates: call it on every rank); sharded ones
        are subsampled to at most ``largest_side`` pixels per side (a preview)."""
        return x

    def release(self, problem: Problem) -> None:
        """Drop what the run will not need whole once it has :meth:`ground_truth` (nothing, when iterates are
        replicated)."""


@dataclass
class ShardedEngine(Engine):
    """``distinv-sharded``: iterates, measurements (where the physics is spatial) and reference sharded by rows."""

    spatial: bool = True  # the physics decomposes in space (else: operator split, iterate gathered for it)
    _truth: RowBands | None = field(default=None, repr=False)

    def measure(self, problem: Problem) -> list:
        if self.spatial:
            return problem.measure_sharded(self.physics, self.ground_truth(problem))
        return problem.measure(self.view)

    def initial(self, problem: Problem, y: list) -> RowBands:
        if self.spatial:
            return problem.initial(self.physics, y)
        return self.denoiser.shard(problem.initial(self.view, y))

    def ground_truth(self, problem: Problem) -> RowBands:
        if self._truth is None:  # a copy of the band, so the whole image can go
            self._truth = self.denoiser.shard(problem.ground_truth.to(self.denoiser.ctx.device)).clone()
        return self._truth

    def release(self, problem: Problem) -> None:
        """Each rank keeps its band of the ground truth only (with spatial physics the measurements and the start
        come from the band; previews gather it back after the iterations)."""
        if self.spatial:
            self.ground_truth(problem)
            problem.ground_truth = None

    def replicated(self, x: Any, largest_side: int | None = None) -> torch.Tensor:
        if not isinstance(x, RowBands):
            return x
        side = max(x.shape[ROWS:])
        return x.gather(step=1 if largest_side is None else -(-side // largest_side))


def build_engine(
    name: str, ctx: DistributedContext, problem: Problem, model: torch.nn.Module, tiling: TilingSpec
) -> Engine:
    """The PnP engine ``name`` on ``problem``: its operators (:func:`engine_parts`) and the denoiser ``model``
    distributed the engine's way, tiled by ``tiling`` (:func:`tiling_knobs`).

    :return: an :class:`Engine`; a :class:`ShardedEngine` for ``distinv-sharded``.
    :raises ValueError: for an unknown engine, or ``none`` at a world size above 1.
    """
    if name == "distinv-sharded":
        return _sharded_engine(ctx, problem, model, tiling_knobs(name, tiling, problem.ground_truth.shape[2:]))
    parts = engine_parts(name, ctx, problem, tiling)
    if name == "deepinv":
        return Engine(name, _DeepinvPhysics(parts.physics), parts.distribute(model), parts.view)
    # distinv takes a network for a denoiser only when told (it detects deepinv's denoisers alone)
    options = {"type_object": "denoiser"} if name == "distinv" else {}
    return Engine(name, parts.physics, parts.distribute(model, **options), parts.view)


def _sharded_engine(ctx: DistributedContext, problem: Problem, model: torch.nn.Module, knobs: dict) -> ShardedEngine:
    """``distinv-sharded``: the denoiser dealt in row bands (its windows, or with ``parallel: domain`` the network
    run as one domain over the bands), beside the problem's spatially distributed physics where it has one, else its
    operator split with the iterate gathered for the physics step."""
    from distinv.domain.denoiser import DomainParallelDenoiser
    from distinv.sharded.denoiser import ShardedDenoiser
    from distinv.sharded.gathered import GatheredPhysics

    if knobs.get("parallel") == "domain":
        denoiser = DomainParallelDenoiser(ctx, model)
    else:
        denoiser = ShardedDenoiser(ctx, model, **knobs)
    truth = problem.ground_truth
    if problem.sharded is not None:
        physics = problem.sharded(problem, ctx)
        view = OperatorView(ctx, [], [], truth)  # nothing split by operator
        return ShardedEngine("distinv-sharded", physics, denoiser, view, spatial=True)
    stack = problem.distribute(ctx)
    like = shard_rows(ctx, truth, denoiser.bounds_for(truth.shape))
    return ShardedEngine("distinv-sharded", GatheredPhysics(stack, like), denoiser, stack, spatial=False)


def engine_parts(
    name: str, ctx: DistributedContext, problem: Problem, tiling: TilingSpec, distinv_physics: Any = None
) -> EngineParts:
    """The operators engine ``name`` holds of ``problem`` on this rank and how it tiles a network with ``tiling``.

    :param distinv_physics: ``problem.distribute(ctx)`` when the caller has it already (a training run computes its
        step size on it): engine ``distinv`` holds it instead of distributing the operators again.
    :return: the engine's :class:`EngineParts`.
    :raises ValueError: for ``none`` at a world size above 1; for ``distinv-sharded``, whose operators follow its
        denoiser's row bands (PnP alone: :func:`build_engine` builds it); for an unknown engine.
    """
    knobs = tiling_knobs(name, tiling, problem.ground_truth.shape[2:])
    if name == "distinv":
        physics = problem.distribute(ctx) if distinv_physics is None else distinv_physics
        return EngineParts(name, physics, physics, knobs, ctx)
    if name == "deepinv":
        their_ctx, physics = _deepinv_physics(ctx, problem)
        view = OperatorView(ctx, list(physics.local_indexes), list(physics.local_physics), problem.ground_truth)
        return EngineParts(name, physics, view, knobs, their_ctx)
    if name == "none":
        if ctx.world_size != 1:
            raise ValueError(f"engine='none' is the single-device baseline: world size {ctx.world_size} given.")
        from deepinv.physics import StackedLinearPhysics

        operators = [problem.factory(i, ctx.device, problem.shared) for i in range(problem.num_operators)]
        view = OperatorView(ctx, list(range(problem.num_operators)), operators, problem.ground_truth)
        return EngineParts(name, StackedLinearPhysics(operators), view, knobs, None)
    # tiling_knobs refused any other name: distinv-sharded is left
    raise ValueError(
        "engine='distinv-sharded' runs PnP alone (its operators follow its denoiser's row bands: build_engine builds "
        "it); a training run takes none, distinv or deepinv."
    )


@dataclass
class EngineParts:
    """What engine ``name`` holds of a problem on this rank, for a PnP run (:func:`build_engine`) and a training run
    (:func:`~distinv.bench.training.build_trainee`) alike: its ``physics`` (distinv's distributed operators,
    deepinv's, or deepinv's ``StackedLinearPhysics`` of all K for ``none``), the :class:`OperatorView` to measure
    and initialise with, and its tiling ``knobs`` (:func:`tiling_knobs`), which :meth:`distribute` gives the
    network."""

    name: str
    physics: Any
    view: Any  # an OperatorView (distinv's physics is one)
    knobs: dict[str, Any]
    context: Any  # what the network is distributed on: our context, deepinv's on our group, None for none

    def distribute(self, network: torch.nn.Module, **options: Any) -> Any:
        """``network`` (a denoiser or an unrolled model) distributed the engine's way with its tiling knobs and
        ``options`` (``distinv.distribute``'s or ``deepinv.distributed.distribute``'s); for ``none``, ``network``
        itself, untiled (``options`` are the tiled engines')."""
        if self.name == "distinv":
            from distinv.distribute import distribute

            return distribute(network, self.context, **self.knobs, **options)
        if self.name == "deepinv":
            import deepinv.distributed as theirs

            return theirs.distribute(network, self.context, **self.knobs, **options)
        return network


def deepinv_context(device: torch.device, local_rank: int) -> Any:
    """deepinv's ``DistributedContext``, entered (adopting the process group if there is one) and on ``device``,
    the one this rank's own context chose; left open for the run (it makes nothing to clean up).

    deepinv picks ``cuda:LOCAL_RANK % visible`` from the environment and moves the process there; a launcher that
    sets no ``LOCAL_RANK`` (submitit, srun) would put every rank on GPU 0. ``LOCAL_RANK`` is this rank's local
    rank while it enters, and its device is ours after, whatever it picked.
    """
    import deepinv.distributed as theirs

    their_ctx = theirs.DistributedContext(device_mode="gpu" if device.type == "cuda" else "cpu")
    before = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = str(local_rank)
    try:
        their_ctx.__enter__()
    finally:
        if before is None:
            del os.environ["LOCAL_RANK"]
        else:
            os.environ["LOCAL_RANK"] = before
    their_ctx.device = device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return their_ctx


def _deepinv_physics(ctx: DistributedContext, problem: Problem) -> tuple[Any, Any]:
    """deepinv's context entered on ``ctx``'s group (its collectives timed in ``ctx``) and ``problem``'s operators
    distributed with it: ``(context, physics)``."""
    import deepinv.distributed as theirs

    their_ctx = deepinv_context(ctx.device, ctx.local_rank)
    time_collectives(their_ctx, ctx)
    physics = theirs.distribute(
        problem.factory,
        their_ctx,
        num_operators=problem.num_operators,
        type_object="linear_physics",
        factory_kwargs=problem.shared,
    )
    return their_ctx, physics


def tiling_knobs(engine: str, tiling: TilingSpec, spatial: Sequence[int]) -> dict[str, Any]:
    """How engine ``engine`` reads ``tiling`` on images of ``spatial`` size: the tiling keyword arguments it
    distributes a network with, in PnP runs and training runs alike.

    - ``distinv``, ``distinv-sharded`` with ``parallel: domain``: ``{"parallel": "domain"}`` alone (the
      domain-parallel denoiser has no windows);
    - ``distinv``, ``distinv-sharded``: ``patch_size`` and ``overlap`` as given (``patch_size`` null: distinv plans
      its windows); ``max_batch_size`` only when given, whatever its value, else distinv's default for the device.
    - ``deepinv``: deepinv's default patch (256) where ours is null, fitted to the image (:func:`deepinv_patch`);
      the same ``overlap``; ``max_batch_size`` as given (null: deepinv's default).
    - ``none``: none (the untiled baseline runs the network on the whole image).

    :return: keyword arguments for :func:`distinv.distribute`, :class:`~distinv.sharded.denoiser.ShardedDenoiser`
        or ``deepinv.distributed.distribute``.
    :raises ValueError: for an engine that is none of these.
    """
    if engine in ("distinv", "distinv-sharded") and tiling.parallel == "domain":
        return {"parallel": "domain"}  # no windows: no knobs
    if engine in ("distinv", "distinv-sharded"):
        knobs: dict[str, Any] = {"patch_size": tiling.patch_size, "overlap": tiling.overlap}
        if tiling.max_batch_size is not None:  # 0 too: distinv refuses it, with its own message
            knobs["max_batch_size"] = tiling.max_batch_size
        return knobs
    if engine == "deepinv":
        patch = deepinv_patch(tiling.patch_size or DEEPINV_PATCH, spatial, given=tiling.patch_size is not None)
        return {"patch_size": patch, "overlap": tiling.overlap, "max_batch_size": tiling.max_batch_size}
    if engine == "none":
        return {}
    raise ValueError(f"engine={engine!r}: choose 'distinv', 'distinv-sharded', 'deepinv' or 'none'.")


def deepinv_patch(patch: int, spatial: tuple[int, ...], given: bool) -> int:
    """The patch deepinv's module gets on an image of ``spatial`` size: it refuses a patch as large as the
    image, so its default 256 on a smaller image becomes half the smallest side (a multiple of 8, at least 8),
    which gives every rank of two a window, as distinv's planner would; a patch the user gave is shrunk only as
    far as deepinv needs (the largest multiple of 8 below the smallest side)."""
    smallest = min(spatial)
    if patch < smallest:
        return patch
    if given:
        return max(8, (smallest - 1) // 8 * 8)
    return max(8, smallest // 2 // 8 * 8)


class _DeepinvPhysics:
    """deepinv's distributed physics as the PnP loop calls it: ``compute_sqnorm`` made global (its default
    bounds the norm by the largest local one, which makes PGD's step too long when K > 1), and the local
    measurements handed to ``A_adjoint`` as a plain list (it maps a TensorList whole onto each operator)."""

    def __init__(self, physics):
        self._physics = physics

    def __getattr__(self, name: str):
        return getattr(self._physics, name)

    def compute_sqnorm(self, x0: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._physics.compute_sqnorm(x0, local_only=False, **kwargs)

    def A_adjoint(self, y, **kwargs) -> torch.Tensor:  # noqa: N802 - deepinv's name
        return self._physics.A_adjoint(list(y), **kwargs)


def time_collectives(their_ctx: Any, ctx: DistributedContext) -> None:
    """Count the wall time and bytes of every collective of deepinv's context in ``ctx.comm_seconds``,
    ``ctx.bytes_sent`` and ``ctx.bytes_received``, by the same rules as ours (:mod:`distinv.comm.collectives`); the
    communication itself is untouched. Its collectives go through these methods, but for its ``"broadcast"``
    gather strategy (not its default), which calls ``torch.distributed`` directly and is not counted."""
    for method in ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list"):
        original = getattr(their_ctx, method)

        @functools.wraps(original)
        def timed(*args, _original=original, _method=method, **kwargs):
            sent, received = _tensor_bytes(ctx, _method, args, kwargs)
            with ctx.communicating(sent, received):
                result = _original(*args, **kwargs)
            if _method == "all_gather_object" and ctx.is_distributed:
                moved = ctx.all_gather_bytes(max(len(pickle.dumps(o)) for o in args[0]))
                ctx.bytes_sent, ctx.bytes_received = ctx.bytes_sent + moved, ctx.bytes_received + moved
            elif _method == "broadcast_object_list" and ctx.is_distributed:
                size = sum(len(pickle.dumps(o)) for o in args[0])
                src = args[1] if len(args) > 1 else kwargs.get("src", 0)
                if ctx.rank == src:
                    ctx.bytes_sent += size
                else:
                    ctx.bytes_received += size
            return result

        setattr(their_ctx, method, timed)


def _tensor_bytes(ctx: DistributedContext, method: str, args: tuple, kwargs: dict) -> tuple[int, int]:
    """Bytes sent and received by one of deepinv's tensor collectives on this rank (0 for objects)."""
    x = args[0] if args else kwargs.get("x")
    if not ctx.is_distributed or not isinstance(x, torch.Tensor):
        return 0, 0
    size = x.numel() * x.element_size()
    if method == "all_reduce":
        return (ctx.all_reduce_bytes(size),) * 2
    if method == "all_gather":
        return (ctx.all_gather_bytes(size),) * 2
    if method == "broadcast":
        src = args[1] if len(args) > 1 else kwargs.get("src", 0)
        return (size, 0) if ctx.rank == src else (0, size)
    return 0, 0
