"""Deterministic stacks of real deepinv operators for the tests: every rank builds the same ones."""

from __future__ import annotations

import math

import torch
from deepinv.physics import BlurFFT, Downsampling, GaussianNoise, Inpainting, LinearPhysics
from deepinv.physics.functional.blur import gaussian_blur


class Fourier(LinearPhysics):
    """Orthonormal 2D DFT: real images to complex measurements (adjoint w.r.t. the real inner product)."""

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.fft.fft2(x, norm="ortho")

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.fft.ifft2(y, norm="ortho").real


def anisotropic_blur(index: int, img_size: tuple[int, ...], noise: float = 0.0) -> BlurFFT:
    """Gaussian blur elongated along an angle that differs per index."""
    angle = 180.0 * index / 7.0
    kernel = gaussian_blur(sigma=(1.0 + 0.25 * (index % 3), 0.5), angle=angle)
    return BlurFFT(img_size=img_size, filter=kernel, noise_model=GaussianNoise(sigma=noise))


def mask(index: int, img_size: tuple[int, ...], keep: float = 0.7) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + index)
    return (torch.rand(img_size, generator=g) < keep).float()


def make_operator(kind: str, index: int, img_size: tuple[int, ...], noise: float = 0.0) -> LinearPhysics:
    """Operator ``index`` of stack ``kind``.

    - ``"blur"``: anisotropic FFT blurs, all measurements shaped like the image;
    - ``"mixed"``: measurements of different shapes and dtypes (blur, 2x downsampling, inpainting, complex DFT).
    """
    if kind == "blur":
        return anisotropic_blur(index, img_size, noise)
    if kind == "mixed":
        which = index % 4
        if which == 0:
            return anisotropic_blur(index, img_size, noise)
        if which == 1:
            return Downsampling(
                img_size=img_size,
                factor=2,
                filter="gaussian",
                padding="circular",
                noise_model=GaussianNoise(sigma=noise),
            )
        if which == 2:
            return Inpainting(img_size=img_size, mask=mask(index, img_size), noise_model=GaussianNoise(sigma=noise))
        return Fourier(noise_model=GaussianNoise(sigma=noise))
    raise ValueError(kind)


def operator_list(kind: str, k: int, img_size: tuple[int, ...], noise: float = 0.0) -> list[LinearPhysics]:
    return [make_operator(kind, i, img_size, noise) for i in range(k)]


def relative_error(a, b) -> float:
    """Max over entries of a TensorList (or one tensor) of ||a - b|| / ||b||."""
    if isinstance(a, torch.Tensor):
        a, b = [a], [b]
    worst = 0.0
    for u, v in zip(a, b, strict=True):
        denom = torch.linalg.vector_norm(v).item()
        num = torch.linalg.vector_norm(u - v).item()
        worst = max(worst, num / denom if denom > 0 else num)
    return worst


def checksum(t) -> float:
    if isinstance(t, torch.Tensor):
        t = [t]
    return math.fsum(float(torch.view_as_real(u).double().sum() if u.is_complex() else u.double().sum()) for u in t)
