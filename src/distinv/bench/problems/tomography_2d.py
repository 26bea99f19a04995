"""The Shepp-Logan phantom under parallel-beam Radon projections, the angles split into K blocks."""

from __future__ import annotations

import torch
from deepinv.physics import Tomography

from ..data import shepp_logan_2d
from .base import Problem, check_positive, weighted_sum_of_terms

MIN_SIZE = 16


def block_angles(index: int, num_angles: int, num_operators: int) -> torch.Tensor:
    """Operator ``index``'s angles (degrees): every K-th of ``num_angles`` angles in [0, 180), interleaved so
    that each block spans the whole half-turn."""
    return torch.arange(index, num_angles, num_operators, dtype=torch.float32) * (180.0 / num_angles)


def _radon(index: int, device: torch.device, shared: dict) -> Tomography:
    angles = block_angles(index, shared["num_angles"], shared["k"])
    return Tomography(angles=angles, img_width=shared["size"], circle=False, normalize=True, device=device)


def _fbp(problem: Problem, physics, y_local) -> torch.Tensor:
    """Filtered back-projection of all angles: each block's FBP weighted by its share of the angles."""
    n = problem.shared["num_angles"]
    terms = [
        op.A_dagger(y, fbp=True) * (op.radon.theta.numel() / n)
        for op, y in zip(physics.local_physics, y_local, strict=True)
    ]
    return weighted_sum_of_terms(physics, terms, problem.ground_truth.to(physics.ctx.device))


def build(
    size: int = 256, num_angles: int = 180, num_operators: int = 4, noise_sigma: float = 0.01, seed: int = 0
) -> Problem:
    if size < MIN_SIZE:
        raise ValueError(f"size={size}: tomography_2d needs at least {MIN_SIZE} pixels.")
    check_positive("num_operators", num_operators, 1)
    check_positive("noise_sigma", noise_sigma)
    if num_operators > num_angles:
        raise ValueError(
            f"num_operators={num_operators} is larger than num_angles={num_angles}: every operator "
            "needs at least one angle."
        )
    costs = [float(block_angles(i, num_angles, num_operators).numel()) for i in range(num_operators)]
    return Problem(
        name="tomography_2d",
        ground_truth=shepp_logan_2d(size),
        num_operators=num_operators,
        factory=_radon,
        shared={"k": num_operators, "num_angles": num_angles, "size": size},
        noise_sigma=noise_sigma,
        seed=seed,
        init_name="FBP",
        init=_fbp,
        operator_costs=costs,
    )
