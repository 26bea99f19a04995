"""Spatially distributed circular blurs: each rank applies all K blurs to the band of rows it owns.

The signal is sharded by rows (:class:`RowBands`: rank ``r`` holds rows ``bounds[r]:bounds[r+1]`` of every sample
and channel, full width); a blur needs a few rows beyond its band (the kernel's reach), received from the two
neighbouring ranks in one batch of point-to-point calls, periodically at the image's top and bottom as the circular
boundary wants. The measurements are sharded the same way, so ``A``, ``A^T`` and ``A^T A`` never move an image: only
the halo rows, whatever K. Exact against deepinv's ``BlurFFT`` (the same circular convolution, computed directly).

Convention (deepinv's): ``A_i x`` is the circular cross-correlation of ``x`` with the flipped kernel ``k_i``,
anchored at ``((kh - 1) // 2, (kw - 1) // 2)``; ``A_i^T y`` the circular cross-correlation of ``y`` with ``k_i``,
anchored at ``(kh // 2, kw // 2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .context import DistributedContext


@dataclass(frozen=True)
class RowBands:
    """A ``(B, C, H, W)`` signal sharded by rows: this rank's ``local`` band ``(B, C, h, W)`` holds rows
    ``bounds[rank]:bounds[rank + 1]``; ``bounds`` (length ``world_size + 1``) is the same on every rank."""

    shape: tuple[int, int, int, int]
    bounds: tuple[int, ...]
    local: torch.Tensor

    def like(self, local: torch.Tensor) -> RowBands:
        """Another signal with this one's partition (and channel count of ``local``)."""
        return RowBands((self.shape[0], local.shape[1], *self.shape[2:]), self.bounds, local)


def band_bounds(height: int, world_size: int) -> tuple[int, ...]:
    """Balanced contiguous bands: the first ``height % world_size`` ranks get one row more."""
    base, extra = divmod(height, world_size)
    bounds = [0]
    for r in range(world_size):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return tuple(bounds)


def shard_rows(ctx: DistributedContext, x: torch.Tensor) -> RowBands:
    """This rank's band of a replicated ``(B, C, H, W)`` tensor (a view; no communication)."""
    if x.ndim != 4:
        raise ValueError(f"x has shape {tuple(x.shape)}: row bands are cut from a (B, C, H, W) image.")
    bounds = band_bounds(x.shape[2], ctx.world_size)
    return RowBands(tuple(x.shape), bounds, x[:, :, bounds[ctx.rank] : bounds[ctx.rank + 1]])


def gather_rows(ctx: DistributedContext, bands: RowBands) -> torch.Tensor:
    """The whole signal on every rank (replicated; one all-gather of the bands, padded to the tallest)."""
    if not ctx.is_distributed:
        return bands.local
    tallest = max(b - a for a, b in zip(bands.bounds, bands.bounds[1:], strict=False))
    padded = F.pad(bands.local, (0, 0, 0, tallest - bands.local.shape[2]))
    everything = ctx.all_gather(padded.contiguous())
    pieces = [everything[r][:, :, : bands.bounds[r + 1] - bands.bounds[r]] for r in range(ctx.world_size)]
    return torch.cat(pieces, dim=2)


def inner(ctx: DistributedContext, a: RowBands, b: RowBands) -> torch.Tensor:
    """``<a, b>`` over the whole signal (a scalar, replicated: one all-reduce of one number)."""
    total = (a.local * b.local).sum().reshape(1)
    return ctx.all_reduce(total)[0]


def with_row_halo(ctx: DistributedContext, bands: RowBands, above: int, below: int) -> torch.Tensor:
    """This rank's band with ``above`` rows before it and ``below`` rows after it, periodically (rows of the
    neighbouring ranks' bands, received point to point; the image's last rows above its first band).

    :raises ValueError: on every rank, when a band is shorter than the halo it must supply.
    """
    heights = [b - a for a, b in zip(bands.bounds, bands.bounds[1:], strict=False)]
    if min(heights) < max(above, below):
        raise ValueError(
            f"bands of {min(heights)} rows cannot supply a halo of {max(above, below)} rows: use fewer ranks or a "
            "smaller kernel (each band must be at least as tall as the kernel's reach)."
        )
    x = bands.local
    if ctx.world_size == 1:  # the band is the whole image: it is its own neighbour
        top = x[:, :, x.shape[2] - above :] if above else x[:, :, :0]
        return torch.cat([top, x, x[:, :, :below]], dim=2)
    rank, world = ctx.rank, ctx.world_size
    previous, following = (rank - 1) % world, (rank + 1) % world
    from_previous = torch.empty((*x.shape[:2], above, x.shape[3]), dtype=x.dtype, device=x.device)
    from_following = torch.empty((*x.shape[:2], below, x.shape[3]), dtype=x.dtype, device=x.device)
    ops = []
    if above:  # my last rows are the following rank's rows above
        ops.append(dist.P2POp(dist.isend, x[:, :, x.shape[2] - above :].contiguous(), following, tag=1))
        ops.append(dist.P2POp(dist.irecv, from_previous, previous, tag=1))
    if below:  # my first rows are the previous rank's rows below
        ops.append(dist.P2POp(dist.isend, x[:, :, :below].contiguous(), previous, tag=2))
        ops.append(dist.P2POp(dist.irecv, from_following, following, tag=2))
    if ops:
        moved = (above + below) * x.shape[0] * x.shape[1] * x.shape[3] * x.element_size()
        with ctx.communicating(moved, moved):
            for request in dist.batch_isend_irecv(ops):
                request.wait()
    return torch.cat([from_previous, x, from_following], dim=2)


