"""The engines a benchmark compares, each giving the PnP loop what it calls on the same problem.

- ``distinv``: :func:`distinv.distribute` of the problem's operators (balanced by cost) and of the denoiser
  (replicated iterates).
- ``distinv-sharded``: iterates sharded by rows (:class:`~distinv.placements.row_bands.RowBands`), cut where the
  denoiser's row bands of windows fall (:class:`~distinv.sharded.denoiser.ShardedDenoiser`); the problem's spatially
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
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass, field
from typing import Any

import torch

from distinv.bench.problems.base import Problem
from distinv.comm.context import DistributedContext
from distinv.comm.gather import sum_over_ranks
from distinv.placements.row_bands import ROWS, RowBands, shard_rows

DEEPINV_PATCH, DEEPINV_OVERLAP = 256, 64  # deepinv.distributed.distribute's defaults


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


def build_engine(name: str, ctx: DistributedContext, problem: Problem, model: torch.nn.Module, tiling: dict) -> Engine:
    """Distribute (or not) the problem's operators and the denoiser ``model`` the way engine ``name`` does.

    :param tiling: ``patch_size``, ``overlap`` and ``max_batch_size`` for the tiled denoiser (``patch_size``
        ``None``: distinv plans its windows itself, deepinv gets its default 256).
    """
    if name == "distinv":
        from distinv.distribute import distribute

        physics = problem.distribute(ctx)
        denoiser = distribute(model, ctx, type_object="denoiser", **_distinv_tiling(tiling))
        return Engine(name, physics, denoiser, physics)
    if name == "distinv-sharded":
        return _sharded_engine(ctx, problem, model, tiling)
    if name == "deepinv":
        return _deepinv_engine(ctx, problem, model, tiling)
    if name == "none":
        if ctx.world_size != 1:
            raise ValueError(f"engine='none' is the single-device baseline: world size {ctx.world_size} given.")
        from deepinv.physics import StackedLinearPhysics

        operators = [problem.factory(i, ctx.device, problem.shared) for i in range(problem.num_operators)]
        view = OperatorView(ctx, list(range(problem.num_operators)), operators, problem.ground_truth)
        return Engine(name, StackedLinearPhysics(operators), model, view)
    raise ValueError(f"engine={name!r}: choose 'distinv', 'distinv-sharded', 'deepinv' or 'none'.")


def _sharded_engine(ctx: DistributedContext, problem: Problem, model: torch.nn.Module, tiling: dict) -> ShardedEngine:
    from distinv.sharded.denoiser import ShardedDenoiser
    from distinv.sharded.gathered import GatheredPhysics

    denoiser = ShardedDenoiser(ctx, model, **_distinv_tiling(tiling))
    truth = problem.ground_truth
    if problem.sharded is not None:
        physics = problem.sharded(problem, ctx)
        view = OperatorView(ctx, [], [], truth)  # nothing split by operator
        return ShardedEngine("distinv-sharded", physics, denoiser, view, spatial=True)
    stack = problem.distribute(ctx)
    like = shard_rows(ctx, truth, denoiser.bounds_for(truth.shape))
    return ShardedEngine("distinv-sharded", GatheredPhysics(stack, like), denoiser, stack, spatial=False)


def _distinv_tiling(tiling: dict) -> dict:
    kwargs = {"patch_size": tiling.get("patch_size"), "overlap": tiling.get("overlap", 32)}
    if tiling.get("max_batch_size") is not None:  # else distinv's default for the device; 0 is refused there
        kwargs["max_batch_size"] = tiling["max_batch_size"]
    return kwargs


def _deepinv_engine(ctx: DistributedContext, problem: Problem, model: torch.nn.Module, tiling: dict) -> Engine:
    setup = deepinv_setup(ctx, problem, tiling)
    denoiser = setup.distribute(model, max_batch_size=tiling.get("max_batch_size"))
    physics = setup.physics
    view = OperatorView(ctx, list(physics.local_indexes), list(physics.local_physics), problem.ground_truth)
    return Engine("deepinv", _DeepinvPhysics(physics), denoiser, view)


@dataclass
class DeepinvSetup:
    """deepinv's module on our process group for one problem: its context (collectives timed in ours), its
    distributed physics, and the tiling it gets (``patch``, ``overlap``)."""

    context: Any
    physics: Any
    patch: int
    overlap: int

    def distribute(self, model: torch.nn.Module, **options: Any) -> Any:
        """``deepinv.distributed.distribute(model)`` with this setup's tiling (a denoiser or an unrolled model)."""
        import deepinv.distributed as theirs

        return theirs.distribute(model, self.context, patch_size=self.patch, overlap=self.overlap, **options)


def deepinv_setup(ctx: DistributedContext, problem: Problem, tiling: dict) -> DeepinvSetup:
    """Enter deepinv's context on ``ctx``'s group and distribute ``problem``'s operators with it; the patch and
    overlap its denoiser gets from ``tiling`` (its defaults where ours are automatic)."""
    import deepinv.distributed as theirs

    their_ctx = theirs.DistributedContext(device_mode="gpu" if ctx.device.type == "cuda" else "cpu")
    their_ctx.__enter__()  # adopts our process group; left open for the run (it made nothing to clean up)
    time_collectives(their_ctx, ctx)
    physics = theirs.distribute(
        problem.factory,
        their_ctx,
        num_operators=problem.num_operators,
        type_object="linear_physics",
        factory_kwargs=problem.shared,
    )
    patch = tiling.get("patch_size") or DEEPINV_PATCH
    overlap = tiling.get("overlap") if tiling.get("overlap") is not None else DEEPINV_OVERLAP
    patch = deepinv_patch(patch, problem.ground_truth.shape[2:], given=tiling.get("patch_size") is not None)
    return DeepinvSetup(their_ctx, physics, patch, overlap)


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
