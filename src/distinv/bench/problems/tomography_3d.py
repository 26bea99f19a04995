"""A 3D Shepp-Logan volume under parallel-beam projections rotating about the z axis, angles in K blocks.

With parallel rays and rotation about z, every z-slice is projected on its own: the 3D operator is the 2D
Radon transform applied to each slice, so the measurements of block k have shape (1, 1, D, detectors, angles).
"""

from __future__ import annotations

import torch
from deepinv.physics import LinearPhysics, Tomography

from ..data import shepp_logan_3d
from .base import Problem
from .tomography_2d import angle_block_problem, block_angles

MIN_SIZE = 16


class SlicewiseRadon(LinearPhysics):
    """Parallel-beam projections of a volume ``(B, C, D, H, W)`` about its z (D) axis."""

    def __init__(self, angles: torch.Tensor, size: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.radon = Tomography(angles=angles, img_width=size, circle=False, normalize=True, device=device)

    @staticmethod
    def _slices(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        b, c, d = t.shape[:3]
        return t.reshape(b * c * d, 1, *t.shape[3:]), (b, c, d)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        slices, lead = self._slices(x)
        y = self.radon.A(slices)
        return y.reshape(*lead, *y.shape[-2:])

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        slices, lead = self._slices(y)
        x = self.radon.A_adjoint(slices)
        return x.reshape(*lead, *x.shape[-2:])

    def A_dagger(self, y: torch.Tensor, fbp: bool = False, **kwargs) -> torch.Tensor:
        """With ``fbp=True``, slice-wise filtered back-projection; else least squares."""
        if not fbp:
            return super().A_dagger(y, **kwargs)
        slices, lead = self._slices(y)
        x = self.radon.A_dagger(slices, fbp=True)
        return x.reshape(*lead, *x.shape[-2:])


def _radon3d(index: int, device: torch.device, shared: dict) -> SlicewiseRadon:
    return SlicewiseRadon(block_angles(index, shared["num_angles"], shared["k"]), shared["size"], device)


def build(
    size: int = 64, num_angles: int = 90, num_operators: int = 4, noise_sigma: float = 0.01, seed: int = 0
) -> Problem:
    return angle_block_problem(
        "tomography_3d",
        shepp_logan_3d,
        _radon3d,
        size,
        MIN_SIZE,
        num_angles,
        num_operators,
        noise_sigma,
        seed,
        "FBP (slice by slice)",
    )
