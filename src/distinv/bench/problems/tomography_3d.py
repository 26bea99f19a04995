"""A 3D Shepp-Logan volume under parallel-beam projections rotating about the z axis, angles in K blocks.

With parallel rays and rotation about z, every z-slice is projected on its own: the 3D operator is the 2D
Radon transform applied to each slice, so the measurements of block k have shape (1, 1, D, detectors, angles).
"""

from __future__ import annotations

import torch
from deepinv.physics import LinearPhysics, Tomography

from ..data import shepp_logan_3d
from .base import Problem, check_positive, weighted_sum_of_terms
from .tomography_2d import block_angles

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

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        slices, lead = self._slices(y)
        x = self.radon.A_dagger(slices, fbp=True)
        return x.reshape(*lead, *x.shape[-2:])


def _radon3d(index: int, device: torch.device, shared: dict) -> SlicewiseRadon:
    return SlicewiseRadon(block_angles(index, shared["num_angles"], shared["k"]), shared["size"], device)


def _fbp(problem: Problem, physics, y_local) -> torch.Tensor:
    n = problem.shared["num_angles"]
    terms = [
        op.fbp(y) * (op.radon.radon.theta.numel() / n) for op, y in zip(physics.local_physics, y_local, strict=True)
    ]
    return weighted_sum_of_terms(physics, terms, problem.ground_truth.to(physics.ctx.device))


def build(
    size: int = 64, num_angles: int = 90, num_operators: int = 4, noise_sigma: float = 0.01, seed: int = 0
) -> Problem:
    if size < MIN_SIZE:
        raise ValueError(f"size={size}: tomography_3d needs at least {MIN_SIZE} voxels per side.")
    check_positive("num_operators", num_operators, 1)
    check_positive("noise_sigma", noise_sigma)
    if num_operators > num_angles:
        raise ValueError(
            f"num_operators={num_operators} is larger than num_angles={num_angles}: every operator "
            "needs at least one angle."
        )
    costs = [float(block_angles(i, num_angles, num_operators).numel()) for i in range(num_operators)]
    return Problem(
        name="tomography_3d",
        ground_truth=shepp_logan_3d(size),
        num_operators=num_operators,
        factory=_radon3d,
        shared={"k": num_operators, "num_angles": num_angles, "size": size},
        noise_sigma=noise_sigma,
        seed=seed,
        init_name="FBP (slice by slice)",
        init=_fbp,
        operator_costs=costs,
    )
