"""The networks the project builds: deepinv denoisers by class name, untrained, optionally noise-predicting."""

from __future__ import annotations

import inspect

import torch
from deepinv.models import Denoiser

from distinv.tiling.planner import size_multiple_of


class ResidualDenoiser(Denoiser):
    """``D(x, sigma) = x - N(x, sigma)``: the network ``N`` predicts the noise (residual learning, as in DnCNN).

    Why: a network that must reproduce the image itself (DRUNet's head has no skip from the input) learns the
    identity only approximately; a small one trained briefly blurs fine detail even at small sigma, which caps a
    plug-and-play reconstruction whose last iterations use a small sigma. The network's last convolution starts
    at zero, so training starts from the identity. (Predicting the noise in units of sigma, ``x - sigma N``,
    would make the identity exact at sigma = 0 but asks the network to divide by sigma: measured on flat
    patches, 300 steps reach 31.6 dB at sigma 0.05 that way against 43.1 dB this way.)
    """

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    @property
    def size_multiple(self) -> int:
        return size_multiple_of(self.network)

    def zero_last_convolution(self) -> None:
        last = [m for m in self.network.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)][-1]
        torch.nn.init.zeros_(last.weight)
        if last.bias is not None:
            torch.nn.init.zeros_(last.bias)

    def band_program(self):
        """How the domain-parallel denoiser runs it on a band: its network's program, the difference taken."""
        import dataclasses

        from distinv.domain.networks import program_for

        inner = program_for(self.network)
        return dataclasses.replace(inner, residual=not inner.residual)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor, **kwargs) -> torch.Tensor:
        return x - self.network(x, sigma, **kwargs)


def build_network(arch: str, channels: int, arch_kwargs: dict, residual: bool = False) -> torch.nn.Module:
    """A deepinv denoiser by class name, untrained (no download); ``residual``: wrapped in
    :class:`ResidualDenoiser`."""
    import deepinv.models as models

    cls = getattr(models, arch, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ValueError(f"arch={arch!r} is not a deepinv denoiser: e.g. 'DRUNet', 'DnCNN', 'UNet'.")
    params = inspect.signature(cls).parameters
    kwargs = dict(arch_kwargs)
    for name in ("in_channels", "out_channels"):
        if name in params:
            kwargs.setdefault(name, channels)
    if "pretrained" in params:
        kwargs.setdefault("pretrained", None)
    network = cls(**kwargs)
    return ResidualDenoiser(network) if residual else network
