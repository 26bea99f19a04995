"""A 3D Shepp-Logan volume under cone-beam (default) or parallel-beam projections about the z axis, the views
in K interleaved blocks.

``geometry="cone"`` (default): the laboratory micro-CT case. A point source and a flat detector circle the volume
once (``num_angles`` views over 360 degrees); the source sits where the volume's width subtends ``cone_angle``
degrees, the detector at ``magnification`` times the source's distance from it, its pixels one voxel wide at the
axis (:class:`~distinv.operators.cone_beam.ConeBeam`, distinv's own pair on any device, or ASTRA's with
``projector="astra"``). Each ray crosses many slices, so the slices are coupled: the sharded engine keeps slabs of
z-slices and exchanges detector rows (:class:`~distinv.sharded.cone_slabs.ConeSlabs`). Measurements of block k:
``(1, 1, rows, columns, views_k)``; the start is FDK.

``geometry="parallel"``: parallel rays over 180 degrees, so every z-slice is projected on its own: the 3D operator
is the 2D Radon transform applied to each slice, measurements ``(1, 1, D, detectors, angles)``. distinv's
``ParallelBeam`` (the default) takes the volume as it is, a workspace's worth of slices and angles at a time. With
``projector="deepinv"`` slices go through deepinv's Radon a few at a time (``SlicewiseRadon``): it samples every
angle's rotated copy of a slice at once (``padded width^2 x angles`` values per slice), which for a whole 512^3
volume would be tens of GB. The start is FBP slice by slice.

Every block is scaled to unit norm: parallel beam by its closed form; cone beam by power iteration on a small
volume of the same cone (``||A||^2`` of line integrals grows as views times width at a fixed cone: within 1% from
24^3 to 48^3, :func:`cone_sqnorm_per_view_voxel`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from deepinv.physics import LinearPhysics

from distinv.bench.problems.base import Problem, check_number
from distinv.bench.problems.tomography_2d import (
    angle_block_problem,
    block_angles,
    normalised_tomography,
    unit_norm_radon,
)
from distinv.comm.context import DistributedContext
from distinv.images import shepp_logan_3d
from distinv.numerics.linalg import power_iteration
from distinv.operators.cone_beam import ConeBeam
from distinv.sharded.cone_slabs import ConeSlabs
from distinv.sharded.slabs import SlabStack

GEOMETRIES = ("cone", "parallel")
CONE_PROJECTORS = ("distinv", "astra")
MAX_CONE_ANGLE = 60.0  # degrees; beyond about 70.5 the source would sit inside the volume's corners
# the small volume and views the cone's norm is measured on (float64 power iteration, about a second)
NORM_PROBE_WIDTH, NORM_PROBE_VIEWS = 24, 30

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


def source_distance(width: int, cone_angle: float) -> float:
    """The source's distance to the axis, in voxels, at which a ``width``-voxel volume subtends ``cone_angle``
    degrees."""
    return (width / 2) / math.tan(math.radians(cone_angle) / 2)


def cone_operator(
    angles: torch.Tensor, size: int, cone_angle: float, magnification: float, scale: float = 1.0, backend="torch"
) -> ConeBeam:
    """The cone-beam operator of ``angles`` (degrees) on a ``size``^3 volume, the problem's geometry."""
    source = source_distance(size, cone_angle)
    return ConeBeam(angles, size, size, source, (magnification - 1) * source, scale=scale, backend=backend)


@functools.lru_cache(maxsize=16)
def cone_sqnorm_per_view_voxel(cone_angle: float, magnification: float) -> float:
    """``||A||^2 / (views * width)`` of the problem's cone-beam operator: power iteration (float64, from a
    fixed seed) on a 24^3 volume with 30 views of a turn. At a fixed cone the ratio holds within 1% over widths
    24-48 and views 30-90 (0.97-1.02 over cone angles 14-30 degrees and magnifications 2-3)."""
    angles = torch.arange(NORM_PROBE_VIEWS, dtype=torch.float64) * (360.0 / NORM_PROBE_VIEWS)
    op = cone_operator(angles, NORM_PROBE_WIDTH, cone_angle, magnification)
    like = torch.zeros((1, 1, *(NORM_PROBE_WIDTH,) * 3), dtype=torch.float64)
    with torch.no_grad():
        value, _ = power_iteration(lambda x: op.A_adjoint(op.A(x)), like, max_iter=200, tol=1e-5)
    return float(value) / (NORM_PROBE_VIEWS * NORM_PROBE_WIDTH)


def block_views(index: int, num_angles: int, num_operators: int) -> torch.Tensor:
    """Operator ``index``'s view angles (degrees): every K-th of ``num_angles`` views of a full turn."""
    return torch.arange(index, num_angles, num_operators, dtype=torch.float64) * (360.0 / num_angles)


def _radon3d(index: int, device: torch.device, shared: dict) -> LinearPhysics:
    if shared["geometry"] == "cone":
        angles = block_views(index, shared["num_angles"], shared["k"])
        size, cone, magnification = shared["size"], shared["cone_angle"], shared["magnification"]
        scale = 1 / math.sqrt(cone_sqnorm_per_view_voxel(cone, magnification) * len(angles) * size)
        backend = "astra" if shared["projector"] == "astra" else "torch"
        return cone_operator(angles, size, cone, magnification, scale, backend).to(device)
    angles = block_angles(index, shared["num_angles"], shared["k"])
    if shared["projector"] == "deepinv":
        return SlicewiseRadon(angles, shared["size"], device)
    return unit_norm_radon(angles, shared["size"], shared["projector"], device)


