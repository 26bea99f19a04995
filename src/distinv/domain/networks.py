"""How to run a known denoiser on a band: the network's body, its inputs, its size multiple, its residual.

A network's ``forward`` often looks at its input's shape (deepinv's DRUNet splits an image whose sides are not
multiples of 8 into four overlapping quarters; its UNet pads to its multiple), which on a band would be the
band's, not the image's. So the domain-parallel denoiser runs the *body* of a network it knows, on the image
padded as the network pads it, and :func:`program_for` says how for each:

- deepinv's ``DRUNet``: its noise-level map appended as a channel, ``forward_unet``, multiple 8; an image whose
  sides are multiples of 8 (and at least 32) gives exactly ``DRUNet.forward``; other sizes give
  ``forward_unet`` of the image replicate-padded to multiples of 8 and cropped (DRUNet's own ``test_pad``, which
  its ``forward`` uses in training mode and for small images; for large ones it averages quarters instead);
- deepinv's ``UNet``: ``_forward``, multiple ``2 ** scales``, its replicate padding (``test_pad``) otherwise;
- deepinv's ``DnCNN``: its ``forward`` (only convolutions and activations), multiple 1;
- a denoiser with a ``band_program()`` method says so itself (distinv's ``ResidualDenoiser``: ``x - body(x)`` of
  its network's program; its ``SlicewiseDenoiser3D``: its 2D network's program with ``slicewise`` axes: slices
  across the banded dim are whole 2D images each rank runs on its own, slices across the others are 2D images
  whose rows are the banded dim, run on bands).

Anything else raises ``ValueError`` naming the class (use ``parallel="windows"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BandProgram:
    """How to run ``network`` on a band.

    :param network: the module whose tree :func:`~distinv.domain.layers.band_network` rewrites.
    :param inputs: ``inputs(band, sigma)``: the body's input for a band of the padded image ``(B, C, h, W)``
        (e.g. with the noise-level map of ``sigma`` appended as a channel).
    :param body: ``body(rewritten_network, inputs)``: the network's layers on the band.
    :param multiple: the size multiple the body needs along every spatial dim (the padding's).
    :param residual: the denoiser returns ``band - body`` (a noise-predicting wrapper).
    :param slicewise: for a 2D ``network`` run over volumes ``(B, C, D, H, W)`` slice by slice: the axes sliced
        across (among 2, 3, 4), the results averaged; ``None`` (default): the network takes the signal as it is.
    :param pixels_per_call: with ``slicewise``, the most pixels (slices x h x w of the whole volume's slices) one
        call of the network takes.
    """

    network: nn.Module
    inputs: Callable[[torch.Tensor, object], torch.Tensor]
    body: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    multiple: int
    residual: bool = False
    slicewise: tuple[int, ...] | None = None
    pixels_per_call: int = 2**20

    def run(self, network: nn.Module, x: torch.Tensor, sigma: object) -> torch.Tensor:
        """The denoiser's output for ``x`` (a padded 2D band or slice batch) through ``network``."""
        out = self.body(network, self.inputs(x, sigma))
        return x - out if self.residual else out


def _noise_map(band: torch.Tensor, sigma: object) -> torch.Tensor:
    """DRUNet's noise-level channel for a band: ``sigma`` a number, or one per sample (a map of the band's shape
    is taken as given: the caller cut it to the band)."""
    shape = (band.shape[0], 1, *band.shape[2:])
    if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
        if tuple(sigma.shape) == shape:
            return sigma.to(band)
        return sigma.to(band).reshape(band.shape[0], *([1] * (band.ndim - 1))).expand(shape)
    value = sigma.to(band) if isinstance(sigma, torch.Tensor) else torch.tensor(float(sigma), dtype=band.dtype)
    return value.to(band.device).expand(shape)


def program_for(denoiser: nn.Module) -> BandProgram:
    """The :class:`BandProgram` of a known denoiser.

    :raises ValueError: for a network this module does not know, naming it and the alternative.
    """
    from deepinv.models import DnCNN, DRUNet, UNet

    if callable(getattr(denoiser, "band_program", None)):
        return denoiser.band_program()
    if isinstance(denoiser, DRUNet):
        return BandProgram(
            denoiser,
            lambda band, sigma: torch.cat([band, _noise_map(band, sigma)], dim=1),
            lambda network, x: type(network).forward_unet(network, x),
            8,
        )
    if isinstance(denoiser, UNet):
        return BandProgram(
            denoiser, lambda band, sigma: band, lambda network, x: type(network)._forward(network, x),
            2 ** len(denoiser._upc_names),
        )  # fmt: skip
    if isinstance(denoiser, DnCNN):
        return BandProgram(denoiser, lambda band, sigma: band, lambda network, x: type(network).forward(network, x), 1)
    raise ValueError(
        f"parallel='domain' runs deepinv's DRUNet, UNet and DnCNN and networks with a band_program(); a "
        f"{type(denoiser).__name__} is not one of them: use parallel='windows' (overlapping windows)."
    )
