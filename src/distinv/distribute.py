"""distribute(): recognise a deepinv object and wrap it in the distributed class that serves it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from deepinv.optim.data_fidelity import DataFidelity, StackedPhysicsDataFidelity
from deepinv.optim.optimizers import BaseOptim
from deepinv.physics import LinearPhysics, Physics, StackedPhysics

from distinv.comm.context import DistributedContext
from distinv.comm.replicated import DistributedReplicatedParameters
from distinv.physics.fidelity import DistributedDataFidelity
from distinv.physics.linear import DistributedStackedLinearPhysics
from distinv.physics.stack import DistributedStackedPhysics
from distinv.runtime.balance import assign_by_cost
from distinv.tiling.planner import DEFAULT_OVERLAP
from distinv.tiling.processing import DistributedProcessing
from distinv.tiling.strategies import DistributedSignalStrategy

TypeObject = Literal["auto", "physics", "linear_physics", "data_fidelity", "denoiser", "module", "parameters"]
TYPE_OBJECTS = ("auto", "physics", "linear_physics", "data_fidelity", "denoiser", "module", "parameters")


def distribute(
    object: Any,
    ctx: DistributedContext,
    *,
    num_operators: int | None = None,
    type_object: TypeObject = "auto",
    dtype: torch.dtype | None = torch.float32,
    gather_strategy: Literal["concatenated", "broadcast", "naive"] = "concatenated",
    shared: Any = None,
    factory_kwargs: Any = None,
    operator_costs: Sequence[float] | None = None,
    check_replicated: bool = False,
    tiling_strategy: Literal["overlap_tiling", "basic"] | DistributedSignalStrategy | None = "overlap_tiling",
    patch_size: int | Sequence[int] | Literal["auto"] | None = None,
    overlap: int | Sequence[int] = DEFAULT_OVERLAP,
    tiling_dims: int | Sequence[int] | None = None,
    max_batch_size: int | Literal["auto"] | None = None,
    size_multiple: int | None = None,
    max_window_pixels: int | Literal["auto"] | None = "auto",
    memory_budget: int | str | None = None,
    parallel: Literal["windows", "domain"] = "windows",
    **kwargs: Any,
) -> DistributedStackedPhysics | DistributedDataFidelity | DistributedProcessing:
    """Distribute a deepinv object over the ranks of ``ctx``.

    :param object: a deepinv denoiser or prior (or a callable ``f(x, sigma)`` with
        ``type_object="denoiser"``), a ``StackedPhysics``/``StackedLinearPhysics``, a list of ``Physics``, a factory
        ``factory(index, device, shared) -> Physics`` (with ``num_operators``; a rank builds only what it owns),
        a ``DataFidelity`` (or a list / ``StackedPhysicsDataFidelity``, one per operator, or a factory).
    :param ctx: an entered :class:`DistributedContext` (``with DistributedContext() as ctx:``).
    :param num_operators: number of operators ``K``; required with a factory, checked otherwise.
    :param type_object: ``"auto"`` (detect; a factory's kind is read from the first object each rank builds and
        agreed over ranks), ``"physics"``, ``"linear_physics"``, ``"data_fidelity"``, ``"denoiser"``, ``"module"``
        (an unrolled ``BaseOptim(unfold=True)``, distributed in place) or ``"parameters"`` (replicated trainable
        parameters, their gradients averaged over ranks).
    :param gather_strategy: ``"concatenated"`` (default), ``"broadcast"`` or ``"naive"``; see
        :mod:`distinv.comm.gather`.
    :param shared: object passed as the third argument of every factory call (``factory_kwargs`` is
        deepinv's name for it and is accepted too).
    :param operator_costs: relative cost per operator, to balance operators over ranks (default round-robin).
    :param check_replicated: verify on every call that the image is the same on all ranks (a checksum).
    :param tiling_strategy: for a denoiser: ``"overlap_tiling"`` (default), ``"basic"`` (no halo) or a
        :class:`~distinv.tiling.strategies.DistributedSignalStrategy`.
    :param patch_size: for a denoiser: owned size of a window per dim; ``None`` (default, unlike deepinv's 256)
        lets the plan pick the fewest, largest windows within ``max_window_pixels`` (on CPU, windows of at most
        384Ki pixels by default), a multiple of the world size; ``"auto"``: measured, within ``memory_budget``.
    :param overlap: for a denoiser: halo width where windows meet, in pixels (default 32).
    :param tiling_dims: for a denoiser: the dims to cut (default: all spatial dims).
    :param max_batch_size: for a denoiser: most windows per network call (``None``: 1 on CPU, all on GPU;
        ``"auto"``: measured).
    :param size_multiple: for a denoiser: the network's size multiple (default: 8 for DRUNet, else 1).
    :param max_window_pixels: for a denoiser: the largest window when ``patch_size=None`` (``"auto"``: 384Ki
        pixels on CPU, no limit on GPU).
    :param memory_budget: for a denoiser with ``"auto"`` knobs: bytes (or ``"2GB"``) per rank (default: half
        the free GPU memory, or the host's available memory shared by its ranks).
    :param parallel: for a denoiser: ``"windows"`` (default, deepinv's way: overlapping windows, the knobs above)
        or ``"domain"``: the network run as one domain, each rank its band of rows, the rows each convolution reads
        exchanged with the neighbours, exact for any receptive field (:mod:`distinv.domain.denoiser`; deepinv's
        DRUNet, UNet and DnCNN; the window knobs do not apply).
    :param kwargs: passed to the distributed class (e.g. ``broadcast_shared=False``).
    :return: a :class:`DistributedStackedLinearPhysics` / :class:`DistributedStackedPhysics` (usable where a
        deepinv ``StackedLinearPhysics`` is), a :class:`DistributedDataFidelity`, or a
        :class:`DistributedProcessing` (usable where the denoiser is).
    """
    if not isinstance(ctx, DistributedContext):
        raise TypeError(
            f"ctx must be a distinv.DistributedContext, got {type(ctx).__name__}: "
            "use `with DistributedContext() as ctx: distribute(obj, ctx)`."
        )
    if not getattr(ctx, "_entered", False):
        raise RuntimeError("ctx is not entered: use `with DistributedContext() as ctx:` before distribute().")
    if type_object not in TYPE_OBJECTS:
        raise ValueError(f"type_object={type_object!r}: use one of {TYPE_OBJECTS}.")
    if shared is not None and factory_kwargs is not None and shared is not factory_kwargs:
        raise ValueError("Give the factory's shared object once: `shared=` or `factory_kwargs=`, not both.")
    shared = shared if shared is not None else factory_kwargs
    if type_object == "auto" and num_operators is not None and _is_factory(object):
        type_object, object, shared = _factory_kind(object, ctx, num_operators, shared, operator_costs, kwargs)
        if type_object == "data_fidelity":
            kwargs.pop("broadcast_shared")
    if type_object == "auto":
        type_object = _detect_type(object)
    if type_object == "parameters":
        return _replicated_parameters(object, ctx, **kwargs)
    if type_object == "module":
        from distinv.unrolled import distribute_unrolled

        options = dict(tiling_strategy=tiling_strategy, patch_size=patch_size, overlap=overlap)
        options |= dict(tiling_dims=tiling_dims, max_batch_size=max_batch_size, size_multiple=size_multiple)
        options |= dict(max_window_pixels=max_window_pixels, memory_budget=memory_budget, parallel=parallel)
        return distribute_unrolled(object, ctx, **options, **kwargs)

    if type_object == "denoiser" and parallel == "domain":
        from distinv.domain.denoiser import DomainParallelDenoiser

        return DomainParallelDenoiser(ctx, object)
    if type_object == "denoiser" and parallel != "windows":
        raise ValueError(f"parallel={parallel!r}: use 'windows' (overlapping windows) or 'domain'.")
    if type_object == "denoiser":
        return DistributedProcessing(
            ctx,
            object,
            tiling_strategy=tiling_strategy,
            patch_size=patch_size,
            overlap=overlap,
            tiling_dims=tiling_dims,
            max_batch_size=max_batch_size,
            size_multiple=size_multiple,
            max_window_pixels=max_window_pixels,
            memory_budget=memory_budget,
            **kwargs,
        )
    if type_object == "data_fidelity":
        return DistributedDataFidelity(ctx, object, num_operators=num_operators, factory_kwargs=shared, **kwargs)

    factory, count = _physics_factory(object, num_operators)
    cls = DistributedStackedLinearPhysics if type_object == "linear_physics" else DistributedStackedPhysics
    return cls(
        ctx,
        count,
        factory,
        factory_kwargs=shared,
        dtype=dtype,
        gather_strategy=gather_strategy,
        operator_costs=operator_costs,
        check_replicated=check_replicated,
        **kwargs,
    )


def _detect_type(obj: Any) -> str:
    if isinstance(obj, torch.nn.Parameter) or (
        isinstance(obj, (list, tuple)) and obj and all(isinstance(p, torch.nn.Parameter) for p in obj)
    ):
        return "parameters"
    if isinstance(obj, BaseOptim):
        return "module"
    if isinstance(obj, StackedPhysics):
        return "linear_physics" if all(isinstance(p, LinearPhysics) for p in obj.physics_list) else "physics"
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(p, Physics) for p in obj):
        return "linear_physics" if all(isinstance(p, LinearPhysics) for p in obj) else "physics"
    if isinstance(obj, (DataFidelity, StackedPhysicsDataFidelity)):
        return "data_fidelity"
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(d, DataFidelity) for d in obj):
        return "data_fidelity"
    if _is_denoiser(obj):
        return "denoiser"
    if isinstance(obj, (list, tuple)) and not obj:
        raise ValueError("Cannot distribute an empty list: give at least one operator.")
    if isinstance(obj, torch.nn.Module):
        raise ValueError(
            f"Cannot auto-detect generic torch.nn.Module ({type(obj).__name__}) for distribute(): give an unrolled "
            "deepinv optimiser (BaseOptim with unfold=True), a denoiser (or type_object='denoiser' for any network "
            "f(x, sigma)), physics, a data fidelity, or parameters."
        )
    if callable(obj):
        raise ValueError(
            "A factory needs num_operators=K (its type is then read from the first operator each rank builds), "
            "or type_object='denoiser' for a callable f(x, sigma)."
        )
    raise TypeError(
        f"distribute() does not know how to distribute a {type(obj).__name__}: give a StackedPhysics, a list "
        "of Physics, a DataFidelity, or a factory with type_object and num_operators."
    )


def _is_factory(obj: Any) -> bool:
    """A plain callable building operators, not a deepinv object that is callable itself (a ``DataFidelity``,
    ``Physics`` or network is a ``torch.nn.Module``; ``distribute(L2(), ctx, num_operators=3)`` is one fidelity
    for three operators)."""
    return callable(obj) and not isinstance(obj, torch.nn.Module) and not _is_denoiser(obj)


def _is_denoiser(obj: Any) -> bool:
    from deepinv.models import Denoiser
    from deepinv.optim.prior import Prior

    return isinstance(obj, (Denoiser, Prior))


def _physics_factory(obj: Any, num_operators: int | None) -> tuple[Callable, int]:
    """A factory and the operator count for any accepted physics input."""
    if isinstance(obj, StackedPhysics):
        obj = obj.physics_list
    if isinstance(obj, (list, tuple)):
        if num_operators is not None and num_operators != len(obj):
            raise ValueError(f"num_operators={num_operators} but {len(obj)} operators were given.")
        for i, p in enumerate(obj):
            if not isinstance(p, Physics):
                raise TypeError(f"Operator {i} is a {type(p).__name__}, not a deepinv Physics.")
        operators = list(obj)
        return (lambda index, device, shared: operators[index].to(device)), len(operators)
    if callable(obj):
        if num_operators is None:
            raise ValueError("num_operators is required with a factory: distribute(factory, ctx, num_operators=K).")
        return obj, num_operators
    raise TypeError(f"Expected physics operators or a factory, got {type(obj).__name__}.")


def _replicated_parameters(params: Any, ctx: DistributedContext, average: bool = True):
    """deepinv's ``distribute(parameters)``: the parameters, on ``ctx``'s device, whose gradients are averaged over
    ranks after each backward pass (hooks removable through ``parameter.replicated.remove_hooks()``)."""
    single = isinstance(params, torch.nn.Parameter)
    listed = [params] if single else list(params)
    moved = []
    for i, p in enumerate(listed):
        if not isinstance(p, torch.nn.Parameter):
            raise TypeError(f"parameters[{i}] is a {type(p).__name__}: give torch.nn.Parameter objects.")
        moved.append(p if p.device == ctx.device else torch.nn.Parameter(p.data.to(ctx.device), p.requires_grad))
    sync = DistributedReplicatedParameters(ctx, moved, average=average)
    for p in moved:
        p.replicated = sync
    return moved[0] if single else moved


def _factory_kind(
    factory: Callable, ctx: DistributedContext, num_operators: int, shared: Any, costs: Any, kwargs: dict
) -> tuple[str, Callable, Any]:
    """The kind of a factory's objects, read from the first one each rank builds and agreed over ranks (a rank
    that owns none learns it from the others); returns the kind, a factory that hands out the object already
    built, and the shared object (broadcast from rank 0 here, once)."""
    if kwargs.get("broadcast_shared", True) and shared is not None and ctx.is_distributed:
        shared = ctx.broadcast_shared(shared, src=0)
    kwargs["broadcast_shared"] = False
    owned = assign_by_cost(costs, num_operators, ctx.world_size)[ctx.rank]
    built = {}

    def build_first() -> tuple[None, list[int]]:
        if not owned:
            return None, [0]
        first = built[owned[0]] = factory(owned[0], ctx.device, shared)
        return None, [next((c for kind, c in FACTORY_KINDS if isinstance(first, kind)), -1)]

    _, agreed = ctx.run_agreeing("building the first operator (type detection)", build_first, width=1)
    codes = {row[0] for row in agreed} - {0}
    if not codes or -1 in codes or (1 in codes and len(codes) > 1):
        raise TypeError(
            "The factory's objects are not all deepinv Physics or all DataFidelity: return one kind, or pass "
            "type_object explicitly."
        )
    kind = {frozenset({3}): "linear_physics", frozenset({1}): "data_fidelity"}.get(frozenset(codes), "physics")
    return kind, (lambda i, device, shared: built.pop(i) if i in built else factory(i, device, shared)), shared


# (class, code) checked in order: a LinearPhysics is a Physics too.
FACTORY_KINDS = ((LinearPhysics, 3), (Physics, 2), (DataFidelity, 1))
