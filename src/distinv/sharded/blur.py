"""Spatially distributed circular blurs: each rank applies all K blurs to the band of rows it owns.

The signal is sharded by rows (:class:`~distinv.placements.row_bands.RowBands`: rank ``r`` holds rows
``bounds[r]:bounds[r+1]`` of every sample and channel, full width); a blur needs a few rows beyond its band (the
kernel's reach), received from the two neighbouring ranks in one batch of point-to-point calls, periodically at the
image's top and bottom as the circular boundary wants. The measurements are sharded the same way, so ``A``, ``A^T`` and
``A^T A`` never move an image: only the halo rows, whatever K. Exact against deepinv's ``BlurFFT``: the same circular
convolution, by FFT of the band with its halo (rows that wrap around the extended band fall in the halo, which is
dropped). ``A^T A`` is one FFT pair with the K normal spectra summed, cached at the band's size (a rank holds one
band-sized spectrum, not K image-sized ones). ``(A^T A + shift I) x = b`` (HQS's and ADMM's data step) is solved
exactly in the Fourier domain, as the replicated engine's closed form, on a 2D transform of the bands taken sharded
(:mod:`distinv.sharded.fourier`: each band moved once each way; each rank its block of frequency columns of the
normal spectrum). ``A`` and ``A^T A`` are differentiable on bands that need gradients (the halo's gradient rows go
back to their owners), for training on sharded iterates (:mod:`distinv.sharded.unrolled`).

Convention (deepinv's): ``A_i x`` is the circular cross-correlation of ``x`` with the flipped kernel ``k_i``,
anchored at ``((kh - 1) // 2, (kw - 1) // 2)``; ``A_i^T y`` the circular cross-correlation of ``y`` with ``k_i``,
anchored at ``(kh // 2, kw // 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

from distinv.comm.context import DistributedContext
from distinv.domain.exchange import neighbour_rows
from distinv.numerics.linalg import SolveInfo
from distinv.numerics.operator import NormalEquations
from distinv.placements.row_bands import RowBands, check_bands, row_halos, with_row_halo
from distinv.sharded.fourier import ColumnBlock, from_columns, to_columns


class ShardedBlur(NormalEquations):
    """K circular blurs applied band by band (see the module's docstring).

    :param ctx: the entered context (its world size fixes the bands).
    :param kernels: ``K`` kernels, each ``(kh, kw)`` or ``(1, 1, kh, kw)`` (one kernel for every channel) or
        ``(1, C, kh, kw)`` (one per channel, as deepinv's ``BlurFFT`` filter); they may differ in size.
    """

    image_placement = "row bands"  # what A takes and A_adjoint returns (see distinv.numerics.operator)

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
        self._spectra: dict[tuple, torch.Tensor] = {}

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

    def _checked(self, x: object, margin: tuple[int, int], name: str = "x", like: RowBands | None = None) -> RowBands:
        """``x`` as row bands that every kernel fits once extended by ``margin`` rows. Decided from what every rank
        holds alike (the type, the partition, the kernels' sizes), so every rank raises the same error before the
        halo exchange, and none is left waiting in it.

        :raises TypeError: for a replicated tensor (or anything but row bands).
        :raises ValueError: for another partition than ``like``'s, or bands too thin or narrow for a kernel.
        """
        bands = check_bands(x, name, like)
        tallest = max(k.shape[1] for k in self.kernels)
        widest = max(k.shape[2] for k in self.kernels)
        thinnest = min(bands.heights) + sum(margin)
        if tallest > thinnest or widest > bands.shape[-1]:
            raise ValueError(
                f"{name}: a {tallest}x{widest} kernel does not fit bands of {min(bands.heights)} rows (with "
                f"{sum(margin)} halo rows) and {bands.shape[-1]} columns: use fewer ranks or a larger image."
            )
        return bands

    def normal_halo(self) -> tuple[int, int]:
        """Rows above and below its band that ``A_adjoint_A`` reads (the forward's and the adjoint's reach)."""
        forward, adjoint = self._reach(adjoint=False), self._reach(adjoint=True)
        return forward[0] + adjoint[0], forward[1] + adjoint[1]

    def _spectrum(self, index: int, like: torch.Tensor, adjoint: bool) -> torch.Tensor:
        """``conj(F(w))`` of kernel ``index`` (flipped for ``A``, as is for ``A^T``), placed so that a circular
        cross-correlation on ``like``'s rows and columns keeps each output row at its input row (not cached: only
        the normal spectrum is, so a rank holds one band-sized spectrum, not 2K)."""
        kernel = self.kernels[index]
        kh, kw = kernel.shape[1:]
        top, left = (kh // 2, kw // 2) if adjoint else ((kh - 1) // 2, (kw - 1) // 2)
        weight = kernel if adjoint else kernel.flip(-1, -2)
        height, width = like.shape[-2:]
        if kh > height or kw > width:
            raise ValueError(f"a {kh}x{kw} kernel does not fit a {height}x{width} band with its halo.")
        placed = torch.zeros((weight.shape[0], height, width), dtype=like.dtype, device=like.device)
        placed[:, :kh, :kw] = weight.to(like.dtype)
        placed = torch.roll(placed, shifts=(-top, -left), dims=(-2, -1))
        return torch.fft.rfftn(placed, dim=(-2, -1)).conj()

    def _normal_spectrum(self, like: torch.Tensor) -> torch.Tensor:
        """``sum_i`` of ``A_i``'s and ``A_i^T``'s spectra multiplied: ``A^T A`` in one product (cached)."""
        key = ("normal", tuple(like.shape[-2:]), like.dtype, str(like.device))
        if key not in self._spectra:
            self._spectra[key] = sum(
                self._spectrum(i, like, False) * self._spectrum(i, like, True) for i in range(self.num_operators)
            )
        return self._spectra[key]

    @staticmethod
    def _band(full: torch.Tensor, margin: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """The band out of a circular result on the band extended by ``margin`` rows (rows that wrapped are in
        the margin, dropped)."""
        return full[:, :, margin[0] : full.shape[2] - margin[1]].to(dtype)

    def _extended(self, bands: RowBands, margin: tuple[int, int]) -> torch.Tensor:
        """This rank's band with ``margin`` rows of its neighbours' (periodically); under autograd, for a band that
        needs gradients, through :func:`~distinv.domain.exchange.neighbour_rows`, whose backward sends the halo's
        gradient rows back to the ranks that own them (every rank takes the same path: the same program)."""
        if torch.is_grad_enabled() and bands.local.requires_grad and self.ctx.is_distributed:
            if min(bands.heights) < max(margin):
                raise ValueError(
                    f"bands of {min(bands.heights)} rows cannot supply halos of {max(margin)} rows: use fewer ranks, "
                    "or a smaller kernel."
                )
            top, bottom = neighbour_rows(self.ctx, bands.local, margin[0], margin[1], periodic=True)
            return torch.cat([top, bands.local, bottom], dim=2)
        return with_row_halo(bands, *margin)

    def A(self, x: RowBands) -> list[RowBands]:  # noqa: N802 - deepinv's name
        """The K blurred images, each sharded like ``x`` (one halo exchange and one FFT for all K)."""
        margin = self._reach(adjoint=False)
        extended = self._extended(self._checked(x, margin), margin)
        dims, size = (-2, -1), extended.shape[-2:]
        transformed = torch.fft.rfftn(extended, dim=dims)
        return [
            x.like(self._band(torch.fft.irfftn(transformed * self._spectrum(i, extended, False), s=size, dim=dims),
                              margin, x.local.dtype))
            for i in range(self.num_operators)
        ]  # fmt: skip

    def A_adjoint(self, ys: Sequence[RowBands]) -> RowBands:  # noqa: N802
        """``sum_i A_i^T y_i``, sharded like the ``y_i``: one halo exchange for all K (their edge rows stacked), the
        sum taken in the Fourier domain (one inverse FFT), one measurement's band extended at a time."""
        if len(ys) != self.num_operators:
            raise ValueError(f"A_adjoint got {len(ys)} measurements for {self.num_operators} operators.")
        margin = self._reach(adjoint=True)
        first = self._checked(ys[0], margin, "ys[0]")
        for i, y in enumerate(ys[1:], start=1):
            check_bands(y, f"ys[{i}]", like=first)
        channels = ys[0].local.shape[1]
        tops, bottoms = row_halos(ys, *margin)
        dims, total, size = (-2, -1), None, None
        for i, y in enumerate(ys):
            own = slice(i * channels, (i + 1) * channels)
            extended = torch.cat([tops[:, own], y.local, bottoms[:, own]], dim=2)
            size = extended.shape[-2:]
            term = torch.fft.rfftn(extended, dim=dims) * self._spectrum(i, extended, True)
            total = term if total is None else total.add_(term)
        return ys[0].like(self._band(torch.fft.irfftn(total, s=size, dim=dims), margin, ys[0].local.dtype))

    def _column_spectrum(self, index: int, height: int, width: int, columns: slice, like: torch.Tensor, adjoint: bool):
        """:meth:`_spectrum` of kernel ``index`` on the whole ``height x width`` grid, frequency columns ``columns``
        only, ``(c, height, n)``: from the kernel's ``kh`` rows (their transform along the columns, then along the
        rows), never an image-sized tensor."""
        kernel = self.kernels[index]
        kh, kw = kernel.shape[1:]
        top, left = (kh // 2, kw // 2) if adjoint else ((kh - 1) // 2, (kw - 1) // 2)
        weight = (kernel if adjoint else kernel.flip(-1, -2)).to(like.real.dtype)
        strip = torch.zeros((weight.shape[0], kh, width), dtype=weight.dtype, device=like.device)
        strip[:, :, :kw] = weight
        along = torch.fft.rfft(torch.roll(strip, shifts=-left, dims=-1), dim=-1)[..., columns]
        placed = torch.zeros((weight.shape[0], height, along.shape[-1]), dtype=along.dtype, device=like.device)
        placed[:, (torch.arange(kh, device=like.device) - top) % height] = along
        return torch.fft.fft(placed, dim=-2).conj()

    def solve_normal(
        self,
        rhs: RowBands,
        shift: float | torch.Tensor = 0.0,
        *,
        x0: RowBands | None = None,
        max_iter: int = 100,
        tol: float | None = None,
        warn: bool = True,
    ) -> tuple[RowBands, SolveInfo]:
        """``(A^T A + shift I) x = rhs`` exactly, as the replicated engine's closed form: ``A^T A`` is circulant,
        so ``x = F^-1[F(rhs) / (sum_i |H_i|^2 + shift)]``, with the 2D transform of the bands taken sharded
        (:mod:`distinv.sharded.fourier`: each band moved once each way, no image on any rank); ``x0``, ``max_iter``,
        ``tol`` and ``warn`` are CG's and unused.

        :param shift: a number or one per sample ``(B,)`` / ``(B, 1, 1, 1)``, at least 0 (with 0, frequencies no
            blur passes divide by 0, as the closed form does).
        :return: ``x`` sharded as ``rhs``, and ``SolveInfo("fft", 0, 0.0, True)`` (``finite`` false and a NaN
            residual when ``x`` holds a NaN or an infinity on any rank: a non-finite ``rhs`` propagates).
        """
        bands = check_bands(rhs, "rhs")
        if bands.local.ndim != 4:
            raise ValueError(f"rhs has shape {tuple(bands.shape)}: the blur's solve takes (B, C, H, W) images.")
        block = to_columns(bands)
        height, width = bands.shape[-2:]
        key = ("columns", height, width, block.own_columns.start, block.own_columns.stop, block.local.dtype)
        if key not in self._spectra:
            own = block.own_columns
            self._spectra[key] = sum(
                (self._column_spectrum(i, height, width, own, block.local, False)
                 * self._column_spectrum(i, height, width, own, block.local, True)).real
                for i in range(self.num_operators)
            )  # fmt: skip
        spectrum = self._spectra[key]
        if isinstance(shift, torch.Tensor) and shift.ndim > 0:
            inverse = 1.0 / (spectrum + shift.reshape(-1, 1, 1, 1).to(spectrum))
        elif float(shift) > 0:
            inverse = 1.0 / (spectrum + float(shift))
        else:  # the minimum-norm solution, as the replicated closed form (numerics.least_squares.solve_fft)
            mine = spectrum.max() if spectrum.numel() else spectrum.new_zeros(())
            largest = self.ctx.all_reduce(mine.reshape(1), op=dist.ReduceOp.MAX)[0]
            keep = spectrum > (torch.finfo(spectrum.dtype).eps * max(height, width)) ** 2 * largest
            inverse = torch.where(keep, 1.0 / spectrum.where(keep, torch.ones_like(spectrum)), 0.0)
        x = from_columns(ColumnBlock(bands, block.columns, block.local * inverse))
        # a NaN or an infinity anywhere reaches every band through the transform; agreed in one number all the same
        mine = torch.isfinite(x.local).all().to(x.dtype).reshape(1)
        finite = bool(self.ctx.all_reduce(mine, op=dist.ReduceOp.MIN)[0])
        return x, SolveInfo("fft", 0, 0.0 if finite else math.nan, finite, finite)

    def A_adjoint_A(self, x: RowBands) -> RowBands:  # noqa: N802
        """``sum_i A_i^T A_i x``: one halo exchange (the forward's and the adjoint's reach together) and one FFT
        pair, whatever K (the K normal spectra are summed once and cached)."""
        margin = self.normal_halo()
        extended = self._extended(self._checked(x, margin), margin)
        dims, size = (-2, -1), extended.shape[-2:]
        full = torch.fft.irfftn(torch.fft.rfftn(extended, dim=dims) * self._normal_spectrum(extended), s=size, dim=dims)
        return x.like(self._band(full, margin, x.local.dtype))
