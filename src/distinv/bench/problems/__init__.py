"""Benchmark problems, by name: ``build(name, **params)`` returns a :class:`Problem`."""

from __future__ import annotations

from typing import Any

from . import highres_blur, radio, tomography_2d, tomography_3d
from .base import Problem

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


__all__ = ["BUILDERS", "Problem", "build"]
