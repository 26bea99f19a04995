"""Image quality against a ground truth: PSNR and SSIM (volumes averaged over their z-slices)."""

from __future__ import annotations

import math

import torch


def psnr(x: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` (clamped to ``[0, data_range]``) against ``reference``."""
    mse = torch.mean((x.detach().clamp(0, data_range) - reference) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def ssim(x: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5); volumes are averaged over their z-slices."""
    from deepinv.loss.metric import SSIM

    x = x.detach().clamp(0, data_range)
    if x.ndim == 5:  # (B, C, D, H, W): slices as a batch
        x, reference = (t.transpose(1, 2).flatten(0, 1) for t in (x, reference))
    return float(SSIM(max_pixel=data_range)(x, reference).mean())