def _slabs(problem: Problem, ctx: DistributedContext) -> SlabStack | ConeSlabs:
    """Every block on every rank, applied to its slabs of z-slices: parallel beam, a slice's projections are its
    own (``SlabStack``); cone beam, the slabs exchange detector rows (``ConeSlabs``)."""
    operators = [problem.factory(i, ctx.device, problem.shared) for i in range(problem.num_operators)]
    return ConeSlabs(ctx, operators) if problem.shared["geometry"] == "cone" else SlabStack(ctx, operators)


def signal_shape(size: int, **params: Any) -> tuple[int, ...]:
    """The volume's shape ``(1, 1, size, size, size)``, without building it (``params``: the problem's other
    parameters, which do not change it)."""
    return (1, 1, size, size, size)


def sharded_halo(size: int, **params: Any) -> tuple[int, int]:
    """Rows (z-slices) beyond its slab that the sharded physics reads: none (parallel-beam slabs project on their
    own; cone-beam slabs exchange detector rows instead, see :mod:`distinv.sharded.cone_slabs`)."""
    return 0, 0


def build(
    size: int = 64,
    num_angles: int = 90,
    num_operators: int = 4,
    noise_sigma: float = 0.01,
    seed: int = 0,
    geometry: str = "cone",
    cone_angle: float = 14.0,
    magnification: float = 2.0,
    projector: str = "distinv",
    check_only: bool = False,
) -> Problem | None:
    """The problem (see the module's docstring): ``num_angles`` views (a full turn for cone beam, a half turn for
    parallel beam) in ``num_operators`` interleaved blocks; ``cone_angle`` (degrees, the full angle the volume's
    width subtends at the source, in (0, 60]) and ``magnification`` (source to detector over source to axis, >= 1)
    for ``geometry="cone"``; ``projector``: ``"distinv"`` (default), ``"astra"``, or for parallel beam
    ``"deepinv"``.

    :raises ValueError: naming the parameter, for any value the problem cannot take.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(
            f"geometry={geometry!r}: give 'cone' (default: a point source circling the volume) or 'parallel' "
            "(parallel rays, slices independent)."
        )
    if geometry == "cone":
        check_number("cone_angle", cone_angle, 0, MAX_CONE_ANGLE, above=True)
        check_number("magnification", magnification, 1)
        if projector not in CONE_PROJECTORS:
            raise ValueError(
                f"projector={projector!r} has no cone beam: give 'distinv' (default) or 'astra' for geometry='cone', "
                "or geometry='parallel' to compare with deepinv's Tomography."
            )
    problem = angle_block_problem(
        "tomography_3d",
        shepp_logan_3d,
        _radon3d,
        size,
        MIN_SIZE,
        num_angles,
        num_operators,
        noise_sigma,
        seed,
        "FDK" if geometry == "cone" else "FBP (slice by slice)",
        check_only,
        sharded=_slabs,
        projector=projector,
    )
    if problem is not None:
        problem.shared.update(geometry=geometry, cone_angle=float(cone_angle), magnification=float(magnification))
        if geometry == "cone":
            problem.info.update(cone_angle=float(cone_angle), magnification=float(magnification))
    return problem


def estimated_sqnorm(
    vectors: torch.Tensor,
    volume_shape: tuple[int, int, int],
    detector_shape: tuple[int, int],
    probe_width: int = 16,
    probe_views: int = 24,
) -> float:
    """``||A||^2`` of the cone-beam operator of ``vectors`` estimated on a small copy of its geometry: the scene scaled
    by ``f = probe_width / W`` (source and detector positions; the volume's voxels and the detector's pixels ``f`` times
    fewer per side, each the same size as before), ``probe_views`` of the views evenly picked, power iteration (float64,
    fixed seed) on that, times ``(views / probe_views) / f``: for line integrals ``||A||^2`` grows as views times width
    at a fixed scene (on circular orbits within 1% from 16^3 to 64^3, ``tests/test_cone_fdk.py`` pins it at 2%).
    Seconds, where power iteration on the operator itself takes minutes at 128^3.

    :param vectors: ``(V, 12)`` geometry in voxel units; ``volume_shape`` ``(D, H, W)``; ``detector_shape``
        ``(rows, columns)``.
    """
    vectors = torch.as_tensor(vectors, dtype=torch.float64)
    factor = min(1.0, probe_width / volume_shape[2])
    picked = torch.linspace(0, len(vectors) - 1, min(probe_views, len(vectors))).round().long().unique()
    small = vectors[picked].clone()
    small[:, 0:6] *= factor  # source and detector move in; the pixels keep their pitch against the voxels
    shape = tuple(max(2, round(n * factor)) for n in volume_shape)
    detector = tuple(max(2, round(n * factor)) for n in detector_shape)
    probe = ConeBeam.from_vectors(small, shape, detector)
    like = torch.zeros((1, 1, *shape), dtype=torch.float64)
    with torch.no_grad():
        value, _ = power_iteration(lambda x: probe.A_adjoint(probe.A(x)), like, max_iter=100, tol=1e-4)
    return float(value) * (len(vectors) / len(picked)) / factor
