"""Cone-beam projections of volumes (laboratory micro-CT), on any device: a point source and a flat detector per
view, the geometry given per view as ASTRA's ``cone_vec`` vectors (:mod:`distinv.operators.cone_geometry`, where
the volume's voxel coordinates are stated) or built for a circular orbit about z.

Two backends compute the same geometry: ``"torch"`` (default; :mod:`distinv.operators.cone_rays`, Joseph's
method, CPU and CUDA, the exact transpose as adjoint) and ``"astra"`` (ASTRA's CUDA projectors, where astra-toolbox
is built with CUDA and sees a GPU; its forward and back-projection are each other's transposes; data cross to it as
float32 arrays, one volume at a time). Either way each direction is the other's autograd backward, so the operator
differentiates to any order.
"""

from __future__ import annotations

import math

import torch
from deepinv.physics import LinearPhysics

from distinv.operators.cone_fdk import fdk
from distinv.operators.cone_geometry import check_vectors, circular_vectors
from distinv.operators.cone_rays import ConeRays
from distinv.operators.parallel_beam import MatchedPair, padded_width

# source and detector about as far from the sample as each other: a magnification of 2, as in laboratory micro-CT
SOURCE_DISTANCE_PER_WIDTH = 4.0
DETECTOR_DISTANCE_PER_WIDTH = 4.0
BACKENDS = ("torch", "astra")


