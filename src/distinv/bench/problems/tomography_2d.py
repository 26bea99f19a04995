"""The Shepp-Logan phantom under parallel-beam Radon projections, the angles split into K blocks.

Each block is a unit-norm parallel-beam operator: distinv's lean ``ParallelBeam`` by default (nothing stored but
its angles, the exact adjoint), deepinv's ``Tomography`` with ``projector="deepinv"`` (one sampling grid per
angle stored for each direction, its interpolated back-projection as adjoint) to compare the two, or ASTRA's
projectors in the same geometry with ``projector="astra"`` (where astra-toolbox is installed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from deepinv.physics import Tomography

from distinv.bench.problems.base import (
    Problem,
    ShardedPhysics,
    check_number,
    check_seed,
    check_size,
    weighted_sum_of_terms,
)
from distinv.images import shepp_logan_2d
from distinv.operators.parallel_beam import ParallelBeam

MIN_SIZE = 16
PROJECTORS = ("distinv", "deepinv", "astra")


def block_angles(index: int, num_angles: int, num_operators: int) -> torch.Tensor:
    """Operator ``index``'s angles (degrees): every K-th of ``num_angles`` angles in [0, 180), interleaved so
    that each block spans the whole half-turn."""
    return torch.arange(index, num_angles, num_operators, dtype=torch.float32) * (180.0 / num_angles)


# ||R||^2 of deepinv's parallel-beam Radon of n angles spread over [0, 180) on a W x W image is 0.966 n W
# (power iteration at W = 32..128, n = 10..45, within 0.2%).
RADON_SQNORM_PER_ANGLE_PIXEL = 0.966


def radon_norm(num_angles: int, size: int) -> float:
    """``||R||`` of a parallel-beam Radon transform of ``num_angles`` angles over [0, 180) on a ``size``² image,
    from the closed form ``sqrt(0.966 n W)`` (deepinv's and distinv's projectors alike, within 0.2%)."""
    return (RADON_SQNORM_PER_ANGLE_PIXEL * num_angles * size) ** 0.5


def normalised_tomography(angles: torch.Tensor, size: int, device: torch.device | str = "cpu") -> Tomography:
    """deepinv's ``Tomography(normalize=True)`` without its power iteration: the same unit-norm scaling from the
    closed form ``||R|| = sqrt(0.966 n W)`` (the power iteration costs about a hundred projections, minutes per
    operator at 2048^2). The operator's own ``normalize`` path applies it to ``A``, ``A_adjoint`` and FBP."""
    op = Tomography(angles=angles, img_width=size, circle=False, normalize=False, device=device)
    op.register_buffer("operator_norm", torch.tensor(radon_norm(len(angles), size), device=device))
    op.normalize = True
    return op


def unit_norm_radon(
    angles: torch.Tensor, size: int, projector: str, device: torch.device | str = "cpu"
) -> ParallelBeam | Tomography:
    """One block's unit-norm parallel-beam operator on ``(B, C, size, size)`` images (distinv's ``ParallelBeam``
    also takes ``(B, C, D, size, size)`` volumes): ``projector`` is ``"distinv"``, ``"deepinv"`` or ``"astra"``
    (``ParallelBeam`` on ASTRA's projectors)."""
    if projector == "deepinv":
        return normalised_tomography(angles, size, device)
    backend = "astra" if projector == "astra" else "torch"
    return ParallelBeam(angles, size, scale=1 / radon_norm(len(angles), size), device=device, backend=backend)


def _radon(index: int, device: torch.device, shared: dict) -> ParallelBeam | Tomography:
    angles = block_angles(index, shared["num_angles"], shared["k"])
    return unit_norm_radon(angles, shared["size"], shared["projector"], device)


def fbp_start(problem: Problem, physics, y_local) -> torch.Tensor:
    """Filtered back-projection of all angles (FDK for cone beam): each block's weighted by its share of the
    angles (its cost)."""
    n = problem.shared["num_angles"]
    if getattr(physics, "image_placement", None) == "row bands":  # slabs: every rank holds all K blocks
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
    projector: str = "distinv",
) -> Problem | None:
    """A tomography problem whose K operators are interleaved blocks of ``num_angles`` angles; ``phantom(size)``
    is built only once the parameters are valid."""
    check_size(name, size, min_size)
    check_number("num_angles", num_angles, 1, whole=True)
    check_number("num_operators", num_operators, 1, whole=True)
    check_number("noise_sigma", noise_sigma, 0)
    check_seed(seed)
    if num_operators > num_angles:
        raise ValueError(
            f"num_operators={num_operators} is larger than num_angles={num_angles}: every operator "
            "needs at least one angle."
        )
    if projector not in PROJECTORS:
        raise ValueError(
            f"projector={projector!r}: give 'distinv' (the lean ParallelBeam, default), 'deepinv' (deepinv's "
            "Tomography, to compare) or 'astra' (ASTRA's projectors, with astra-toolbox installed)."
        )
    if check_only:
        return None
    costs = [float(block_angles(i, num_angles, num_operators).numel()) for i in range(num_operators)]
    return Problem(
        name=name,
        ground_truth=phantom(size),
        num_operators=num_operators,
        factory=factory,
        shared={"k": num_operators, "num_angles": num_angles, "size": size, "projector": projector},
        noise_sigma=noise_sigma,
        seed=seed,
        init_name=init_name,
        init=fbp_start,
        operator_costs=costs,
        sharded=sharded,
    )


def signal_shape(size: int, **params: Any) -> tuple[int, ...]:
    """The phantom's shape ``(1, 1, size, size)``, without building it (``params``: the problem's other
    parameters, which do not change it)."""
    return (1, 1, size, size)


def build(
    size: int = 256,
    num_angles: int = 180,
    num_operators: int = 4,
    noise_sigma: float = 0.01,
    seed: int = 0,
    projector: str = "distinv",
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
        projector=projector,
    )