class ShardedBlur:
    """K circular blurs applied band by band (see the module's docstring).

    :param ctx: the entered context (its world size fixes the bands).
    :param kernels: ``K`` kernels, each ``(kh, kw)`` or ``(1, 1, kh, kw)`` (one kernel for every channel) or
        ``(1, C, kh, kw)`` (one per channel, as deepinv's ``BlurFFT`` filter); they may differ in size.
    """

    def __init__(self, ctx: DistributedContext, kernels: Sequence[torch.Tensor]):
        if not kernels:
            raise ValueError("kernels: give at least one blur kernel.")
        self.ctx = ctx
        self.kernels = []  # each (c, kh, kw): c = 1 (every channel) or one kernel per channel
        for i, k in enumerate(kernels):
            k = torch.as_tensor(k)
            k = k[None] if k.ndim == 2 else k[0] if k.ndim == 4 and k.shape[0] == 1 else k
            if k.ndim != 3:
                raise ValueError(
                    f"kernels[{i}] has shape {tuple(k.shape)}: give (kh, kw), (1, 1, kh, kw) or one per channel "
                    "(1, C, kh, kw), as deepinv's BlurFFT filter."
                )
            if k.shape[0] > 1 and bool((k == k[:1]).all()):
                k = k[:1]  # deepinv repeats a one-channel filter over the channels
            self.kernels.append(k.to(ctx.device))

    @classmethod
    def from_physics(cls, ctx: DistributedContext, blurs: Sequence) -> ShardedBlur:
        """From deepinv ``BlurFFT`` operators (their ``filter``)."""
        return cls(ctx, [b.filter for b in blurs])

    @property
    def num_operators(self) -> int:
        return len(self.kernels)

    def _reach(self, adjoint: bool) -> tuple[int, int]:
        """Rows above and below a band that one ``A`` (or ``A^T``) needs, the largest over kernels."""
        rows = [k.shape[1] for k in self.kernels]
        if adjoint:
            return max(h // 2 for h in rows), max((h - 1) // 2 for h in rows)
        return max((h - 1) // 2 for h in rows), max(h // 2 for h in rows)

    @staticmethod
    def _correlate(
        extended: torch.Tensor, kernel: torch.Tensor, margin: tuple[int, int], adjoint: bool
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """``A_i`` (or ``A_i^T``) of a band extended by ``margin = (above, below)`` rows: a valid cross-correlation
        over the rows (columns wrap locally). Returns the band extended by what is left of the margin after the
        kernel's own reach, and that margin."""
        kh, kw = kernel.shape[1:]
        top = kh // 2 if adjoint else (kh - 1) // 2
        left = kw // 2 if adjoint else (kw - 1) // 2
        weight = kernel if adjoint else kernel.flip(-1, -2)
        padded = F.pad(extended, (left, kw - 1 - left, 0, 0), mode="circular") if kw > 1 else extended
        channels = extended.shape[1]
        if weight.shape[0] not in (1, channels):
            raise ValueError(f"a kernel for {weight.shape[0]} channels cannot blur {channels} channels.")
        w = weight.to(extended.dtype).reshape(-1, 1, kh, kw).expand(channels, 1, kh, kw)
        return F.conv2d(padded, w, groups=channels), (margin[0] - top, margin[1] - (kh - 1 - top))

    @staticmethod
    def _band(extended: torch.Tensor, margin: tuple[int, int]) -> torch.Tensor:
        """The band itself out of a band extended by ``margin`` rows."""
        return extended[:, :, margin[0] : extended.shape[2] - margin[1]]

    def A(self, x: RowBands) -> list[RowBands]:  # noqa: N802 - deepinv's name
        """The K blurred images, each sharded like ``x`` (one halo exchange for all K)."""
        margin = self._reach(adjoint=False)
        extended = with_row_halo(self.ctx, x, *margin)
        return [x.like(self._band(*self._correlate(extended, k, margin, adjoint=False))) for k in self.kernels]

    def A_adjoint(self, ys: Sequence[RowBands]) -> RowBands:  # noqa: N802
        """``sum_i A_i^T y_i``, sharded like the ``y_i`` (one halo exchange of the K stacked on channels)."""
        if len(ys) != self.num_operators:
            raise ValueError(f"A_adjoint got {len(ys)} measurements for {self.num_operators} operators.")
        channels = ys[0].local.shape[1]
        margin = self._reach(adjoint=True)
        stacked = ys[0].like(torch.cat([y.local for y in ys], dim=1))
        extended = with_row_halo(self.ctx, stacked, *margin)
        total = None
        for i, k in enumerate(self.kernels):
            part = extended[:, i * channels : (i + 1) * channels]
            term = self._band(*self._correlate(part, k, margin, adjoint=True))
            total = term if total is None else total + term
        return ys[0].like(total)

    def A_adjoint_A(self, x: RowBands) -> RowBands:  # noqa: N802
        """``sum_i A_i^T A_i x`` with one halo exchange (the forward's and the adjoint's reach together)."""
        forward, adjoint = self._reach(adjoint=False), self._reach(adjoint=True)
        margin = (forward[0] + adjoint[0], forward[1] + adjoint[1])
        extended = with_row_halo(self.ctx, x, *margin)
        total = None
        for k in self.kernels:
            blurred, left = self._correlate(extended, k, margin, adjoint=False)  # left: at least A_i^T's reach
            term = self._band(*self._correlate(blurred, k, left, adjoint=True))
            total = term if total is None else total + term
        return x.like(total)