class ConeBeam(LinearPhysics):
    """Cone-beam projections of ``(B, C, D, H, W)`` volumes to ``(B, C, rows, columns, views)``.

    Built for a circular orbit about z from the volume's size (``ConeBeam(angles, depth, width, ...)``: the volume
    ``(depth, width, width)``, detector pixels ``M`` voxels wide for the magnification ``M = (source_distance +
    detector_distance) / source_distance``, so one voxel at the axis, and the detector just large enough for the
    whole volume), or from measured per-view geometry with :meth:`from_vectors`.

    :param angles: ``(V,)`` view angles in degrees over the turn (a full turn is usual for cone beam).
    :param depth: ``D``, the volume's slices (along the rotation axis z).
    :param width: ``W``, the slices' side.
    :param source_distance: source to rotation axis, in voxels; default ``4 W``.
    :param detector_distance: rotation axis to detector, in voxels; default ``4 W``.
    :param scale: a factor on ``A`` (and so on ``A^T``), e.g. ``1 / ||A||``.
    :param backend: ``"torch"`` (default, any device) or ``"astra"`` (ASTRA's CUDA projectors).
    :param workspace_bytes: for ``"torch"``: the most one block of rays may hold (default: 8 MiB on a CPU, 256 MiB
        on a GPU).
    :raises ValueError: bad sizes, distances or backend; for ``"astra"``, ``ImportError`` without astra-toolbox and
        ``RuntimeError`` without its CUDA or a GPU.
    """

    def __init__(
        self,
        angles: torch.Tensor,
        depth: int,
        width: int,
        source_distance: float | None = None,
        detector_distance: float | None = None,
        scale: float = 1.0,
        backend: str = "torch",
        workspace_bytes: int | None = None,
    ):
        super().__init__()
        if depth < 2 or width < 2:
            raise ValueError(f"depth={depth}, width={width}: give a volume of at least 2 x 2 x 2 voxels.")
        source = SOURCE_DISTANCE_PER_WIDTH * width if source_distance is None else float(source_distance)
        detector = DETECTOR_DISTANCE_PER_WIDTH * width if detector_distance is None else float(detector_distance)
        if source <= width / math.sqrt(2) or detector < 0:
            raise ValueError(
                f"source_distance={source}, detector_distance={detector}: the source must lie outside the volume "
                f"(more than {width / math.sqrt(2):.1f} voxels from the axis) and the detector at or beyond the axis."
            )
        magnification = (source + detector) / source
        nearest = source - width / math.sqrt(2)  # the volume's corner closest to the source magnifies the most
        rows = math.ceil(depth * (source + detector) / nearest / magnification) + 2
        columns = math.ceil(padded_width(width) * source / nearest)
        vectors = circular_vectors(angles, source, detector, (rows, columns), magnification)
        self.magnification = magnification
        self._setup(vectors, (depth, width, width), (rows, columns), scale, backend, workspace_bytes)

    @classmethod
    def from_vectors(
        cls,
        vectors: torch.Tensor,
        volume_shape: tuple[int, int, int],
        detector_shape: tuple[int, int],
        scale: float = 1.0,
        backend: str = "torch",
        workspace_bytes: int | None = None,
    ) -> ConeBeam:
        """The operator of a measured (or any) geometry.

        :param vectors: ``(V, 12)`` per-view vectors, ASTRA's ``cone_vec`` (source, detector centre, column step,
            row step; voxel units).
        :param volume_shape: ``(D, H, W)``, each at least 2.
        :param detector_shape: ``(rows, columns)``.
        :raises ValueError: for vectors, shapes, scale or backend the operator cannot take.
        """
        operator = cls.__new__(cls)
        LinearPhysics.__init__(operator)
        operator.magnification = None
        operator._setup(vectors, volume_shape, detector_shape, scale, backend, workspace_bytes)
        return operator

    def _setup(self, vectors, volume_shape, detector_shape, scale, backend, workspace_bytes) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: give 'torch' (default, any device) or 'astra' (ASTRA's CUDA).")
        if len(volume_shape) != 3 or min(int(n) for n in volume_shape) < 2:
            raise ValueError(f"volume_shape={tuple(volume_shape)}: give (D, H, W), each at least 2 voxels.")
        if len(detector_shape) != 2 or min(int(n) for n in detector_shape) < 1:
            raise ValueError(f"detector_shape={tuple(detector_shape)}: give (rows, columns), each at least 1.")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale={scale!r}: give a finite factor > 0 (e.g. 1 / ||A|| for a unit-norm operator).")
        if workspace_bytes is not None and workspace_bytes < 1:
            raise ValueError(f"workspace_bytes={workspace_bytes}: give a positive budget.")
        self.vectors = check_vectors(vectors)
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.rows, self.columns = (int(n) for n in detector_shape)
        self.scale, self.backend = float(scale), backend
        if backend == "astra":
            from distinv.operators.astra import AstraConeBeam

            self._pair = AstraConeBeam(self.vectors, self.volume_shape, (self.rows, self.columns))
        else:
            self._pair = ConeRays(self.vectors, self.volume_shape, (self.rows, self.columns), workspace_bytes)

    @property
    def views(self) -> int:
        """The number of views ``V``."""
        return len(self.vectors)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: N802 - deepinv's name
        """Projections ``(B, C, rows, columns, views)`` of volumes ``(B, C, D, H, W)``."""
        self._check(x, "x", self.volume_shape)
        return MatchedPair.apply(x, self, False) * self.scale

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: N802
        """The exact transpose of :meth:`A`: volumes ``(B, C, D, H, W)``."""
        self._check(y, "y", (self.rows, self.columns, self.views))
        return MatchedPair.apply(y, self, True) * self.scale

    def fdk(self, y: torch.Tensor, workspace_bytes: int | None = None) -> torch.Tensor:
        """The FDK reconstruction ``(B, C, D, H, W)`` of measurements ``y = A x`` (``(B, C, rows, columns,
        views)``, this operator's ``scale`` included): cosine weights, a ramp filter along the detector rows and
        the distance-weighted back-projection (:mod:`distinv.operators.cone_fdk`; a full turn assumed).

        :param workspace_bytes: the most one block of voxels holds (default 32 MiB on a CPU, 512 MiB on a GPU).
        """
        self._check(y, "y", (self.rows, self.columns, self.views))
        planes = y.detach().reshape(-1, self.rows, self.columns, self.views) / self.scale
        volume = fdk(planes, self.vectors, self.volume_shape, workspace_bytes)
        return volume.reshape(*y.shape[:2], *self.volume_shape)

    def A_dagger(self, y: torch.Tensor, fbp: bool = False, **kwargs) -> torch.Tensor:  # noqa: N802
        """With ``fbp=True`` cone beam's filtered back-projection, FDK (:meth:`fdk`); else deepinv's least
        squares."""
        if fbp:
            return self.fdk(y)
        return super().A_dagger(y, **kwargs)

    def _check(self, t: torch.Tensor, name: str, last: tuple[int, int, int]) -> None:
        if not isinstance(t, torch.Tensor) or t.ndim != 5 or tuple(t.shape[2:]) != tuple(last):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} has shape {shape}: expected (B, C, {', '.join(map(str, last))}).")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` to ``(B, C, rows, columns, views)``, unscaled, no graph."""
        planes = x.detach().reshape(-1, *x.shape[2:])
        return self._pair.project(planes).reshape(*x.shape[:2], self.rows, self.columns, self.views)

    def back_project(self, y: torch.Tensor) -> torch.Tensor:
        """The transpose of :meth:`project`: ``(B, C, rows, columns, views)`` to ``(B, C, D, H, W)``."""
        planes = y.detach().reshape(-1, *y.shape[2:])
        return self._pair.back_project(planes).reshape(*y.shape[:2], *self.volume_shape)
