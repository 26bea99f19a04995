"""A network's layers made to run on row bands: convolutions read their neighbours' rows, the rest run as they are.

:func:`band_network` returns a copy of a network's module tree that shares its parameters (the original is not
touched; training the copy trains it), where every convolution along the rows (``Conv1d`` over a sequence is
not one: ``Conv2d`` rows, ``Conv3d`` slices) becomes a :class:`BandConv`. Other layers are kept when they are
exact on bands as they are:

- pointwise layers: activations, ``Identity``, ``Dropout`` in eval mode, batch normalisation in eval mode (its
  running statistics are per channel, the same on every band);
- ``ConvTranspose`` and pooling whose kernel equals their stride, without padding (each output row reads exactly
  the input rows of its own band once the bands are aligned to the stride), and nearest-neighbour ``Upsample``
  by a whole factor;
- containers (``Sequential``, deepinv's blocks): their children are rewritten, their own ``forward`` (residual
  sums, concatenations of skips) runs as written.

Anything else raises :class:`UnsplittableLayer` naming the layer: global or adaptive pooling, attention, batch
normalisation in train mode (its statistics would be the band's), interpolation that reads neighbours, a layer
type this module does not know. What it cannot see is tensor code inside a container's ``forward`` that reduces
over rows; the networks :mod:`distinv.domain.networks` accepts have none.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from distinv.comm.context import DistributedContext
from distinv.domain.exchange import ROWS, neighbour_rows

POINTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Hardtanh,
    nn.ReLU6,
)


class UnsplittableLayer(ValueError):
    """A layer of the network cannot run exactly on row bands."""


def _pairs(conv: nn.Module) -> list[tuple[int, int]]:
    """``(before, after)`` padding per spatial dim of a convolution (``"same"`` resolved as PyTorch does)."""
    dims = len(conv.kernel_size)
    if conv.padding == "valid":
        return [(0, 0)] * dims
    if conv.padding == "same":
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in conv.padding]


class BandConv(nn.Module):
    """A convolution on this rank's band: the rows its kernel reads beyond the band come from the neighbouring
    ranks (:func:`~distinv.domain.exchange.neighbour_rows`), the signal's own border is padded as the
    convolution pads it (zeros, reflect, replicate; circular from the other end of the signal), and the other
    dims are padded locally. Shares ``conv``'s parameters.

    The rows: a band ``[a, b)`` of an input whose bands start at multiples of the stride ``s`` gives output rows
    ``[a / s, ...)``: rank ``r`` reads ``before`` rows above (the padding) and ``(k - 1) d - before - s + 1`` rows
    below (the kernel's reach past its last output row), at least 0.
    """

    def __init__(self, conv: nn.Module, ctx: DistributedContext, name: str):
        super().__init__()
        self.conv, self.ctx, self.name = conv, ctx, name
        self.pads = _pairs(conv)
        k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        self.above = self.pads[0][0]
        self.below = max(0, (k - 1) * d - self.above - s + 1)
        self.border = self.pads[0][1]
        self.mode = conv.padding_mode
        if self.mode == "circular" and self.border > self.below:
            raise UnsplittableLayer(
                f"{name}: circular padding of {self.border} rows past a kernel that reads {self.below}"
            )

    @property
    def halo(self) -> int:
        """The most rows this layer reads from one neighbour."""
        return max(self.above, self.below)

    def _pad_border(self, band: torch.Tensor, top: bool) -> torch.Tensor:
        rows = self.above if top else self.border
        if rows == 0:
            return band.narrow(ROWS, 0, 0)
        if self.mode == "zeros":
            return band.new_zeros((*band.shape[:ROWS], rows, *band.shape[ROWS + 1 :]))
        if self.mode == "replicate":
            edge = band.narrow(ROWS, 0 if top else band.shape[ROWS] - 1, 1)
            return edge.expand(*band.shape[:ROWS], rows, *band.shape[ROWS + 1 :])
        # reflect: the rows next to the border, mirrored (the border row itself not repeated)
        index = (
            torch.arange(rows, 0, -1) if top else torch.arange(band.shape[ROWS] - 2, band.shape[ROWS] - 2 - rows, -1)
        )
        return band.index_select(ROWS, index.to(band.device))

    @property
    def _same_zeros(self) -> bool:
        """A stride-1 convolution whose zero padding keeps the rows ("same"): it runs on the band as it is, with its
        own padding, and only its first and last rows are computed again from the neighbours' rows."""
        conv, symmetric = self.conv, all(before == after for before, after in self.pads)
        return self.mode == "zeros" and symmetric and conv.stride[0] == 1 and self.above == self.below == self.border

    def forward(self, band: torch.Tensor) -> torch.Tensor:
        ctx, world, rank = self.ctx, self.ctx.world_size, self.ctx.rank
        periodic = self.mode == "circular"
        top, bottom = neighbour_rows(ctx, band, self.above, self.below, periodic)
        if self._same_zeros and band.shape[ROWS] >= 2 * self.halo:
            return self._same_with_edges(band, top, bottom, first=rank == 0, last=rank == world - 1)
        if not periodic:
            if rank == 0:
                top = self._pad_border(band, True)
            if rank == world - 1:
                bottom = self._pad_border(band, False)
        elif rank == world - 1:
            bottom = bottom.narrow(ROWS, 0, self.border)
        extended = torch.cat([top, band, bottom], dim=ROWS)
        local = [p for pair in reversed(self.pads[1:]) for p in pair]  # F.pad's order: last dim first
        if any(local):
            mode = {"zeros": "constant"}.get(self.mode, self.mode)
            extended = F.pad(extended, [*local, 0, 0], mode=mode)
        conv = self.conv
        function = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(conv.kernel_size)]
        return function(extended, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    def _same_with_edges(
        self, band: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, first: bool, last: bool
    ) -> torch.Tensor:
        """The convolution of the band with its own zero padding (no copy of the band into a taller one), then its
        first and last ``halo`` rows again from strips of the neighbours' rows and the band's edge rows (at the
        signal's border the zero padding is already right)."""
        conv, rows = self.conv, self.halo
        function = {2: F.conv2d, 3: F.conv3d}[len(conv.kernel_size)]
        others = tuple(before for before, _ in self.pads[1:])

        def convolve(x: torch.Tensor, row_padding: int) -> torch.Tensor:
            padding = (row_padding, *others)
            return function(x, conv.weight, conv.bias, 1, padding, conv.dilation, conv.groups)

        out = convolve(band, rows)
        if rows == 0:
            return out
        height = band.shape[ROWS]
        if not first:
            strip = torch.cat([top, band.narrow(ROWS, 0, 2 * rows)], dim=ROWS)
            out.narrow(ROWS, 0, rows).copy_(convolve(strip, 0))
        if not last:
            strip = torch.cat([band.narrow(ROWS, height - 2 * rows, 2 * rows), bottom], dim=ROWS)
            out.narrow(ROWS, height - rows, rows).copy_(convolve(strip, 0))
        return out


def _aligned_resampling(module: nn.Module) -> bool:
    """Whether every output row of a resampling layer reads only its own stride's input rows (or is a copy of one
    input row), so that bands starting at multiples of its stride resample on their own."""
    if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
        plain = module.kernel_size == module.stride and not any(module.padding) and not any(module.output_padding)
        return plain and module.dilation[0] == 1
    if isinstance(module, (nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d)):
        kernel, stride = _first(module.kernel_size), _first(module.stride or module.kernel_size)
        padding, dilation = _first(module.padding), _first(getattr(module, "dilation", 1))
        return kernel == stride and padding == 0 and dilation == 1 and not module.ceil_mode
    if isinstance(module, nn.Upsample):
        factor = module.scale_factor
        factor = factor[0] if isinstance(factor, tuple) else factor
        whole = factor is not None and float(factor).is_integer() and module.size is None
        return module.mode == "nearest" and whole
    return False


def _first(value) -> int:
    return value[0] if isinstance(value, tuple | list) else value


def _refusal(module: nn.Module) -> str | None:
    """Why a leaf layer cannot run on bands as it is, or ``None``."""
    if isinstance(module, POINTWISE):
        return None
    if isinstance(module, nn.Dropout | nn.Dropout2d | nn.Dropout3d):
        return "dropout in train mode draws per band" if module.training and module.p > 0 else None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training or not module.track_running_stats:
            return "batch normalisation in train mode uses the band's statistics, not the image's (call .eval())"
        return None
    if _aligned_resampling(module):
        return None
    if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "a transposed convolution whose kernel is not its stride (or with padding)"
    if isinstance(module, (nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d)):
        return "pooling whose kernel is not its stride (or with padding)"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)):
        return "adaptive (global) pooling reduces over all rows"
    if isinstance(module, nn.MultiheadAttention):
        return "attention mixes all rows"
    if isinstance(module, nn.Upsample):
        return "interpolation other than nearest by a whole factor reads neighbouring rows"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)):
        return "a normalisation over spatial dims uses the band's statistics"
    return f"distinv does not know whether a {type(module).__name__} can run on row bands"


