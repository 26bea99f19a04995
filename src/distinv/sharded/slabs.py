"""Operators that act on each slice along dim 2 alone, applied to a signal sharded in slabs of those slices.

Parallel-beam tomography of a volume rotating about z is the 2D Radon transform of each z-slice: a slab of
slices projects to the same slab of the measurements' rows, so each rank applies all K operators to its own slab
with no halo and no communication (``A``, ``A^T``, ``A^T A``). The measurements are sharded in the same slabs.
"""

from __future__ import annotations

from collections.abc import Sequence

from deepinv.physics import LinearPhysics

from distinv.comm.context import DistributedContext
from distinv.numerics.operator import NormalEquations
from distinv.placements.row_bands import RowBands, check_bands


class SlabStack(NormalEquations):
    """K slice-separable operators on :class:`~distinv.placements.row_bands.RowBands` (slabs along dim 2).

    :param ctx: the entered context.
    :param operators: K deepinv linear operators, each mapping ``(B, C, d, ...)`` to ``(B, C, d, ...)`` slice by
        slice along dim 2 for any ``d`` (e.g. tomography_3d's ``SlicewiseRadon``); every rank holds all K. That
        they act slice by slice is the caller's promise: it is what makes the slabs exact.
    """

    image_placement = "row bands"  # what A takes and A_adjoint returns (see distinv.numerics.operator)

    def __init__(self, ctx: DistributedContext, operators: Sequence[LinearPhysics]):
        if not operators:
            raise ValueError("operators: give at least one operator.")
        self.ctx = ctx
        self.operators = list(operators)

    @property
    def num_operators(self) -> int:
        return len(self.operators)

    def normal_halo(self) -> tuple[int, int]:
        """Rows beyond its slab that ``A_adjoint_A`` reads: none."""
        return 0, 0

    def A(self, x: RowBands) -> list[RowBands]:  # noqa: N802 - deepinv's name
        """The K measurements of ``x``, each sharded in ``x``'s slabs (no communication)."""
        x = check_bands(x, "x")
        return [x.like(op.A(x.local)) for op in self.operators]

    def A_adjoint(self, ys: Sequence[RowBands]) -> RowBands:  # noqa: N802
        """``sum_i A_i^T y_i`` in the ``y_i``'s slabs (no communication)."""
        return self.weighted_sum("A_adjoint", ys, [1.0] * self.num_operators)

    def A_adjoint_A(self, x: RowBands) -> RowBands:  # noqa: N802
        """``sum_i A_i^T A_i x`` (no communication)."""
        x = check_bands(x, "x")
        return x.like(sum(op.A_adjoint(op.A(x.local)) for op in self.operators))

    def weighted_sum(self, method: str, ys: Sequence[RowBands], weights: Sequence[float], **kwargs) -> RowBands:
        """``sum_i weights[i] * A_i.method(y_i, **kwargs)`` slab by slab (e.g. ``"A_dagger"`` with ``fbp=True``
        for each block's filtered back-projection)."""
        if len(ys) != self.num_operators or len(weights) != self.num_operators:
            raise ValueError(f"{method}: give one measurement and one weight per operator ({self.num_operators}).")
        first = check_bands(ys[0], "ys[0]")
        for i, y in enumerate(ys[1:], start=1):
            check_bands(y, f"ys[{i}]", like=first)
        pairs = zip(self.operators, ys, weights, strict=True)
        total = sum(w * getattr(op, method)(y.local, **kwargs) for op, y, w in pairs)
        return ys[0].like(total)
