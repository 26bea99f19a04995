"""The library's checks of an operator, as PyLops' ``dottest``: one function every operator's test calls.

:func:`dot_test` takes any :class:`~distinv.numerics.operator.LinearOperator` (distinv's stack, its sharded
operators, the lean projectors, a deepinv linear physics) with an image ``x`` and a measurement ``y`` placed as the
operator works on them: replicated tensors, :class:`~distinv.placements.row_bands.RowBands`, a list of K
measurements (replicated) or a :class:`~distinv.placements.measurements.LocalMeasurements` (this rank's; the inner
product is then summed over ranks). Call it on every rank: it communicates as the operator does.
"""

from __future__ import annotations

from typing import Any

import torch
from deepinv.utils.tensorlist import TensorList

from distinv.numerics.operator import LinearOperator
from distinv.placements.measurements import LocalMeasurements
from distinv.placements.vectors import dot, norm


def inner(a: Any, b: Any, ctx: Any = None) -> torch.Tensor:
    """Real part of ``<a, b>`` for images or measurements placed alike: a tensor or row bands, or a list of them
    (the sum over entries); for a :class:`LocalMeasurements` the sum over this rank's entries, then over ranks
    (``ctx``'s all-reduce). A replicated 0-dim tensor (float64)."""
    if isinstance(a, list | tuple | TensorList):
        if len(a) != len(b):
            raise ValueError(f"measurements of {len(a)} and {len(b)} entries: give y as A(x) returns it.")
        total = sum((inner(p, q) for p, q in zip(a, b, strict=True)), torch.zeros((), dtype=torch.float64))
        if isinstance(a, LocalMeasurements) or isinstance(b, LocalMeasurements):
            if ctx is None:
                raise ValueError("LocalMeasurements: give ctx (the operator's context) to sum over ranks.")
            total = ctx.all_reduce(total.to(ctx.device).reshape(1))[0]
        return total.cpu()
    return dot(a, b).double().cpu()


def dot_test(
    op: LinearOperator, x: Any, y: Any, *, rtol: float = 1e-6, normal: bool = True, ctx: Any = None
) -> dict[str, float]:
    """Check that ``A_adjoint`` is the adjoint of ``A`` (``<A x, y> = <x, A^T y>``) and, with ``normal``, that
    ``A_adjoint_A(x)`` equals ``A_adjoint(A(x))``.

    :param x: an image placed and shaped as ``op.A`` takes it (random values are the usual choice).
    :param y: a measurement placed and shaped as ``op.A(x)`` returns it.
    :param rtol: the largest relative mismatch accepted: ``|<Ax, y> - <x, A^T y>| / max(|<Ax, y>|, |<x, A^T y>|)``,
        and ``||A^T A x - A^T (A x)|| / ||A^T (A x)||``. float32 operators pass about 1e-5, float64 ones 1e-12.
    :param ctx: the context that sums a :class:`LocalMeasurements` over ranks (default ``op.ctx``).
    :return: the mismatches, ``{"dot": ..., "normal": ...}`` (``normal`` only when checked).
    :raises AssertionError: naming the check, its mismatch and ``rtol``, when a mismatch exceeds ``rtol``.
    """
    ctx = ctx if ctx is not None else getattr(op, "ctx", None)
    with torch.no_grad():
        forward = op.A(x)
        lhs, rhs = inner(forward, y, ctx), inner(x, op.A_adjoint(y), ctx)
        scale = max(abs(float(lhs)), abs(float(rhs)), torch.finfo(torch.float64).tiny)
        errors = {"dot": abs(float(lhs - rhs)) / scale}
        if normal:
            composed = op.A_adjoint(forward)
            errors["normal"] = float(norm(op.A_adjoint_A(x) - composed)) / max(float(norm(composed)), 1e-300)
    failed = {name: value for name, value in errors.items() if not value <= rtol}
    if failed:
        raise AssertionError(
            f"{type(op).__name__} fails the dot test: mismatches {failed} above rtol={rtol:g} "
            f"(<Ax, y> = {float(lhs):.10g}, <x, A^T y> = {float(rhs):.10g})."
        )
    return errors
