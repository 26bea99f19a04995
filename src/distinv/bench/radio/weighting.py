"""Imaging weights: how much each visibility counts in the image, from its data weight ``w_k`` (one over its
noise variance) and how densely its neighbourhood of the uv plane is sampled.

The density is the gridded weight sum ``W_c``: the data weights of the visibilities falling in each cell ``c`` of an
``n x n`` grid over the NUFFT's frequency plane ``[-pi, pi)^2`` (the image's own uv cells, ``1 / (n cell)``
wavelengths wide, for an ``n``-pixel image), each visibility counted at ``(u, v)`` and at its Hermitian twin
``(-u, -v)`` (the sky is real, so the image sees both). With ``c(k)`` visibility ``k``'s cell:

- ``natural``: ``w_k`` (lowest noise; the beam is dominated by the dense short baselines).
- ``uniform``: ``w_k / W_c(k)`` (every sampled cell counts the same: the sharpest beam, the most noise).
- ``briggs`` with robustness ``r`` in [-2, 2] (Briggs 1995, as CASA and WSClean define it):
  ``w_k / (1 + W_c(k) f^2)`` with ``f^2 = (5 10^-r)^2 / (sum_c W_c^2 / sum_c W_c)``: near natural at ``r = 2``, near
  uniform (up to a constant) at ``r = -2``.

A distributed problem grids its own visibilities, sums the grids over ranks once (:func:`weight_grid` then an
all-reduce), and weighs its visibilities against the summed grid (:func:`imaging_weights`): the weights are those
of one process holding every visibility, at any world size.
"""

from __future__ import annotations

import math

import torch

WEIGHTINGS = ("natural", "uniform", "briggs")
ROBUST_RANGE = (-2.0, 2.0)


def cells(omega: torch.Tensor, n: int) -> torch.Tensor:
    """The flat index ``row * n + column`` of the grid cell of each of the ``M`` samples ``omega`` ``(2, M)``
    (radians per pixel, rows then columns), int64 ``(M,)``."""
    index = ((omega.to(torch.float64) + math.pi) / (2 * math.pi) * n).floor().long().clamp(0, n - 1)
    return index[0] * n + index[1]


def weight_grid(omega: torch.Tensor, weights: torch.Tensor, n: int) -> torch.Tensor:
    """The gridded weight sums ``W`` ``(n * n,)`` float64 of these samples ``omega`` ``(2, M)`` with data weights
    ``weights`` ``(M,)``, each sample counted at ``omega`` and at ``-omega``."""
    w = weights.to(torch.float64)
    grid = torch.zeros(n * n, dtype=torch.float64, device=omega.device)
    grid.index_add_(0, cells(omega, n), w)
    grid.index_add_(0, cells(-omega, n), w)
    return grid


def check_weighting(weighting: str, robust: float) -> None:
    """:raises ValueError: for an unknown weighting, or a robustness outside [-2, 2]."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}: choose one of {WEIGHTINGS}.")
    if not isinstance(robust, int | float) or not ROBUST_RANGE[0] <= robust <= ROBUST_RANGE[1]:
        raise ValueError(f"robust={robust!r}: give Briggs' robustness as a number in [-2, 2] (0 is CASA's default).")


def imaging_weights(
    weighting: str, omega: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, robust: float = 0.0
) -> torch.Tensor:
    """The imaging weights ``(M,)`` float64 (not normalised) of samples ``omega`` ``(2, M)`` with data weights
    ``weights`` ``(M,)``, against the gridded weight sums ``grid`` ``(n * n,)`` of all visibilities (every rank's:
    :func:`weight_grid` summed over ranks); see the module's docstring for the three weightings.

    :raises ValueError: as :func:`check_weighting`.
    """
    check_weighting(weighting, robust)
    w = weights.to(torch.float64)
    if weighting == "natural":
        return w
    n = math.isqrt(grid.numel())
    density = grid[cells(omega, n)]
    if weighting == "uniform":
        return torch.where(w > 0, w / density.clamp(min=1e-300), 0.0)  # a zero weight (padding) stays zero
    f2 = (5 * 10 ** (-robust)) ** 2 / (grid.pow(2).sum() / grid.sum())
    return w / (1 + density * f2)
