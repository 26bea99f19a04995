"""A 2D denoiser applied to a volume slice by slice along each of its three axes, the three results averaged."""

from __future__ import annotations

import torch
from deepinv.models import Denoiser


class SlicewiseDenoiser3D(Denoiser):
    """``(B, C, D, H, W)`` volumes through a 2D denoiser ``(N, C, h, w) -> (N, C, h, w)``: the slices across
    each axis in ``axes`` go through in batches, and the per-axis results are averaged. Works on the windows of the
    tiled distributed denoiser (each window is a smaller volume).

    :param denoiser: the 2D network.
    :param axes: the axes sliced across, among 2 (D), 3 (H) and 4 (W); default all three.
    :param pixels_per_call: the most pixels (slices x h x w) one call of the network takes, at least one slice;
        default 2^20 (256 slices of 64², 4 of 512²): the network's activations grow with it, and a fixed count
        of slices would take gigabytes at 512².
    """

    def __init__(self, denoiser: torch.nn.Module, axes: tuple[int, ...] = (2, 3, 4), pixels_per_call: int = 2**20):
        super().__init__()
        if not axes or any(a not in (2, 3, 4) for a in axes):
            raise ValueError(f"axes={axes}: choose among 2 (D), 3 (H) and 4 (W).")
        if pixels_per_call < 1:
            raise ValueError(f"pixels_per_call={pixels_per_call}: give a positive number of pixels.")
        self.denoiser, self.axes, self.pixels_per_call = denoiser, tuple(axes), int(pixels_per_call)

    @property
    def size_multiple(self) -> int:
        """The 2D network's size multiple, which every axis of a window must meet."""
        from distinv.tiling.processing import size_multiple_of

        return size_multiple_of(self.denoiser)

    def band_program(self):
        """How the domain-parallel denoiser runs it on slabs: the 2D network's program, slice by slice across
        ``axes`` (:class:`~distinv.domain.networks.BandProgram`'s ``slicewise``)."""
        import dataclasses

        from distinv.domain.networks import program_for

        inner = program_for(self.denoiser)
        return dataclasses.replace(inner, slicewise=self.axes, pixels_per_call=self.pixels_per_call)

    def forward(self, x: torch.Tensor, sigma=None, **kwargs) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"x has shape {tuple(x.shape)}: SlicewiseDenoiser3D takes (B, C, D, H, W) volumes.")
        if isinstance(sigma, torch.Tensor) and sigma.numel() > 1:
            raise ValueError("SlicewiseDenoiser3D takes one noise level (a number) per call.")
        out = torch.zeros_like(x)
        for axis in self.axes:
            moved = x.movedim(axis, 1)  # (B, S, C, h, w): slices across `axis`
            b, s = moved.shape[:2]
            slices = moved.reshape(b * s, *moved.shape[2:])
            per_call = max(1, self.pixels_per_call // (slices.shape[-2] * slices.shape[-1]))
            done = torch.cat([self.denoiser(chunk, sigma, **kwargs) for chunk in slices.split(per_call)])
            out += done.reshape(b, s, *done.shape[1:]).movedim(1, axis)
        return out / len(self.axes)
