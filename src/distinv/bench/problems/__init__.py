"""Benchmark problems, by name: ``build(name, **params)`` returns a :class:`Problem`."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from distinv.bench.problems import ct_scan, highres_blur, radio, tomography_2d, tomography_3d
from distinv.bench.problems.base import Problem

if TYPE_CHECKING:
    from distinv.comm.collectives import Collectives

MODULES = {
    "highres_blur": highres_blur,
    "tomography_2d": tomography_2d,
    "tomography_3d": tomography_3d,
    "radio": radio,
    "ct_scan": ct_scan,
}
BUILDERS = {name: module.build for name, module in MODULES.items()}


def build(name: str, ctx: Collectives | None = None, **params: Any) -> Problem:
    """Problem ``name`` built from ``params``.

    :param ctx: the ranks that build it together (default: this process alone), handed to the builders that read
        a measured file's plan in parts (``radio`` with ``ms:``): then every rank of ``ctx`` must call this.
    """
    if name not in BUILDERS:
        raise ValueError(f"problem={name!r}: choose one of {sorted(BUILDERS)}.")
    builder = BUILDERS[name]
    if ctx is not None and "ctx" in inspect.signature(builder).parameters:
        params = {**params, "ctx": ctx}
    return builder(**params)


def check(name: str, **params: Any) -> None:
    """Raise the error :func:`build` would raise for these parameters, without building anything (no image,
    no operator): unknown problem, unknown parameter, or a value the problem refuses."""
    if name not in BUILDERS:
        raise ValueError(f"problem={name!r}: choose one of {sorted(BUILDERS)}.")
    accepted = [p for p in inspect.signature(BUILDERS[name]).parameters if p not in ("check_only", "ctx")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{name} has no parameter {', '.join(map(repr, unknown))}: its parameters are {accepted}.")
    BUILDERS[name](**params, check_only=True)


def signal_shape(name: str, size: Any, **params: Any) -> tuple[int, ...]:
    """The shape ``(1, C, *spatial)`` of problem ``name``'s ground truth at ``size``, without building anything
    (the parameters passed :func:`check`).

    :raises ValueError: for an unknown problem or a size it refuses.
    """
    if name not in MODULES:
        raise ValueError(f"problem={name!r}: choose one of {sorted(MODULES)}.")
    return MODULES[name].signal_shape(size, **params)


def sharded_halo(name: str, size: Any, **params: Any) -> tuple[int, int]:
    """Rows above and below its band that problem ``name``'s spatially distributed physics (``Problem.sharded``)
    reads, periodically, for the ``distinv-sharded`` engine: ``(0, 0)`` for a problem without one (its operators
    see the gathered iterate: no halo). Nothing is built but what the halo follows from (e.g. blur kernels).

    :raises ValueError: for an unknown problem, or parameters its sharded physics refuses at ``size``.
    """
    if name not in MODULES:
        raise ValueError(f"problem={name!r}: choose one of {sorted(MODULES)}.")
    halo = getattr(MODULES[name], "sharded_halo", None)
    return (0, 0) if halo is None else halo(size, **params)


__all__ = ["BUILDERS", "MODULES", "Problem", "build", "check", "sharded_halo", "signal_shape"]
