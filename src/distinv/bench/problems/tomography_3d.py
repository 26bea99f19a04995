"""A 3D Shepp-Logan volume under parallel-beam projections rotating about the z axis, angles in K blocks.

With parallel rays and rotation about z, every z-slice is projected on its own: the 3D operator is the 2D
Radon transform applied to each slice, so the measurements of block k have shape (1, 1, D, detectors, angles).
distinv's ``ParallelBeam`` (the default) takes the volume as it is, a workspace's worth of slices and angles at a
time. With ``projector="deepinv"`` slices go through deepinv's Radon a few at a time (``SlicewiseRadon``): it
samples every angle's rotated copy of a slice at once (``padded width^2 x angles`` values per slice), which for a
whole 512^3 volume would be tens of GB.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from deepinv.physics import LinearPhysics

from distinv.bench.problems.base import Problem
from distinv.bench.problems.tomography_2d import (
    angle_block_problem,
    block_angles,
    normalised_tomography,
    unit_norm_radon,
)
from distinv.comm.context import DistributedContext
from distinv.images import shepp_logan_3d
from distinv.sharded.slabs import SlabStack

MIN_SIZE = 16
WORKSPACE_BYTES = 256 * 2**20  # deepinv's per-call intermediate, bounded by the number of slices per call


class SlicewiseRadon(LinearPhysics):
    """Parallel-beam projections of a volume ``(B, C, D, H, W)`` about its z (D) axis, to ``(B, C, D,
    detectors, angles)``; ``slices_per_call`` slices at a time (default: a 256 MiB workspace)."""

    def __init__(
        self, angles: torch.Tensor, size: int, device: torch.device | str = "cpu", slices_per_call: int | None = None
    ):
        super().__init__()
        self.radon = normalised_tomography(angles, size, device)
        padded = math.ceil(math.sqrt(2) * size)
        per_slice = padded * padded * len(angles) * 4
        self.slices_per_call = slices_per_call or max(1, WORKSPACE_BYTES // per_slice)

    def _slicewise(self, fn, t: torch.Tensor) -> torch.Tensor:
        b, c, d = t.shape[:3]
        slices = t.reshape(b * c * d, 1, *t.shape[3:])
        out = torch.cat([fn(chunk) for chunk in slices.split(self.slices_per_call)])
        return out.reshape(b, c, d, *out.shape[-2:])

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._slicewise(self.radon.A, x)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._slicewise(self.radon.A_adjoint, y)

    def A_dagger(self, y: torch.Tensor, fbp: bool = False, **kwargs) -> torch.Tensor:
        """With ``fbp=True``, slice-wise filtered back-projection; else least squares."""
        if not fbp:
            return super().A_dagger(y, **kwargs)
        return self._slicewise(lambda s: self.radon.A_dagger(s, fbp=True), y)


def _radon3d(index: int, device: torch.device, shared: dict) -> LinearPhysics:
    angles = block_angles(index, shared["num_angles"], shared["k"])
    if shared["projector"] == "deepinv":
        return SlicewiseRadon(angles, shared["size"], device)
    return unit_norm_radon(angles, shared["size"], shared["projector"], device)


def _slabs(problem: Problem, ctx: DistributedContext) -> SlabStack:
    """Every block on every rank, applied to its slabs of z-slices (the projections of a slice are its own)."""
    return SlabStack(ctx, [problem.factory(i, ctx.device, problem.shared) for i in range(problem.num_operators)])


def signal_shape(size: int, **params: Any) -> tuple[int, ...]:
    """The volume's shape ``(1, 1, size, size, size)``, without building it (``params``: the problem's other
    parameters, which do not change it)."""
    return (1, 1, size, size, size)


def sharded_halo(size: int, **params: Any) -> tuple[int, int]:
    """Rows (z-slices) beyond its slab that the sharded physics reads: none (a slab projects on its own, see
    :meth:`~distinv.sharded.slabs.SlabStack.normal_halo`)."""
    return 0, 0


def build(
    size: int = 64,
    num_angles: int = 90,
    num_operators: int = 4,
    noise_sigma: float = 0.01,
    seed: int = 0,
    projector: str = "distinv",
    check_only: bool = False,
) -> Problem | None:
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
        check_only,
        sharded=_slabs,
        projector=projector,
    )
