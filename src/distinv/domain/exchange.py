"""The rows a layer reads beyond a rank's band, from the neighbouring ranks, with autograd.

Every rank holds one band of a signal sharded along dim 2 (rows of ``(B, C, H, W)``, slices of
``(B, C, D, H, W)``), bands in rank order. :class:`NeighbourRows` gives rank ``r`` the last ``above`` rows of rank
``r - 1``'s band and the first ``below`` rows of rank ``r + 1``'s: one batch of point-to-point calls on
``ctx.p2p_group`` through :func:`distinv.comm.halo.exchange` (bytes counted). Its backward sends the gradients of
those rows back to the ranks that own them, which add them to their band's gradient: the same exchange, reversed,
so training runs through it and every rank's band gradient equals the whole signal's restricted to the band.

``periodic``: the first band's rows above are the last band's (a circular padding); otherwise the first rank gets
no rows above and the last none below (the caller pads the signal's own border).
"""

from __future__ import annotations

import torch

from distinv.comm.context import DistributedContext
from distinv.comm.halo import Transfer, exchange

ROWS = 2


def neighbour_transfers(world: int, rank: int, periodic: bool) -> list[tuple[Transfer, bool]]:
    """The transfers this rank takes part in, each with ``True`` when it fills the target's rows below (else its
    rows above), in one global order: rank ``r``'s rows above (tag ``2r``), then its rows below (tag ``2r + 1``)."""
    found = []
    for r in range(world):
        for below in (False, True):
            if not periodic and ((r == 0 and not below) or (r == world - 1 and below)):
                continue
            source = (r + 1) % world if below else (r - 1) % world
            if rank in (r, source):
                found.append((Transfer(source, r, 2 * r + int(below)), below))
    return found


def _rows(x: torch.Tensor, first: bool, count: int) -> torch.Tensor:
    return x.narrow(ROWS, 0 if first else x.shape[ROWS] - count, count)


def _shaped(x: torch.Tensor, count: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:ROWS], count, *x.shape[ROWS + 1 :]))


class NeighbourRows(torch.autograd.Function):
    """``(top, bottom)``: the ``above`` rows before this rank's band and the ``below`` rows after it, taken from
    its neighbours (empty where the band meets the signal's border and ``periodic`` is false)."""

    @staticmethod
    def forward(fctx, ctx: DistributedContext, periodic: bool, above: int, below: int, band: torch.Tensor):
        fctx.ctx, fctx.periodic, fctx.above, fctx.below = ctx, periodic, above, below
        fctx.like = band
        transfers = neighbour_transfers(ctx.world_size, ctx.rank, periodic)
        received = {False: _shaped(band, 0), True: _shaped(band, 0)}

        def read(i: int) -> torch.Tensor:
            # the target's rows below are the source's first rows; its rows above the source's last rows
            below_band = transfers[i][1]
            return _rows(band, below_band, below if below_band else above)

        def buffer(i: int) -> torch.Tensor:
            return _shaped(band, below if transfers[i][1] else above)

        def write(i: int, piece: torch.Tensor) -> None:
            received[transfers[i][1]] = piece

        exchange(ctx, [t for t, _ in transfers], read, buffer, write)
        return received[False], received[True]  # fresh buffers of this call's own

    @staticmethod
    def backward(fctx, grad_top: torch.Tensor, grad_bottom: torch.Tensor):
        ctx, above, below, band = fctx.ctx, fctx.above, fctx.below, fctx.like
        transfers = neighbour_transfers(ctx.world_size, ctx.rank, fctx.periodic)
        # reversed: each target sends its received rows' gradient back to their source
        reverse = [Transfer(t.target, t.source, t.tag) for t, _ in transfers]
        grads = {False: grad_top, True: grad_bottom}
        grad_band = torch.zeros_like(band)

        def read(i: int) -> torch.Tensor:
            return grads[transfers[i][1]]

        def buffer(i: int) -> torch.Tensor:
            return _shaped(band, below if transfers[i][1] else above)

        def write(i: int, piece: torch.Tensor) -> None:
            below_band = transfers[i][1]
            _rows(grad_band, below_band, below if below_band else above).add_(piece)

        exchange(ctx, reverse, read, buffer, write)
        return None, None, None, None, grad_band


def neighbour_rows(
    ctx: DistributedContext, band: torch.Tensor, above: int, below: int, periodic: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows before and after this rank's ``band`` (see :class:`NeighbourRows`); each rank's band must be at
    least ``max(above, below)`` rows tall (the caller checks it, on every rank alike).

    :return: ``(top, bottom)``, ``(B, C, above, ...)`` and ``(B, C, below, ...)``, or 0 rows at a border that is
        not periodic.
    """
    if not ctx.is_distributed:
        if not periodic:
            return _shaped(band, 0), _shaped(band, 0)
        return _rows(band, False, above), _rows(band, True, below)
    return NeighbourRows.apply(ctx, periodic, above, below, band)
