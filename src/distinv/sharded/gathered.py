"""Operators that do not decompose in space (a Radon transform of a 2D image, radio's NUFFT) beside sharded iterates.

The stack stays split by operator (:class:`~distinv.physics.linear.DistributedStackedLinearPhysics`); the iterate
is sharded by rows for the denoiser and gathered for the physics step alone: ``A^T A x`` is one all-gather of the
bands, the stack's all-reduce, and this rank's band of the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distinv.numerics.operator import NormalEquations
from distinv.physics.linear import DistributedStackedLinearPhysics
from distinv.placements.measurements import LocalMeasurements
from distinv.placements.row_bands import RowBands, check_bands


class GatheredPhysics(NormalEquations):
    """A distributed stack seen from :class:`~distinv.placements.row_bands.RowBands` iterates (see the module).

    :param physics: the operator-split stack; its measurements stay sharded by operator.
    :param like: any signal of the partition the iterates use (its bounds cut the results).
    """

    image_placement = "row bands"  # what A takes and A_adjoint returns (see distinv.numerics.operator)

    def __init__(self, physics: DistributedStackedLinearPhysics, like: RowBands):
        self.physics, self.ctx, self._like = physics, physics.ctx, like

    def _band(self, x: torch.Tensor) -> RowBands:
        first, last = self._like.rows  # a copy, so the replicated result is freed
        return RowBands(self.ctx, tuple(x.shape), self._like.bounds, x.narrow(2, first, last - first).clone())

    def A(self, x: RowBands) -> LocalMeasurements:  # noqa: N802 - deepinv's name
        """This rank's measurements of ``x`` (an all-gather of ``x``'s bands; sharded by operator, as the stack's
        ``A(x, gather=False)``)."""
        return self.physics.A(check_bands(x, "x", self._like).gather(), gather=False)

    def A_adjoint(self, y: Sequence[torch.Tensor]) -> RowBands:  # noqa: N802
        """This rank's band of ``sum_i A_i^T y_i`` (the stack's all-reduce)."""
        return self._band(self.physics.A_adjoint(y))

    def A_adjoint_A(self, x: RowBands) -> RowBands:  # noqa: N802
        """This rank's band of ``A^T A x`` (an all-gather of ``x``'s bands, then the stack's all-reduce)."""
        return self._band(self.physics.A_adjoint_A(check_bands(x, "x", self._like).gather()))

    def compute_sqnorm(self, x0: RowBands, **kwargs) -> torch.Tensor:
        """The stack's ``||A||^2`` (power iteration on replicated vectors)."""
        return self.physics.compute_sqnorm(check_bands(x0, "x0", self._like).gather(), **{**kwargs, "verbose": False})
