"""Iterative linear algebra: conjugate gradient and power iteration.

The operator may be distributed (each call an all-reduce). The vectors are replicated tensors, or
:class:`~distinv.placements.row_bands.RowBands` (sharded by rows), whose inner products and norms are one all-reduce of
a few numbers; the solvers see them only through :mod:`distinv.placements.vectors`. Either way every rank holds
bitwise the same scalars, so the stopping decisions agree on every rank without further communication: no rank
leaves the loop while another waits in a collective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from distinv.placements.vectors import Vector, axpy, batch_dot, norm, randn_like, zeros_like

Operator = Callable[[Vector], Vector]


@dataclass(frozen=True)
class SolveInfo:
    """How a linear solve ended.

    :ivar method: ``"cg"`` (conjugate gradient) or ``"fft"`` (closed form in the Fourier domain).
    :ivar iterations: operator calls CG made (0 for the closed form).
    :ivar relative_residual: the largest, over the batch, of ``||b - op(x)|| / ||b||`` as CG tracks it (for the
        closed form: 0, it is exact to float precision); NaN when a value was not finite.
    :ivar converged: every sample reached ``tol`` (always ``True`` for the closed form; ``False`` when not finite).
    :ivar finite: the right-hand side and every inner product were finite (else the samples that met a NaN or
        an infinity are NaN in the solution: non-finite data propagates, it never vanishes).
    """

    method: str
    iterations: int
    relative_residual: float
    converged: bool
    finite: bool = True


def solve_cg(
    op: Operator,
    b: Vector,
    x0: Vector | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> tuple[Vector, SolveInfo]:
    """Solve ``op(x) = b`` for a symmetric positive semi-definite ``op``, each sample of the batch apart.

    Stops when every sample's residual norm is below ``tol * ||b||`` (per sample) or after ``max_iter``
    operator calls. From ``x0 = 0`` on normal equations ``A^T A x = A^T y`` the iterates stay in the range
    of ``A^T``, so the limit is the minimum-norm least-squares solution.

    A sample whose right-hand side, start or operator output holds a NaN or an infinity (seen in its inner
    products, which every rank holds alike) stops there and comes back NaN, and the :class:`SolveInfo` says so.

    :param b: right-hand side, shape ``(B, ...)`` (replicated, or sharded :class:`RowBands`); the first dim indexes
        independent systems.
    :return: ``x`` with the shape of ``b``, and how the solve ended (:class:`SolveInfo`).
    """
    x = zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - op(x)
    p = r.clone()
    rs = batch_dot(r, r)
    bb = batch_dot(b, b)
    broken = ~(torch.isfinite(bb) & torch.isfinite(rs))  # per sample; NaN compares false, so it must be asked
    threshold = (tol**2) * bb
    iterations = 0
    for _ in range(max_iter):
        active = (rs > threshold) & ~broken
        if not bool(active.any()):
            break
        iterations += 1
        ap = op(p)
        pap = batch_dot(p, ap)
        broken = broken | (active & ~torch.isfinite(pap))
        active = active & ~broken
        alpha = torch.where(active & (pap > 0), rs / pap.clamp_min(torch.finfo(pap.dtype).tiny), 0.0)
        x = axpy(alpha, p, x)
        r = axpy(-alpha, ap, r)
        rs_new = batch_dot(r, r)
        broken = broken | (active & ~torch.isfinite(rs_new))
        active = active & ~broken
        beta = torch.where(active & (rs > 0), rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny), 0.0)
        p = axpy(beta, p, r)
        rs = torch.where(active, rs_new, rs)
    relative = torch.sqrt(rs / bb.clamp_min(torch.finfo(bb.dtype).tiny)).where(bb > 0, torch.zeros_like(rs))
    if bool(broken.any()):
        nan = torch.tensor(float("nan"), dtype=relative.dtype, device=relative.device)
        x = x + torch.where(broken, nan, 0.0)  # the broken samples propagate, the others are unchanged
        return x, SolveInfo("cg", iterations, float("nan"), False, finite=False)
    converged = bool((rs <= threshold).all())
    return x, SolveInfo("cg", iterations, float(relative.max()) if relative.numel() else 0.0, converged)


def power_iteration(
    op: Operator,
    like: Vector,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """Largest eigenvalue of a symmetric positive semi-definite ``op`` acting on tensors shaped like ``like``.

    The start vector comes from a fixed-seed generator (not the global one), so every rank starts from the
    same vector whatever its seeding (for :class:`RowBands`, the band of that same vector, so a sharded operator
    gives the value its replicated twin gives). Stops when the Rayleigh quotient changes by less than ``tol`` relative.

    :return: (the eigenvalue as a 0-dim real tensor, the number of iterations done).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = randn_like(like, generator)
    length = norm(x)
    x = x / length
    value = torch.zeros((), dtype=length.dtype, device=like.device)
    for iteration in range(1, max_iter + 1):
        z = op(x)
        new_value = batch_dot(x, z).sum().to(value.dtype)
        length = norm(z)
        if length == 0:
            return torch.zeros_like(value), iteration
        x = z / length
        converged = abs(new_value - value) <= tol * abs(new_value)
        value = new_value
        if converged:
            return value, iteration
    return value, max_iter
