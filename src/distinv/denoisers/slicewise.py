"""A 2D denoiser applied to a volume slice by slice along each of its three axes, the three results averaged."""

from __future__ import annotations

import torch
from deepinv.models import Denoiser


class SlicewiseDenoiser3D(Denoiser):
    """``(B, C, D, H, W)`` volumes through a 2D denoiser ``(N, C, h, w) -> (N, C, h, w)``: the slices across
    each axis in ``axes`` form a batch of ``slices_per_call`` at most, and the per-axis results are averaged.
    Works on the windows of the tiled distributed denoiser (each window is a smaller volume)."""

    def __init__(self, denoiser: torch.nn.Module, axes: tuple[int, ...] = (2, 3, 4), slices_per_call: int = 64):
        super().__init__()
        if not axes or any(a not in (2, 3, 4) for a in axes):
            raise ValueError(f"axes={axes}: choose among 2 (D), 3 (H) and 4 (W).")
        self.denoiser, self.axes, self.slices_per_call = denoiser, tuple(axes), slices_per_call

    @property
    def size_multiple(self) -> int:
        """The 2D network's size multiple, which every axis of a window must meet."""
        from ..processing import size_multiple_of

        return size_multiple_of(self.denoiser)

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
            done = torch.cat([self.denoiser(chunk, sigma, **kwargs) for chunk in slices.split(self.slices_per_call)])
            out += done.reshape(b, s, *done.shape[1:]).movedim(1, axis)
        return out / len(self.axes)
