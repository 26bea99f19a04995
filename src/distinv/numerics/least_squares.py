"""Least squares of a stack of operators: ``(A^T A + shift I) x = rhs``, in closed form or by CG.

When every operator is circulant (a circular convolution: ``BlurFFT``, ``Blur`` with circular padding) the normal
operator is diagonal in the Fourier domain, with eigenvalues ``sum_i |H_i|^2`` read off its impulse response:
then ``x = F^-1[F(rhs) / (sum_i |H_i|^2 + shift)]`` exactly (pseudo-inverse for ``shift = 0``), which costs one
normal-operator call once (one all-reduce) and FFTs. Otherwise conjugate gradient, which says when it stopped
short. Every vector here is replicated; the normal operator may be distributed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from deepinv.physics import Blur, BlurFFT, Physics

from distinv.numerics.linalg import SolveInfo, solve_cg

SOLVERS = ("auto", "cg", "fft")
NormalOperator = Callable[[torch.Tensor], torch.Tensor]


def is_circulant(p: Physics) -> bool:
    """Whether ``p``'s normal operator is a circular convolution (diagonal in the Fourier domain)."""
    if isinstance(p, BlurFFT):
        return True
    return isinstance(p, Blur) and getattr(p, "padding", None) == "circular"


def normal_spectrum(normal: NormalOperator, like: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of a circulant normal operator as a real ``rfftn`` spectrum of shape
    ``(1, C, ..., W // 2 + 1)``: the Fourier transform of its response to an impulse in every channel."""
    delta = torch.zeros((1, *like.shape[1:]), dtype=like.dtype, device=like.device)
    delta[(slice(None), slice(None)) + (0,) * (like.ndim - 2)] = 1
    spectrum = torch.fft.rfftn(normal(delta), dim=tuple(range(2, like.ndim))).real
    return spectrum.clamp_min(0)


def solve_fft(rhs: torch.Tensor, shift: float, spectrum: torch.Tensor) -> torch.Tensor:
    """``F^-1[F(rhs) / (spectrum + shift)]``; for ``shift = 0`` spectral values below ``(eps * max(H, W))^2`` of
    the largest count as zero (the minimum-norm solution, as ``torch.linalg.pinv`` treats singular values)."""
    dims = tuple(range(2, rhs.ndim))
    if shift > 0:
        inverse = 1.0 / (spectrum + shift)
    else:
        rtol = torch.finfo(spectrum.dtype).eps * max(rhs.shape[2:])
        keep = spectrum > (rtol**2) * spectrum.max()
        inverse = torch.where(keep, 1.0 / spectrum.where(keep, torch.ones_like(spectrum)), 0.0)
    return torch.fft.irfftn(torch.fft.rfftn(rhs, dim=dims) * inverse, s=rhs.shape[2:], dim=dims).to(rhs.dtype)


def check_solver(solver: str, circulant: bool) -> str:
    """The solver's lower-case name.

    :raises ValueError: naming ``solver`` when it is unknown, or ``"fft"`` for operators that are not all circulant.
    """
    method = solver.lower() if isinstance(solver, str) else solver
    if method not in SOLVERS:
        raise ValueError(f"solver={solver!r}: use 'auto', 'CG' or 'fft'.")
    if method == "fft" and not circulant:
        raise ValueError(
            "solver='fft' needs circulant operators on every rank (BlurFFT, or Blur with padding='circular'): "
            "use solver='CG' or 'auto'."
        )
    return method


def solve_normal(
    normal: NormalOperator,
    rhs: torch.Tensor,
    shift: float,
    *,
    circulant: bool,
    spectrum: Callable[[torch.Tensor], torch.Tensor],
    solver: str = "auto",
    x0: torch.Tensor | None = None,
    max_iter: int = 100,
    tol: float | None = None,
    warn: bool = True,
) -> tuple[torch.Tensor, SolveInfo]:
    """Solve ``(normal + shift I) x = rhs``.

    :param circulant: every operator of the stack is circulant (agreed over ranks).
    :param spectrum: ``spectrum(like)``: the normal operator's eigenvalues (e.g. cached :func:`normal_spectrum`).
    :param solver: ``"auto"`` (the closed form when ``circulant`` and ``rhs`` is real, else CG), ``"fft"`` or
        ``"CG"``.
    :param warn: a RuntimeWarning when CG stops above ``tol`` (default 1e-6) after ``max_iter`` iterations.
    :return: ``x`` (``rhs``'s shape) and how the solve ended.
    :raises ValueError: for an unknown ``solver``, or ``"fft"`` when not ``circulant``.
    """
    method = check_solver(solver, circulant)
    if method == "fft" or (method == "auto" and circulant and not rhs.is_complex()):
        return solve_fft(rhs, shift, spectrum(rhs)), SolveInfo("fft", 0, 0.0, True)
    tol = 1e-6 if tol is None else tol
    x, info = solve_cg(lambda v: normal(v) + shift * v, rhs, x0, max_iter, tol)
    if warn and not info.converged:
        warnings.warn(
            f"CG stopped after {info.iterations} iterations at relative residual {info.relative_residual:.2e}, "
            f"above tol={tol:g}: the result is not the exact solution. Raise max_iter (or tol).",
            RuntimeWarning,
            stacklevel=3,
        )
    return x, info