def band_network(network: nn.Module, ctx: DistributedContext, name: str = "network") -> nn.Module:
    """A copy of ``network``'s module tree for row bands (see the module's docstring), its parameters shared.

    :raises UnsplittableLayer: naming the first layer (by its path in the network) that cannot run on bands.
    """
    if isinstance(network, (nn.Conv2d, nn.Conv3d)):
        return BandConv(network, ctx, name)
    children = dict(network.named_children())
    if not children:
        reason = _refusal(network)
        if reason is not None:
            raise UnsplittableLayer(
                f"{name} ({type(network).__name__}): {reason}; it cannot run on row bands exactly. Use "
                "parallel='windows' (overlapping windows), or allow the fallback to windows."
            )
        return network
    clone = copy.copy(network)  # its parameter dicts are the network's: swapping one swaps it in both trees
    clone._modules = {key: band_network(child, ctx, f"{name}.{key}") for key, child in children.items()}
    return clone


def row_strides(network: nn.Module) -> int:
    """The product of the network's strides along rows (convolutions and pooling): the multiple every band's
    first row must be at, so that each strided layer's bands start on its grid."""
    product = 1
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            product *= module.stride[0]
        elif isinstance(module, (nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d)):
            product *= _first(module.stride or module.kernel_size)
    return product


def largest_halo(network: nn.Module) -> int:
    """The most rows any of ``band_network(network)``'s convolutions reads from one neighbour."""
    return max((m.halo for m in network.modules() if isinstance(m, BandConv)), default=0)


def band_rows_needed(network: nn.Module, alignment: int) -> int:
    """The fewest rows a band needs so that at every resolution (down to ``1 / alignment``) it can supply its
    neighbours' halos: ``alignment`` times the largest halo (conservative for the finer resolutions)."""
    return max(1, alignment * largest_halo(network))
