"""RowBands: a signal sharded along its first spatial dim (image rows, or a volume's z-slices) in contiguous bands.

As a DTensor carries its placement and a PyLops-MPI ``DistributedArray`` its partition, a :class:`RowBands` carries
its global shape, the bands' bounds (the same on every rank) and the context, so what is sharded cannot be taken for
a replicated tensor. Arithmetic between bands of one partition, and with numbers or per-sample tensors, stays
local; the reductions (:meth:`RowBands.norm`, :meth:`RowBands.batch_dot`) are one all-reduce of a few numbers and
return replicated scalars, so every rank takes the same decisions from them. Neighbouring rows a computation needs
come from :func:`with_row_halo` (point to point, counted), periodically (circular operators) or not (a denoiser's
windows, which stop at the signal's border).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Number

import torch
import torch.nn.functional as F

from distinv.comm.context import DistributedContext
from distinv.comm.halo import Transfer, exchange

ROWS = 2  # the sharded dim: H of (B, C, H, W), D of (B, C, D, H, W)


def gather_rows(ctx: DistributedContext, band: torch.Tensor, heights: Sequence[int]) -> torch.Tensor:
    """The whole signal on every rank from each rank's ``band`` (rank ``r``'s ``heights[r]`` rows, in rank order):
    one all-gather of the bands padded to the tallest (the same shape on every rank), the padding cut away."""
    if not ctx.is_distributed:
        return band
    pad = [0, 0] * (band.ndim - ROWS - 1) + [0, max(heights) - band.shape[ROWS]]
    everything = ctx.all_gather(F.pad(band, pad).contiguous())
    return torch.cat([everything[r].narrow(ROWS, 0, h) for r, h in enumerate(heights)], dim=ROWS)


@dataclass(frozen=True, eq=False)
class RowBands:
    """A ``(B, C, N, ...)`` signal sharded along dim 2: this rank's ``local`` band ``(B, C, n, ...)`` holds rows
    ``bounds[rank]:bounds[rank + 1]``; ``bounds`` (length ``world_size + 1``) is the same on every rank."""

    ctx: DistributedContext
    shape: tuple[int, ...]
    bounds: tuple[int, ...]
    local: torch.Tensor

    def __post_init__(self) -> None:
        check_bounds(self.bounds, self.shape[ROWS], self.ctx.world_size)

    # ------------------------------------------------------------------ placement
    @property
    def rows(self) -> tuple[int, int]:
        """This rank's first and one-past-last row."""
        return self.bounds[self.ctx.rank], self.bounds[self.ctx.rank + 1]

    @property
    def heights(self) -> list[int]:
        """Every rank's band height."""
        return [b - a for a, b in zip(self.bounds, self.bounds[1:], strict=False)]

    @property
    def device(self) -> torch.device:
        return self.local.device

    @property
    def dtype(self) -> torch.dtype:
        return self.local.dtype

    def like(self, local: torch.Tensor) -> RowBands:
        """Another signal with this one's partition; its other dims are ``local``'s (e.g. other channels)."""
        shape = (*local.shape[:ROWS], self.shape[ROWS], *local.shape[ROWS + 1 :])
        return RowBands(self.ctx, shape, self.bounds, local)

    def gather(self, step: int = 1) -> torch.Tensor:
        """The whole signal on every rank (replicated; one all-gather of the bands, padded to the tallest); with
        ``step > 1``, every ``step``-th row, column (and slice) only, e.g. for a preview of an image too large to
        gather whole.

        :raises ValueError: for a ``step`` that is not a whole number >= 1.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"step={step!r}: give a whole number >= 1 (1: every row; k: every k-th row and column).")
        spatial = tuple(range(ROWS, self.local.ndim))
        index = [slice(None)] * ROWS + [slice(None, None, step)] * len(spatial)
        first, last = self.rows
        index[ROWS] = slice((-first) % step, None, step)  # the rows of the global grid 0, step, 2 step, ...
        local = self.local[tuple(index)]
        heights = [len(range(a + (-a) % step, b, step)) for a, b in zip(self.bounds, self.bounds[1:], strict=False)]
        return gather_rows(self.ctx, local, heights)

    # ------------------------------------------------------------------ local arithmetic
    def _operand(self, other):
        if isinstance(other, RowBands):
            if other.bounds != self.bounds or other.shape[ROWS] != self.shape[ROWS]:
                raise ValueError(
                    f"RowBands of bounds {self.bounds} and {other.bounds}: combine signals of one partition."
                )
            return other.local
        if isinstance(other, Number):
            return other
        if isinstance(other, torch.Tensor):
            offset = other.ndim - self.local.ndim + ROWS  # other's dim that meets the rows
            if 0 <= offset < other.ndim and other.shape[offset] != 1:
                raise ValueError(
                    f"a tensor of shape {tuple(other.shape)} spans rows: only numbers, per-sample tensors or "
                    "RowBands of the same partition combine with RowBands."
                )
            return other
        return NotImplemented

    def _apply(self, other, op) -> RowBands:
        value = self._operand(other)
        return NotImplemented if value is NotImplemented else self.like(op(self.local, value))

    def __add__(self, other):
        return self._apply(other, lambda a, b: a + b)

    def __radd__(self, other):
        return self._apply(other, lambda a, b: b + a)

    def __sub__(self, other):
        return self._apply(other, lambda a, b: a - b)

    def __rsub__(self, other):
        return self._apply(other, lambda a, b: b - a)

    def __mul__(self, other):
        return self._apply(other, lambda a, b: a * b)

    def __rmul__(self, other):
        return self._apply(other, lambda a, b: b * a)

    def __truediv__(self, other):
        return self._apply(other, lambda a, b: a / b)

    def __neg__(self) -> RowBands:
        return self.like(-self.local)

    def clone(self) -> RowBands:
        return self.like(self.local.clone())

    def zeros_like(self) -> RowBands:
        return self.like(torch.zeros_like(self.local))

    def clamp(self, low: float | None = None, high: float | None = None) -> RowBands:
        return self.like(self.local.clamp(low, high))

    def to(self, *args, **kwargs) -> RowBands:
        return self.like(self.local.to(*args, **kwargs))

    # ------------------------------------------------------------------ reductions (replicated results)
    def batch_dot(self, other: RowBands) -> torch.Tensor:
        """Real part of ``<self, other>`` per sample over the whole signal, shaped ``(B, 1, ..., 1)`` to broadcast
        (one all-reduce of ``B`` numbers)."""
        b = self._operand(other)
        product = (self.local.conj() * b).real if self.local.is_complex() else self.local * b
        partial = product.sum(dim=tuple(range(1, product.ndim)), keepdim=True)
        return self.ctx.all_reduce(partial.contiguous())

    def norm(self) -> torch.Tensor:
        """The 2-norm of the whole signal (a replicated 0-dim tensor; one all-reduce of one number)."""
        local = self.local.abs() if self.local.is_complex() else self.local
        total = torch.linalg.vector_norm(local).double().square().reshape(1)  # no band-sized double copy
        return self.ctx.all_reduce(total)[0].sqrt().to(local.dtype)

    def sum(self) -> torch.Tensor:
        """The sum of every entry (replicated; one all-reduce of one number)."""
        return self.ctx.all_reduce(self.local.sum(dtype=torch.float64).reshape(1))[0]


def randn_rows(
    shape: Sequence[int], generator: torch.Generator, first: int, last: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Rows ``first:last`` (dim 2) of ``torch.randn(shape, generator=generator, dtype=dtype)`` without the whole
    tensor: drawn a multiple of 16 rows at a time (about a million values), the rows outside the band dropped (torch's
    CPU normal sampler gives the same sequence in chunks of a multiple of 16 values as in one call;
    ``tests/test_problems.py`` pins it)."""
    shape = tuple(shape)
    rows, width = shape[ROWS], math.prod(shape[ROWS + 1 :])
    planes = math.prod(shape[:ROWS])
    out = torch.empty((planes, last - first, width), dtype=dtype)
    chunk = 16 * max(1, 2**20 // (16 * width))  # rows of the flattened (planes x rows, width) tensor per draw
    total = planes * rows
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        values = torch.randn(((stop - start) * width,), generator=generator, dtype=dtype).view(-1, width)
        index = torch.arange(start, stop)
        plane, row = index // rows, index % rows
        keep = (row >= first) & (row < last)
        out[plane[keep], row[keep] - first] = values[keep]
    return out.view(*shape[:ROWS], last - first, *shape[ROWS + 1 :])


def check_bounds(bounds: Sequence[int], rows: int, world_size: int) -> None:
    """Refuse a partition that is not ``world_size`` contiguous, non-empty bands of ``rows`` rows (the bounds are
    the same on every rank, so every rank raises alike, before any collective).

    :raises ValueError: naming the bounds and the fix.
    """
    bounds = tuple(bounds)
    if len(bounds) != world_size + 1 or bounds[0] != 0 or bounds[-1] != rows:
        raise ValueError(
            f"bounds={bounds} do not partition {rows} rows over {world_size} ranks: give {world_size + 1} "
            f"increasing rows from 0 to {rows}."
        )
    empty = [r for r in range(world_size) if bounds[r + 1] <= bounds[r]]
    if empty:
        raise ValueError(
            f"bounds={bounds} give ranks {empty} no rows of {rows}: every rank needs a band of at least one row; "
            f"use at most {rows} ranks, or a taller signal."
        )


def check_bands(x: object, name: str, like: RowBands | None = None) -> RowBands:
    """``x`` if it is row bands (of ``like``'s partition, when given), else a clear error on every rank (placement
    and partition are the same on every rank).

    :raises TypeError: for anything but :class:`RowBands` (a replicated tensor among them).
    :raises ValueError: for bands of another partition than ``like``'s.
    """
    if not isinstance(x, RowBands):
        raise TypeError(
            f"{name} is a {type(x).__name__}, but this operator works on signals sharded by rows: cut it with "
            "shard_rows(ctx, x, bounds) or denoiser.shard(x) (RowBands)."
        )
    if like is not None and (x.bounds != like.bounds or x.shape[ROWS] != like.shape[ROWS]):
        raise ValueError(
            f"{name} is cut at rows {x.bounds}, but the other signals at {like.bounds}: give signals of one partition."
        )
    return x


def band_bounds(height: int, world_size: int) -> tuple[int, ...]:
    """Balanced contiguous bands: the first ``height % world_size`` ranks get one row more."""
    base, extra = divmod(height, world_size)
    bounds = [0]
    for r in range(world_size):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return tuple(bounds)


def rows_of_rank(ctx: DistributedContext, x: RowBands | torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """This rank's rows of ``x`` (``(B, C, N, ...)``): its band when ``x`` is sharded; when replicated, its share
    of balanced bands (a view), so that the ranks together cover every row once (to write a result in parts).

    :return: ``(first, stop, rows)``: the global rows ``first:stop`` and their values ``(B, C, stop - first, ...)``.
    """
    if isinstance(x, RowBands):
        return (*x.rows, x.local)
    bounds = band_bounds(x.shape[ROWS], ctx.world_size)
    first, stop = bounds[ctx.rank], bounds[ctx.rank + 1]
    return first, stop, x.narrow(ROWS, first, stop - first)


def shard_rows(ctx: DistributedContext, x: torch.Tensor, bounds: Sequence[int] | None = None) -> RowBands:
    """This rank's band of a replicated ``(B, C, N, ...)`` tensor (a view; no communication).

    :param bounds: the partition (``world_size + 1`` increasing rows from 0 to ``N``); default: balanced bands.
    :raises ValueError: for a tensor without a spatial dim, or bounds that do not partition its rows.
    """
    if x.ndim < ROWS + 1:
        raise ValueError(f"x has shape {tuple(x.shape)}: bands are cut from a (B, C, N, ...) signal.")
    bounds = band_bounds(x.shape[ROWS], ctx.world_size) if bounds is None else tuple(int(b) for b in bounds)
    check_bounds(bounds, x.shape[ROWS], ctx.world_size)
    start, stop = bounds[ctx.rank], bounds[ctx.rank + 1]
    return RowBands(ctx, tuple(x.shape), bounds, x.narrow(ROWS, start, stop - start))


def with_row_halo(
    bands: RowBands, above: int | Sequence[int], below: int | Sequence[int], periodic: bool = True
) -> torch.Tensor:
    """This rank's band with rows of its neighbours' bands before and after it (one batch of point-to-point
    calls on ``ctx.p2p_group``, bytes counted; see :func:`row_halos`).

    :param above: rows rank ``r`` needs before its band (one number for every rank, or one per rank);
    :param below: rows it needs after its band;
    :param periodic: the signal's last rows lie above its first band and its first rows below the last (a
        circular operator); ``False``: the first band gets nothing above, the last nothing below (the halo stops
        at the signal's border, and is shorter there).
    :raises ValueError: on every rank, when a band is shorter than the rows it must supply.
    """
    top, bottom = row_halos([bands], above, below, periodic)
    return torch.cat([top, bands.local, bottom], dim=ROWS)


def row_halos(
    signals: Sequence[RowBands], above: int | Sequence[int], below: int | Sequence[int], periodic: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows before and after this rank's band of each of ``signals`` (of one partition), stacked on channels:
    one exchange for all of them, and no band copied (only their edge rows travel). Arguments as
    :func:`with_row_halo`'s.

    :return: ``(top, bottom)``, each ``(B, sum of channels, rows, ...)``.
    """
    bands = signals[0]
    ctx, world, rank = bands.ctx, bands.ctx.world_size, bands.ctx.rank
    above = [int(above)] * world if isinstance(above, int) else [int(a) for a in above]
    below = [int(b) for b in ([below] * world if isinstance(below, int) else below)]
    if not periodic:
        above[0], below[-1] = 0, 0
    heights = bands.heights
    # rank r supplies above[r + 1] rows to its following rank and below[r - 1] rows to its previous one
    short = [r for r in range(world) if heights[r] < max(above[(r + 1) % world], below[(r - 1) % world])]
    if short:
        raise ValueError(
            f"bands of {[heights[r] for r in short]} rows (ranks {short}) cannot supply halos of "
            f"{max(above)} / {max(below)} rows: use fewer ranks, or a smaller kernel or overlap (each band must be "
            "at least as tall as its neighbours' halo)."
        )

    def edge(first: bool, rows: int) -> torch.Tensor:
        pieces = [s.local.narrow(ROWS, 0 if first else s.local.shape[ROWS] - rows, rows) for s in signals]
        return torch.cat(pieces, dim=1).contiguous()

    like = edge(True, 0)

    def rows_of(count: int) -> torch.Tensor:
        return torch.empty((*like.shape[:ROWS], count, *like.shape[ROWS + 1 :]), dtype=like.dtype, device=like.device)

    # rank r's rows above come from the last rows of the rank before it, its rows below from the first rows of the
    # rank after it (periodically: the first band's rows above are the last band's)
    transfers, wanted = [], []
    for r in range(world):
        for below_band, rows in ((False, above[r]), (True, below[r])):
            source = (r + 1) % world if below_band else (r - 1) % world
            if rows and rank in (r, source):
                transfers.append(Transfer(source, r, 2 * r + int(below_band)))
                wanted.append((below_band, rows))
    halves = {False: rows_of(above[rank]), True: rows_of(below[rank])}

    def write(i: int, piece: torch.Tensor) -> None:
        half = halves[wanted[i][0]]
        if piece is not half:  # received rows land in place; only a rank's own rows (one rank) are copied
            half.copy_(piece)

    exchange(
        ctx,
        transfers,
        lambda i: edge(wanted[i][0], wanted[i][1]),  # rows below a band are the next band's first rows
        lambda i: halves[wanted[i][0]],
        write,
    )
    return halves[False], halves[True]
