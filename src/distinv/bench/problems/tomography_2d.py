"""The Shepp-Logan phantom under parallel-beam Radon projections, the angles split into K blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from deepinv.physics import Tomography

from ...images import shepp_logan_2d
from ...slab_physics import SlabStack
from .base import Problem, ShardedPhysics, check_positive, weighted_sum_of_terms

MIN_SIZE = 16


def block_angles(index: int, num_angles: int, num_operators: int) -> torch.Tensor:
    """Operator ``index``'s angles (degrees): every K-th of ``num_angles`` angles in [0, 180), interleaved so
    that each block spans the whole half-turn."""
    return torch.arange(index, num_angles, num_operators, dtype=torch.float32) * (180.0 / num_angles)


# ||R||^2 of deepinv's parallel-beam Radon of n angles spread over [0, 180) on a W x W image is 0.966 n W
# (power iteration at W = 32..128, n = 10..45, within 0.2%).
RADON_SQNORM_PER_ANGLE_PIXEL = 0.966


def normalised_tomography(angles: torch.Tensor, size: int, device: torch.device | str = "cpu") -> Tomography:
    """deepinv's ``Tomography(normalize=True)`` without its power iteration: the same unit-norm scaling from the
    closed form ``||R|| = sqrt(0.966 n W)`` (the power iteration costs about a hundred projections, minutes per
    operator at 2048^2). The operator's own ``normalize`` path applies it to ``A``, ``A_adjoint`` and FBP."""
    op = Tomography(angles=angles, img_width=size, circle=False, normalize=False, device=device)
    norm = (RADON_SQNORM_PER_ANGLE_PIXEL * len(angles) * size) ** 0.5
    op.register_buffer("operator_norm", torch.tensor(norm, device=device))
    op.normalize = True
    return op


def _radon(index: int, device: torch.device, shared: dict) -> Tomography:
    return normalised_tomography(block_angles(index, shared["num_angles"], shared["k"]), shared["size"], device)


def fbp_start(problem: Problem, physics, y_local) -> torch.Tensor:
    """Filtered back-projection of all angles: each block's FBP weighted by its share of the angles (its cost)."""
    n = problem.shared["num_angles"]
    if isinstance(physics, SlabStack):  # sharded in slabs: every rank holds all K blocks of its own slices
        weights = [cost / n for cost in problem.operator_costs]
        return physics.weighted_sum("A_dagger", y_local, weights, fbp=True)
    terms = [
        op.A_dagger(y, fbp=True) * (problem.operator_costs[i] / n)
        for i, op, y in zip(physics.local_indexes, physics.local_physics, y_local, strict=True)
    ]
    return weighted_sum_of_terms(physics, terms, problem.ground_truth.to(physics.ctx.device))


def angle_block_problem(
    name: str,
    phantom: Callable[[int], torch.Tensor],
    factory,
    size: int,
    min_size: int,
    num_angles: int,
    num_operators: int,
    noise_sigma: float,
    seed: int,
    init_name: str,
    check_only: bool = False,
    sharded: ShardedPhysics | None = None,
) -> Problem | None:
    """A tomography problem whose K operators are interleaved blocks of ``num_angles`` angles; ``phantom(size)``
    is built only once the parameters are valid."""
    if size < min_size:
        raise ValueError(f"size={size}: {name} needs at least {min_size} pixels per side.")
    check_positive("num_operators", num_operators, 1)
    check_positive("noise_sigma", noise_sigma)
    if num_operators > num_angles:
        raise ValueError(
            f"num_operators={num_operators} is larger than num_angles={num_angles}: every operator "
            "needs at least one angle."
        )
    if check_only:
        return None
    costs = [float(block_angles(i, num_angles, num_operators).numel()) for i in range(num_operators)]
    return Problem(
        name=name,
        ground_truth=phantom(size),
        num_operators=num_operators,
        factory=factory,
        shared={"k": num_operators, "num_angles": num_angles, "size": size},
        noise_sigma=noise_sigma,
        seed=seed,
        init_name=init_name,
        init=fbp_start,
        operator_costs=costs,
        sharded=sharded,
    )


def build(
    size: int = 256,
    num_angles: int = 180,
    num_operators: int = 4,
    noise_sigma: float = 0.01,
    seed: int = 0,
    check_only: bool = False,
) -> Problem | None:
    return angle_block_problem(
        "tomography_2d",
        shepp_logan_2d,
        _radon,
        size,
        MIN_SIZE,
        num_angles,
        num_operators,
        noise_sigma,
        seed,
        "FBP",
        check_only,
    )
