"""DomainParallelDenoiser: a whole-image network run as one domain over the ranks, each rank its band of rows.

``distribute(denoiser, ctx, parallel="domain")(x, sigma)`` reads top to bottom:

1. **plan**: the bands (:meth:`DomainParallelDenoiser.bounds_for`): contiguous rows (slices of a volume), their
   first rows at multiples of the network's alignment (its size multiple and the product of its strides), as
   equal as that allows; each at least as tall as the deepest layer's halo needs;
2. **shard**: each rank cuts its band out of the replicated image (a view; no communication), or is given it
   (:class:`~distinv.placements.row_bands.RowBands`, the sharded engine's iterate); the last rank pads its band's
   bottom and every rank its columns as the network pads the image (replicate, to the size multiple);
3. **run**: the network's layers on the band (:func:`~distinv.domain.layers.band_network`): before every
   convolution the rows it reads beyond the band come from the neighbouring ranks (point to point), so the output
   equals the whole-image network's to float rounding, whatever its receptive field: there is no halo to choose;
4. **gather** (replicated input only): one all-gather of the bands gives the image on every rank; a RowBands input
   stays sharded (its bands out, no gather).

Work: each rank computes its own rows and nothing else (its pixels are the ones it owns; windows recompute their
halos). Memory: the band's activations. Communication: per convolution, ``halo`` rows of its input to each
neighbour (one row of a 3x3 layer's channels), counted in the context's bytes.

Autograd: the exchanges send gradients back (:mod:`distinv.domain.exchange`), the parameters' gradients are summed
over ranks in the backward pass (one all-reduce of all of them) and a replicated input's gradient too, so every
rank's gradients equal the single process's. The output of the gather passes each rank its own rows' gradient.

Ranks in step: the plan and every layer's check depend only on the shapes and the network, the same on every rank,
so a refusal is raised by every rank before any exchange; a failure in the middle of the network on one rank (out
of memory) leaves its neighbours waiting in their next exchange until the context's timeout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distinv.comm.autograd import ReplicatedInputs
from distinv.comm.context import DistributedContext
from distinv.comm.gather import broadcast_module_state
from distinv.domain.exchange import ROWS
from distinv.domain.layers import band_network, band_rows_needed, row_strides
from distinv.domain.networks import BandProgram, program_for
from distinv.placements.row_bands import RowBands, gather_rows, shard_rows


def band_bounds(height: int, world: int, alignment: int, rows_needed: int = 1) -> tuple[int, ...]:
    """Bounds of ``world`` contiguous bands of ``height`` rows whose first rows are multiples of ``alignment``:
    the ``ceil(height / alignment)`` blocks of ``alignment`` rows dealt as evenly as they go (the last band may
    end in a partial block).

    :raises ValueError: when some band would be shorter than ``rows_needed`` (or empty).
    """
    blocks = math.ceil(height / alignment)
    bounds = [min(height, alignment * (r * blocks // world)) for r in range(world)] + [height]
    heights = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    if min(heights) < rows_needed:
        raise ValueError(
            f"{height} rows cannot be cut into {world} bands starting at multiples of {alignment} rows, each at "
            f"least {rows_needed} rows tall (the network's deepest halo; bands {heights}): use fewer ranks, a "
            "larger image, or parallel='windows'."
        )
    return tuple(bounds)


def band_work(spatial: Sequence[int], world: int, alignment: int, rows_needed: int = 1) -> dict[str, list[int]]:
    """What each rank of the domain-parallel denoiser computes on a signal of ``spatial`` size (rows first): its
    band (:func:`band_bounds`), padded as the network pads the signal (the last band's rows and every band's other
    dims to multiples of ``alignment``); nothing else, as no halo is recomputed.

    :return: ``{"bounds": ..., "pixels_owned_per_rank": ..., "pixels_processed_per_rank": ...}`` (pixels of one
        channel at full resolution).
    """
    bounds = band_bounds(int(spatial[0]), world, alignment, rows_needed)
    across = math.prod(int(s) for s in spatial[1:])
    padded = math.prod(int(s) + (-int(s)) % alignment for s in spatial[1:])
    owned, processed = [], []
    for rank, (first, last) in enumerate(zip(bounds, bounds[1:], strict=False)):
        rows = last - first
        owned.append(rows * across)
        bottom = (-int(spatial[0])) % alignment if rank == world - 1 else 0
        processed.append((rows + bottom) * padded)
    return {"bounds": list(bounds), "pixels_owned_per_rank": owned, "pixels_processed_per_rank": processed}


def layer_exchanges(denoiser: nn.Module, channels: int) -> tuple[tuple[int, int, int], ...]:
    """What the domain-parallel denoiser exchanges per call of a 2D ``denoiser`` on ``channels`` channels: per
    convolution that reads its neighbours' rows, in call order, ``(input channels, resolution divisor, rows)``
    (rows from each neighbour, at ``1 / divisor`` of the image's resolution), traced on a small image.

    :raises ValueError: for a network :func:`~distinv.domain.networks.program_for` does not know.
    """
    from distinv.domain.layers import BandConv

    program = program_for(denoiser)
    side = 4 * math.lcm(program.multiple, row_strides(program.network))
    found: list[tuple[int, int, int]] = []

    def record(module: nn.Module, args: tuple) -> None:
        rows = BandConv(module, None, "").halo  # the rows its band version reads (no context needed to count)
        if rows:
            found.append((int(args[0].shape[1]), side // int(args[0].shape[ROWS]), rows))

    convs = [m for m in program.network.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    hooks = [m.register_forward_pre_hook(record) for m in convs]
    try:
        with torch.no_grad():
            program.run(program.network, torch.zeros((1, channels, side, side)), 0.05)
    finally:
        for hook in hooks:
            hook.remove()
    return tuple(found)


class GatherBands(torch.autograd.Function):
    """The whole signal on every rank from each rank's band (one all-gather, bands padded to the tallest);
    backward: this rank's rows of the gradient (every rank back-propagates the same replicated gradient)."""

    @staticmethod
    def forward(fctx, ctx: DistributedContext, bounds: tuple[int, ...], band: torch.Tensor):
        fctx.rows = (bounds[ctx.rank], bounds[ctx.rank + 1])
        return gather_rows(ctx, band, [b - a for a, b in zip(bounds, bounds[1:], strict=False)])

    @staticmethod
    def backward(fctx, grad: torch.Tensor):
        first, last = fctx.rows
        return None, None, grad.narrow(ROWS, first, last - first).contiguous()


class _Body(nn.Module):
    """The network's program on a padded band of a signal of ``padded_shape`` (for ``functional_call``):
    ``banded`` is the band network (convolutions exchange rows), ``whole`` the network itself (the same
    parameters), which a slicewise program runs on slices across the banded dim: whole 2D images."""

    def __init__(self, banded: nn.Module, whole: nn.Module, program: BandProgram, padded_shape: Sequence[int]):
        super().__init__()
        self.banded, self.program, self.padded_shape = banded, program, tuple(padded_shape)
        # not a submodule: its parameters are the band network's (the same modules), which functional_call swaps
        # once; a second path to them would be swapped twice and restored wrongly
        self._whole = (whole,)

    @property
    def whole(self) -> nn.Module:
        return self._whole[0]

    def forward(self, band: torch.Tensor, sigma: Any) -> torch.Tensor:
        program = self.program
        if program.slicewise is None:
            return program.run(self.banded, band, sigma)
        out = torch.zeros_like(band)
        for axis in program.slicewise:
            moved = band.movedim(axis, 1)  # (B, S, C, a, b): slices across `axis`, rows first
            b, count = moved.shape[:2]
            slices = moved.reshape(b * count, *moved.shape[2:])
            # slices across the banded dim are this rank's own whole images; the others' rows are the banded dim,
            # so every rank cuts them into the same number of calls (from the whole signal's slice size)
            network = self.whole if axis == ROWS else self.banded
            pixels = math.prod(self.padded_shape[d] for d in range(ROWS, len(self.padded_shape)) if d != axis)
            per_call = max(1, program.pixels_per_call // pixels)
            done = torch.cat([program.run(network, chunk, sigma) for chunk in slices.split(per_call)])
            out = out + done.reshape(b, count, *done.shape[1:]).movedim(1, axis)
        return out / len(program.slicewise)


class DomainParallelDenoiser(nn.Module):
    """Run ``denoiser(x, sigma)`` as one domain over the ranks of ``ctx`` (see the module's docstring).

    :param ctx: the entered context.
    :param denoiser: a network :func:`~distinv.domain.networks.program_for` knows (deepinv's DRUNet, UNet, DnCNN,
        or one with a ``band_program()``); its parameters and buffers are made rank 0's on every rank.
    :raises ValueError: for a network it does not know; :class:`~distinv.domain.layers.UnsplittableLayer` (a
        ``ValueError``) for a layer that cannot run on bands, naming it.
    """

    def __init__(self, ctx: DistributedContext, denoiser: nn.Module):
        super().__init__()
        self.ctx, self.denoiser = ctx, denoiser
        self.program = program_for(denoiser)
        band_network(self.program.network, ctx)  # refuse unsplittable layers now, on every rank alike
        broadcast_module_state(ctx, denoiser)

    @property
    def alignment(self) -> int:
        """The multiple every band starts at: the network's size multiple and its strides' product."""
        return self.alignment_of(self.denoiser)

    @staticmethod
    def alignment_of(denoiser: nn.Module) -> int:
        """:attr:`alignment` of ``denoiser`` without a context (:func:`program_for` refuses what it does not know)."""
        program = program_for(denoiser)
        return math.lcm(program.multiple, row_strides(program.network))

    def bounds_for(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The bands of a signal of ``shape`` (``(B, C, H, ...)``): rows ``bounds[r]:bounds[r + 1]`` on rank ``r``.

        :raises ValueError: when ``H`` rows do not give every rank a band of the rows the network needs.
        """
        return self._bounds_for(shape, band_network(self.program.network, self.ctx))

    def _bounds_for(self, shape: Sequence[int], network: nn.Module) -> tuple[int, ...]:
        needed = band_rows_needed(network, self.alignment)
        return band_bounds(int(shape[ROWS]), self.ctx.world_size, self.alignment, needed)

    def shard(self, x: torch.Tensor) -> RowBands:
        """This rank's band of a replicated ``x``, cut at :meth:`bounds_for` (a view; no communication)."""
        return shard_rows(self.ctx, x, self.bounds_for(x.shape))

    def forward(self, x: torch.Tensor | RowBands, sigma: Any = None) -> torch.Tensor | RowBands:
        """Denoise ``x``: a replicated ``(B, C, H, W)`` image or ``(B, C, D, H, W)`` volume (the output replicated,
        the input's shape), or :class:`RowBands` cut at :meth:`bounds_for` (the output the same bands).

        :param sigma: the noise level: a number, one per sample ``(B,)``, or (replicated ``x`` only) a map of
            ``x``'s shape with one channel.
        :raises TypeError: for an ``x`` that is neither; ``ValueError`` for bands cut elsewhere, or too few rows.
        """
        if self.program.slicewise is not None and isinstance(sigma, torch.Tensor) and sigma.numel() > 1:
            raise ValueError("sigma: a slice-by-slice denoiser takes one noise level (a number) per call.")
        if self.program.slicewise is not None and len(getattr(x, "shape", ())) != 5:
            raise ValueError("x: a slice-by-slice denoiser takes (B, C, D, H, W) volumes.")
        network = band_network(self.program.network, self.ctx)  # parameters shared; rebuilt as they may change
        if isinstance(x, RowBands):
            bounds = self._bounds_for(x.shape, network)
            if x.bounds != bounds:
                raise ValueError(
                    f"x's bands {x.bounds} are not this denoiser's {bounds}: cut them with denoiser.shard(x) or "
                    "shard_rows(ctx, x, denoiser.bounds_for(x.shape))."
                )
            if isinstance(sigma, torch.Tensor) and sigma.ndim > 1:
                raise ValueError("sigma: a noise map is taken with a replicated x only; give a number or (B,).")
            return x.like(self._run(network, x.local, sigma, x.shape, last=self.ctx.rank == self.ctx.world_size - 1))
        if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
            raise TypeError(
                f"x must be a (B, C, H, W) or (B, C, D, H, W) tensor or RowBands, got {type(x).__name__}"
                + (f" of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else "")
                + "."
            )
        bounds = self._bounds_for(x.shape, network)
        first, last = bounds[self.ctx.rank], bounds[self.ctx.rank + 1]
        wants_grad = torch.is_grad_enabled() and x.requires_grad and self.ctx.is_distributed
        source = ReplicatedInputs.apply(self.ctx, x)[0] if wants_grad else x
        if isinstance(sigma, torch.Tensor) and sigma.ndim == x.ndim:
            sigma = sigma.narrow(ROWS, first, last - first)
        band = source.narrow(ROWS, first, last - first)
        out = self._run(network, band, sigma, x.shape, last=self.ctx.rank == self.ctx.world_size - 1)
        return GatherBands.apply(self.ctx, bounds, out) if self.ctx.is_distributed else out

    def _run(
        self, network: nn.Module, band: torch.Tensor, sigma: Any, shape: Sequence[int], last: bool
    ) -> torch.Tensor:
        """``network`` (the band network) on this rank's band of a signal of ``shape``: padded as the network pads
        the signal (the bottom on the last rank, the other dims on all), run, cropped back to the band."""
        multiple, program = self.program.multiple, self.program
        height = band.shape[ROWS]
        pads = [(0, (-s) % multiple) for s in shape[ROWS + 1 :]]
        bottom = (-int(shape[ROWS])) % multiple if last else 0
        flat = [p for pair in reversed(pads) for p in pair] + [0, bottom]
        padded = F.pad(band, flat, mode="replicate") if any(flat) else band
        if isinstance(sigma, torch.Tensor) and sigma.ndim == band.ndim and any(flat):
            sigma = F.pad(sigma, flat, mode="replicate")
        padded_shape = [*shape[:ROWS], int(shape[ROWS]) + (-int(shape[ROWS])) % multiple]
        padded_shape += [s + (-s) % multiple for s in shape[ROWS + 1 :]]
        body = _Body(network, program.network, program, padded_shape)
        parameters = dict(body.named_parameters())  # shared ones once
        if torch.is_grad_enabled() and self.ctx.is_distributed and any(p.requires_grad for p in parameters.values()):
            # once per call, whatever the network does inside: every rank's parameter gradients summed once
            names = [n for n, p in parameters.items() if p.requires_grad]
            summed = ReplicatedInputs.apply(self.ctx, *[parameters[n] for n in names])
            out = torch.func.functional_call(body, dict(zip(names, summed, strict=True)), (padded, sigma))
        else:
            out = body(padded, sigma)
        out = out.narrow(ROWS, 0, height)
        for dim, s in enumerate(band.shape[ROWS + 1 :], start=ROWS + 1):
            out = out.narrow(dim, 0, s)
        return out
