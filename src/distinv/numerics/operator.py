"""The one operator protocol: forward, adjoint, normal operator and norm, as PyLops' ``LinearOperator`` has them.

Every linear operator of distinv implements it: the operator-split stack
(:class:`~distinv.physics.linear.DistributedStackedLinearPhysics`), the sharded operators
(:class:`~distinv.sharded.blur.ShardedBlur`, :class:`~distinv.sharded.slabs.SlabStack`,
:class:`~distinv.sharded.gathered.GatheredPhysics`) and the lean projectors
(:class:`~distinv.operators.parallel_beam.ParallelBeam`, :class:`~distinv.operators.cone_beam.ConeBeam`, through
deepinv's ``LinearPhysics``); deepinv's own linear physics fit it too. :func:`distinv.testing.dot_test` checks any
of them. :class:`NormalEquations` gives an operator that has only ``A`` and ``A_adjoint`` (or its own cheaper
``A_adjoint_A``) the rest: the norm by power iteration and the shifted normal solve by conjugate gradient.

Vectors are placed as the operator works on them (replicated tensors or row bands: see
:mod:`distinv.placements.vectors`); a measurement is what ``A`` returns (a tensor, or one entry per operator).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from distinv.numerics.least_squares import solve_normal as solve_normal_equations
from distinv.numerics.linalg import SolveInfo, power_iteration
from distinv.placements.vectors import Vector


@runtime_checkable
class LinearOperator(Protocol):
    """``A``: images to measurements; ``A_adjoint``: its exact adjoint; ``A_adjoint_A``: the normal operator;
    ``compute_sqnorm(x0)``: ``||A||_2^2`` for images shaped (and placed) like ``x0``, a replicated 0-dim tensor.
    distinv's operators also say how their images are placed, ``image_placement``: ``"replicated"`` or ``"row
    bands"`` (:func:`distinv.placements.vectors.check_placement`)."""

    def A(self, x: Any) -> Any: ...  # noqa: N802 - deepinv's names

    def A_adjoint(self, y: Any) -> Any: ...  # noqa: N802

    def A_adjoint_A(self, x: Any) -> Any: ...  # noqa: N802

    def compute_sqnorm(self, x0: Any, **kwargs: Any) -> torch.Tensor: ...


class NormalEquations:
    """What follows from ``A`` and ``A_adjoint``: the normal operator (override it where a cheaper one exists),
    ``||A||^2`` by power iteration on it, and ``(A^T A + shift I) x = rhs`` by conjugate gradient."""

    def A_adjoint_A(self, x: Vector) -> Vector:  # noqa: N802 - deepinv's name
        """``A^T A x``, placed as ``x``."""
        return self.A_adjoint(self.A(x))

    def compute_sqnorm(self, x0: Vector, max_iter: int = 100, tol: float = 1e-3, **_: Any) -> torch.Tensor:
        """``||A||_2^2`` for signals placed and shaped like ``x0`` (values ignored): power iteration from a
        fixed-seed start (the same whatever the world size), a replicated 0-dim tensor."""
        with torch.no_grad():
            value, _ = power_iteration(self.A_adjoint_A, x0, max_iter, tol)
        return value

    def solve_normal(
        self,
        rhs: Vector,
        shift: float = 0.0,
        *,
        x0: Vector | None = None,
        max_iter: int = 100,
        tol: float | None = None,
        warn: bool = True,
    ) -> tuple[Vector, SolveInfo]:
        """``(A^T A + shift I) x = rhs`` by conjugate gradient from ``x0`` (default zeros): ``x`` placed as ``rhs``,
        and how the solve ended (a RuntimeWarning when ``warn`` and CG stops above ``tol``, default 1e-6)."""
        return solve_normal_equations(
            self.A_adjoint_A, rhs, shift, circulant=False, spectrum=None, x0=x0, max_iter=max_iter, tol=tol, warn=warn
        )


def solve_shifted_normal(
    op: LinearOperator, rhs: Vector, shift: float, x0: Vector | None, max_iter: int, tol: float
) -> tuple[Vector, SolveInfo]:
    """``(A^T A + shift I) x = rhs`` with the operator's own solver where it has one (distinv's operators: the
    closed form for a circulant stack, else CG), else CG on ``op.A_adjoint_A`` (any deepinv linear physics); no
    warning when CG stops at ``max_iter`` (an inner solve of a fixed budget, as in HQS).

    :return: ``x`` placed as ``rhs``, and how the solve ended.
    """
    solve = getattr(op, "solve_normal", None)
    if solve is not None:
        return solve(rhs, shift, x0=x0, max_iter=max_iter, tol=tol, warn=False)
    return solve_normal_equations(
        op.A_adjoint_A, rhs, shift, circulant=False, spectrum=None, x0=x0, max_iter=max_iter, tol=tol, warn=False
    )
