"""Cone-beam operators on volumes sharded in slabs of z-slices, exchanging only detector rows.

With slabs in z, the rays through a rank's slab land, in every view, on a band of detector rows a little wider
than the slab's own (the cone's spread; :func:`~distinv.operators.cone_geometry.rows_reached`). The detector rows
are dealt in contiguous owned ranges, one per rank, each inside its rank's band; the measurements are sharded by
those owned rows (:class:`~distinv.placements.row_bands.RowBands` along the rows, dim 2 of ``(B, C, rows,
columns, views)``). Then:

- ``A``: each rank projects its slab onto its band (the cone-beam pair of the slab alone, the geometry moved to
  it), sends the rows of its band that other ranks own to them and adds what it receives for its own rows;
- ``A^T``: each rank receives the rows of its band that other ranks own, and back-projects its band onto its slab.

Both are exact: a slab's rays reach only its band, and bilinear reading across two slabs' boundary splits into
the two slabs' parts (zero outside each). What moves per call is only the rows where bands overlap owned ranges,
point to point (``comm.halo.exchange``), never a sinogram or a volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from distinv.comm.context import DistributedContext
from distinv.comm.halo import Transfer, exchange
from distinv.numerics.operator import NormalEquations
from distinv.operators.cone_beam import ConeBeam
from distinv.operators.cone_geometry import detector_coordinates, restricted, rows_reached
from distinv.placements.row_bands import ROWS, RowBands, check_bands, check_bounds

MIN_SLICES = 2  # a slab's own pair reads between its slices (bilinear in z)


@dataclass(frozen=True)
class SlabPlan:
    """How one partition of the volume's slices meets the detector, the same on every rank.

    ``slices``: the volume's bounds (``world + 1``); ``owned``: the detector rows each rank owns (``world + 1``
    bounds); ``bands[r]``: the rows rank ``r``'s slab reaches, ``(first, stop)``, which contain its owned rows.
    """

    slices: tuple[int, ...]
    owned: tuple[int, ...]
    bands: tuple[tuple[int, int], ...]

    def overlaps(self) -> list[tuple[int, int, int, int]]:
        """``(holder, owner, first, stop)``: the rows of ``holder``'s band that ``owner`` owns, for every pair of
        different ranks that share some, in one global order."""
        out = []
        world = len(self.bands)
        for holder in range(world):
            for owner in range(world):
                first = max(self.bands[holder][0], self.owned[owner])
                stop = min(self.bands[holder][1], self.owned[owner + 1])
                if holder != owner and stop > first:
                    out.append((holder, owner, first, stop))
        return out


def plan_slabs(vectors: torch.Tensor, volume_shape: tuple[int, int, int], rows: int, slices: Sequence[int]) -> SlabPlan:
    """The detector rows of each slab of ``slices`` (bounds along z): its band (every row its rays reach, over all
    views) and the rows it owns, cut where the boundary between two slabs projects through the volume's axis
    (averaged over the views), so each rank's owned rows lie inside its band.

    :raises ValueError: for a slab thinner than two slices, or slabs so thin against the cone that the owned rows
        cannot be cut inside the bands (fewer ranks fix both).
    """
    slices = tuple(int(s) for s in slices)
    world = len(slices) - 1
    thin = [r for r in range(world) if slices[r + 1] - slices[r] < MIN_SLICES]
    if thin:
        raise ValueError(
            f"slabs {slices} give ranks {thin} fewer than {MIN_SLICES} slices: the cone-beam slabs read between "
            "slices; use fewer ranks or a deeper volume."
        )
    depth = volume_shape[0]
    bands = tuple(rows_reached(vectors, volume_shape, rows, (slices[r], slices[r + 1])) for r in range(world))
    owned = [0]
    for r in range(1, world):
        boundary = torch.tensor([[0.0, 0.0, slices[r] - 0.5 - (depth - 1) / 2]], dtype=torch.float64)
        row = detector_coordinates(vectors, boundary)[..., 0].mean().item() + (rows - 1) / 2
        owned.append(min(rows, max(owned[-1], round(row + 0.5))))
    owned.append(rows)
    bad = [r for r in range(world) if not (bands[r][0] <= owned[r] < owned[r + 1] <= bands[r][1])]
    if bad:
        raise ValueError(
            f"slabs {slices} are too thin for this cone: ranks {bad} would own no detector rows, or rows their slab "
            f"does not reach (owned {tuple(owned)}, reached {bands}); use fewer ranks."
        )
    return SlabPlan(slices, tuple(owned), bands)


class ConeSlabs(NormalEquations):
    """K cone-beam operators (e.g. blocks of views) on volumes in slabs of z-slices.

    :param ctx: the entered context.
    :param operators: the K :class:`~distinv.operators.cone_beam.ConeBeam` operators (torch backend) of one
        volume and one detector, each rank holding all K; each rank keeps the pairs of its own slab only, made per
        partition on first use.
    :raises ValueError: for no operators, or operators of different volumes or detectors.
    """

    image_placement = "row bands"  # what A takes and A_adjoint returns (see distinv.numerics.operator)

    def __init__(self, ctx: DistributedContext, operators: Sequence[ConeBeam]):
        if not operators:
            raise ValueError("operators: give at least one ConeBeam operator.")
        first = operators[0]
        same = (first.volume_shape, first.rows, first.columns)
        if any((op.volume_shape, op.rows, op.columns) != same for op in operators):
            raise ValueError("operators: give ConeBeam operators of one volume shape and one detector.")
        self.ctx = ctx
        self.operators = list(operators)
        self.volume_shape, self.rows = first.volume_shape, first.rows
        self._vectors = torch.cat([op.vectors for op in operators])
        self._plans: dict[tuple[int, ...], tuple[SlabPlan, list[ConeBeam]]] = {}

    @property
    def num_operators(self) -> int:
        return len(self.operators)

    def normal_halo(self) -> tuple[int, int]:
        """Slices beyond its slab that ``A_adjoint_A`` reads: none (the slabs exchange detector rows instead)."""
        return 0, 0

    def plan(self, slices: Sequence[int]) -> SlabPlan:
        """The partition's :class:`SlabPlan` (cached)."""
        return self._local(tuple(slices))[0]

    def _local(self, slices: tuple[int, ...]) -> tuple[SlabPlan, list[ConeBeam]]:
        if slices not in self._plans:
            check_bounds(slices, self.volume_shape[0], self.ctx.world_size)
            plan = plan_slabs(self._vectors, self.volume_shape, self.rows, slices)
            rank = self.ctx.rank
            mine = (slices[rank], slices[rank + 1])
            shape = (mine[1] - mine[0], *self.volume_shape[1:])
            band = plan.bands[rank]
            pairs = [
                ConeBeam.from_vectors(
                    restricted(op.vectors, self.volume_shape, self.rows, mine, band),
                    shape,
                    (band[1] - band[0], op.columns),
                    scale=op.scale,
                    workspace_bytes=op._pair.workspace_bytes,
                )
                for op in self.operators
            ]
            self._plans[slices] = (plan, pairs)
        return self._plans[slices]

    def A(self, x: RowBands) -> list[RowBands]:  # noqa: N802 - deepinv's name
        """The K measurements ``(B, C, rows, columns, views_k)`` of ``x``, each sharded by the owned detector rows
        (one exchange of the overlapping rows for all K)."""
        x = check_bands(x, "x")
        plan, pairs = self._local(x.bounds)
        partials = [pair.A(x.local) for pair in pairs]  # each (B, C, band rows, columns, views_k)
        owned = self._sum_owned(plan, partials)
        shape = lambda y: (*y.shape[:ROWS], self.rows, *y.shape[ROWS + 1 :])  # noqa: E731
        return [RowBands(self.ctx, shape(y), plan.owned, y) for y in owned]

    def A_adjoint(self, ys: Sequence[RowBands]) -> RowBands:  # noqa: N802
        """``sum_k A_k^T y_k``, in the slabs the measurements' owned rows were cut for (one exchange for all K)."""
        return self.weighted_sum("A_adjoint", ys, [1.0] * self.num_operators)

    def A_adjoint_A(self, x: RowBands) -> RowBands:  # noqa: N802
        """``sum_k A_k^T A_k x``: two exchanges of overlapping rows."""
        return self.A_adjoint(self.A(x))

    def weighted_sum(self, method: str, ys: Sequence[RowBands], weights: Sequence[float], **kwargs) -> RowBands:
        """``sum_k weights[k] * A_k.method(y_k, **kwargs)`` slab by slab, each slab's pair reading its whole band
        (e.g. ``"A_dagger"`` with ``fbp=True``: each block's FDK). The volume's slabs are the ones whose plan cut
        ``ys``' owned rows."""
        if len(ys) != self.num_operators or len(weights) != self.num_operators:
            raise ValueError(f"{method}: give one measurement and one weight per operator ({self.num_operators}).")
        first = check_bands(ys[0], "ys[0]")
        for i, y in enumerate(ys[1:], start=1):
            check_bands(y, f"ys[{i}]", like=first)
        plan, pairs = self._for_owned(first.bounds)
        bands = self._fill_bands(plan, [y.local for y in ys])
        terms = zip(pairs, bands, weights, strict=True)
        total = sum(w * getattr(pair, method)(band, **kwargs) for pair, band, w in terms)
        shape = (*total.shape[:ROWS], self.volume_shape[0], *total.shape[ROWS + 1 :])
        return RowBands(self.ctx, shape, plan.slices, total)

    def _for_owned(self, owned: tuple[int, ...]) -> tuple[SlabPlan, list[ConeBeam]]:
        for plan, pairs in self._plans.values():
            if plan.owned == tuple(owned):
                return plan, pairs
        raise ValueError(
            f"measurements cut at detector rows {tuple(owned)}: no slab partition of this operator owns those rows; "
            "give measurements made by this operator's A (sharded by its owned rows)."
        )

    def _sum_owned(self, plan: SlabPlan, partials: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each partial band's sum over ranks on the rows this rank owns."""
        rank = self.ctx.rank
        band_first = plan.bands[rank][0]
        first, stop = plan.owned[rank], plan.owned[rank + 1]
        owned = [p.narrow(ROWS, first - band_first, stop - first).clone() for p in partials]
        overlaps = plan.overlaps()

        def read(i: int) -> torch.Tensor:
            holder, _, a, b = overlaps[i]
            return torch.cat([p.narrow(ROWS, a - band_first, b - a) for p in partials], dim=-1)

        def buffer(i: int) -> torch.Tensor:
            _, _, a, b = overlaps[i]
            like = torch.cat([o.narrow(ROWS, 0, 0) for o in owned], dim=-1)
            return like.new_empty((*like.shape[:ROWS], b - a, *like.shape[ROWS + 1 :]))

        def write(i: int, piece: torch.Tensor) -> None:
            _, _, a, b = overlaps[i]
            for o, part in zip(owned, piece.split([o.shape[-1] for o in owned], dim=-1), strict=True):
                o.narrow(ROWS, a - first, b - a).add_(part)

        transfers = [Transfer(holder, owner, i) for i, (holder, owner, _, _) in enumerate(overlaps)]
        exchange(self.ctx, transfers, read, buffer, write)
        return owned

    def _fill_bands(self, plan: SlabPlan, owned: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each measurement's values on this rank's whole band: its own rows, and the rest received from their
        owners (the transpose of :meth:`_sum_owned`'s exchange)."""
        rank = self.ctx.rank
        band_first, band_stop = plan.bands[rank]
        first = plan.owned[rank]
        bands = [y.new_zeros((*y.shape[:ROWS], band_stop - band_first, *y.shape[ROWS + 1 :])) for y in owned]
        for band, y in zip(bands, owned, strict=True):
            band.narrow(ROWS, first - band_first, y.shape[ROWS]).copy_(y)
        overlaps = plan.overlaps()

        def read(i: int) -> torch.Tensor:
            _, _, a, b = overlaps[i]
            return torch.cat([y.narrow(ROWS, a - first, b - a) for y in owned], dim=-1)

        def buffer(i: int) -> torch.Tensor:
            _, _, a, b = overlaps[i]
            like = torch.cat([y.narrow(ROWS, 0, 0) for y in owned], dim=-1)
            return like.new_empty((*like.shape[:ROWS], b - a, *like.shape[ROWS + 1 :]))

        def write(i: int, piece: torch.Tensor) -> None:
            _, _, a, b = overlaps[i]
            for band, part in zip(bands, piece.split([y.shape[-1] for y in owned], dim=-1), strict=True):
                band.narrow(ROWS, a - band_first, b - a).copy_(part)

        transfers = [Transfer(owner, holder, i) for i, (holder, owner, _, _) in enumerate(overlaps)]
        exchange(self.ctx, transfers, read, buffer, write)
        return bands
