"""The 2D Fourier transform of a signal sharded by rows, each band moved once each way.

A :class:`~distinv.placements.row_bands.RowBands` ``(B, C, H, W)`` holds whole rows, so its transform along the
columns is local; the transform along the rows needs every row. :func:`to_columns` takes each band's real FFT
along the columns, then transposes: rank ``s`` receives from every rank its rows of the ``s``-th block of frequency
columns (one batch of point-to-point calls, :func:`~distinv.comm.halo.exchange`; each rank sends its band's
spectrum once, ``(world - 1) / world`` of it to others) and takes the FFT along the rows. The result, a
:class:`ColumnBlock`, is rank ``s``'s columns ``columns[s]:columns[s + 1]`` of ``rfft2(x)`` for all ``H`` rows:
sharded by frequency columns. :func:`from_columns` is the inverse (inverse FFT along the rows, the transpose back,
inverse real FFT along the columns), returning row bands of the original partition. A diagonal operator in the
Fourier domain (a circulant solve) runs on the block in between, so the whole image is never on one rank.

Bytes per transform and rank: about the band's spectrum, ``B * C * h * (W / 2 + 1)`` complex values
(``2 * 4`` bytes each in float32), against an all-reduce of the whole image for the replicated engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distinv.comm.halo import Transfer, exchange
from distinv.placements.row_bands import ROWS, RowBands


def column_bounds(frequencies: int, world: int) -> tuple[int, ...]:
    """Blocks of ``frequencies`` columns (``W // 2 + 1`` for a real signal of width ``W``) dealt as evenly as they
    go: rank ``s`` holds ``bounds[s]:bounds[s + 1]`` (possibly none when there are more ranks than columns)."""
    return tuple(s * frequencies // world for s in range(world + 1))


@dataclass(frozen=True, eq=False)
class ColumnBlock:
    """Rank ``rank``'s block of ``rfft2`` of a row-sharded signal: ``local`` ``(B, C, H, n)`` complex, frequency
    columns ``columns[rank]:columns[rank + 1]`` of ``W // 2 + 1``, all ``H`` rows; ``like`` is the signal it came
    from (its partition, width and dtype, for :func:`from_columns`)."""

    like: RowBands
    columns: tuple[int, ...]
    local: torch.Tensor

    @property
    def own_columns(self) -> slice:
        rank = self.like.ctx.rank
        return slice(self.columns[rank], self.columns[rank + 1])


def _pairs(world: int) -> list[Transfer]:
    """Every (source, target) pair, the one global order: source-major, tag ``source * world + target``."""
    return [Transfer(r, s, r * world + s) for r in range(world) for s in range(world)]


def to_columns(x: RowBands) -> ColumnBlock:
    """``rfft2(x)`` over the last two dims, sharded by frequency columns (see the module's docstring)."""
    ctx, world = x.ctx, x.ctx.world_size
    if x.local.ndim != 4:
        raise ValueError(f"x has shape {tuple(x.shape)}: the sharded Fourier transform takes (B, C, H, W) images.")
    spectrum = torch.fft.rfft(x.local, dim=-1)  # (B, C, h, W // 2 + 1): this rank's rows, every frequency
    columns = column_bounds(spectrum.shape[-1], world)
    rank = ctx.rank
    n = columns[rank + 1] - columns[rank]
    block = spectrum.new_empty((*spectrum.shape[:ROWS], x.shape[ROWS], n))
    transfers = _pairs(world)

    def read(i: int) -> torch.Tensor:
        target = transfers[i].target
        return torch.view_as_real(spectrum[..., columns[target] : columns[target + 1]].contiguous())

    def buffer(i: int) -> torch.Tensor:
        source = transfers[i].source
        rows = x.bounds[source + 1] - x.bounds[source]
        return torch.empty((*spectrum.shape[:ROWS], rows, n, 2), dtype=x.local.dtype, device=x.device)

    def write(i: int, piece: torch.Tensor) -> None:
        source = transfers[i].source
        block[:, :, x.bounds[source] : x.bounds[source + 1]] = torch.view_as_complex(piece.contiguous())

    exchange(ctx, transfers, read, buffer, write)
    return ColumnBlock(x, columns, torch.fft.fft(block, dim=ROWS))


def from_columns(block: ColumnBlock) -> RowBands:
    """The row bands whose ``rfft2`` is ``block`` (the inverse of :func:`to_columns`), in ``block.like``'s
    partition and dtype."""
    like = block.like
    ctx, world = like.ctx, like.ctx.world_size
    rows_spectrum = torch.fft.ifft(block.local, dim=ROWS)  # (B, C, H, n): all rows of this rank's columns
    frequencies = block.columns[-1]
    first, last = like.rows
    spectrum = rows_spectrum.new_empty((*rows_spectrum.shape[:ROWS], last - first, frequencies))
    columns = block.columns
    transfers = [Transfer(t.target, t.source, t.tag) for t in _pairs(world)]  # back: block owner -> band owner

    def read(i: int) -> torch.Tensor:
        target = transfers[i].target
        return torch.view_as_real(rows_spectrum[:, :, like.bounds[target] : like.bounds[target + 1]].contiguous())

    def buffer(i: int) -> torch.Tensor:
        source = transfers[i].source
        n = columns[source + 1] - columns[source]
        return torch.empty((*spectrum.shape[:ROWS], last - first, n, 2), dtype=like.local.dtype, device=like.device)

    def write(i: int, piece: torch.Tensor) -> None:
        source = transfers[i].source
        spectrum[..., columns[source] : columns[source + 1]] = torch.view_as_complex(piece.contiguous())

    exchange(ctx, transfers, read, buffer, write)
    width = like.shape[-1]
    return like.like(torch.fft.irfft(spectrum, n=width, dim=-1).to(like.local.dtype))
