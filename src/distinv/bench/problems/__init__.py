"""Benchmark problems, by name: ``build(name, **params)`` returns a :class:`Problem`."""

from __future__ import annotations

import inspect
from typing import Any

from distinv.bench.problems import highres_blur, radio, tomography_2d, tomography_3d
from distinv.bench.problems.base import Problem

BUILDERS = {
    "highres_blur": highres_blur.build,
    "tomography_2d": tomography_2d.build,
    "tomography_3d": tomography_3d.build,
    "radio": radio.build,
}


def build(name: str, **params: Any) -> Problem:
    if name not in BUILDERS:
        raise ValueError(f"problem={name!r}: choose one of {sorted(BUILDERS)}.")
    return BUILDERS[name](**params)


def check(name: str, **params: Any) -> None:
    """Raise the error :func:`build` would raise for these parameters, without building anything (no image,
    no operator): unknown problem, unknown parameter, or a value the problem refuses."""
    if name not in BUILDERS:
        raise ValueError(f"problem={name!r}: choose one of {sorted(BUILDERS)}.")
    accepted = [p for p in inspect.signature(BUILDERS[name]).parameters if p != "check_only"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{name} has no parameter {', '.join(map(repr, unknown))}: its parameters are {accepted}.")
    BUILDERS[name](**params, check_only=True)


__all__ = ["BUILDERS", "Problem", "build", "check"]
