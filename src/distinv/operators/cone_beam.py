"""Circular cone-beam projections of volumes, on ASTRA's CUDA projectors (laboratory micro-CT).

A point source and a flat detector turn about the volume's z axis, the source ``source_distance`` voxels from the
axis and the detector ``detector_distance`` beyond it, so that the volume is magnified ``M = (source_distance +
detector_distance) / source_distance`` on the detector; detector pixels are ``M`` voxels wide (one voxel at the
axis). ASTRA computes both directions on the GPU (its forward and back-projection are each other's transposes);
data cross to it as float32 arrays, one volume at a time. Without ASTRA built with CUDA and a GPU it can see, the
operator cannot be built (a clear error says which is missing).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from deepinv.physics import LinearPhysics

from distinv.operators.astra import import_astra, use_gpu_of
from distinv.operators.parallel_beam import MatchedPair, padded_width

# source and detector about as far from the sample as each other: a magnification of 2, as in laboratory micro-CT
SOURCE_DISTANCE_PER_WIDTH = 4.0
DETECTOR_DISTANCE_PER_WIDTH = 4.0


class ConeBeam(LinearPhysics):
    """Cone-beam projections of ``(B, C, D, W, W)`` volumes to ``(B, C, rows, columns, angles)``.

    :param angles: ``(A,)`` angles in degrees over the turn (a full turn is usual for cone beam).
    :param depth: ``D``, the volume's slices (along the rotation axis z).
    :param width: ``W``, the slices' side.
    :param source_distance: source to rotation axis, in voxels; default ``4 W``.
    :param detector_distance: rotation axis to detector, in voxels; default ``4 W``.
    :param scale: a factor on ``A`` (and so on ``A^T``), e.g. ``1 / ||A||``.
    :raises ImportError: astra-toolbox is not installed; ``RuntimeError``: ASTRA has no CUDA or sees no GPU;
        ``ValueError``: bad sizes or distances.
    """

    def __init__(
        self,
        angles: torch.Tensor,
        depth: int,
        width: int,
        source_distance: float | None = None,
        detector_distance: float | None = None,
        scale: float = 1.0,
    ):
        super().__init__()
        angles = torch.as_tensor(angles, dtype=torch.float64)
        if angles.ndim != 1 or angles.numel() == 0:
            raise ValueError(f"angles of shape {tuple(angles.shape)}: give a 1D tensor of at least one angle (deg).")
        if depth < 1 or width < 2:
            raise ValueError(f"depth={depth}, width={width}: give a volume of at least 1 x 2 x 2 voxels.")
        source = SOURCE_DISTANCE_PER_WIDTH * width if source_distance is None else float(source_distance)
        detector = DETECTOR_DISTANCE_PER_WIDTH * width if detector_distance is None else float(detector_distance)
        if source <= width / math.sqrt(2) or detector < 0:
            raise ValueError(
                f"source_distance={source}, detector_distance={detector}: the source must lie outside the volume "
                f"(more than {width / math.sqrt(2):.1f} voxels from the axis) and the detector at or beyond the axis."
            )
        self.astra = import_astra("cuda")
        self.angles, self.depth, self.width, self.scale = angles, int(depth), int(width), float(scale)
        self.magnification = (source + detector) / source
        nearest = source - width / math.sqrt(2)  # the volume's corner closest to the source magnifies the most
        self.rows = math.ceil(depth * (source + detector) / nearest / self.magnification) + 2
        self.columns = math.ceil(padded_width(width) * source / nearest)
        self.volume_geometry = self.astra.create_vol_geom(width, width, depth)
        self.projection_geometry = self.astra.create_proj_geom(
            "cone",
            self.magnification,
            self.magnification,
            self.rows,
            self.columns,
            np.deg2rad(angles.numpy()),
            source,
            detector,
        )

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: N802 - deepinv's name
        """Projections ``(B, C, rows, columns, angles)`` of volumes ``(B, C, D, W, W)``."""
        self._check(x, "x", (self.depth, self.width, self.width))
        return MatchedPair.apply(x, self, False) * self.scale

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: N802
        """The transpose of :meth:`A` (ASTRA's back-projection): volumes ``(B, C, D, W, W)``."""
        self._check(y, "y", (self.rows, self.columns, len(self.angles)))
        return MatchedPair.apply(y, self, True) * self.scale

    def _check(self, t: torch.Tensor, name: str, last: tuple[int, int, int]) -> None:
        if t.ndim != 5 or tuple(t.shape[2:]) != last:
            raise ValueError(f"{name} has shape {tuple(t.shape)}: expected (B, C, {', '.join(map(str, last))}).")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, W, W)`` to ``(B, C, rows, columns, angles)``, unscaled, no graph."""
        out = []
        use_gpu_of(self.astra, x.device if x.is_cuda else torch.device("cuda", torch.cuda.current_device()))
        for volume in x.detach().reshape(-1, *x.shape[2:]).to("cpu", torch.float32).numpy():
            data, projections = self.astra.create_sino3d_gpu(
                np.ascontiguousarray(volume), self.projection_geometry, self.volume_geometry
            )
            self.astra.data3d.delete(data)
            out.append(torch.from_numpy(np.ascontiguousarray(projections.transpose(0, 2, 1))))  # rows, columns, angles
        return torch.stack(out).reshape(*x.shape[:2], *out[0].shape).to(device=x.device, dtype=x.dtype)

    def back_project(self, y: torch.Tensor) -> torch.Tensor:
        """The transpose of :meth:`project`: ``(B, C, rows, columns, angles)`` to ``(B, C, D, W, W)``."""
        out = []
        use_gpu_of(self.astra, y.device if y.is_cuda else torch.device("cuda", torch.cuda.current_device()))
        for projections in y.detach().reshape(-1, *y.shape[2:]).to("cpu", torch.float32).numpy():
            data, volume = self.astra.create_backprojection3d_gpu(
                np.ascontiguousarray(projections.transpose(0, 2, 1)), self.projection_geometry, self.volume_geometry
            )
            self.astra.data3d.delete(data)
            out.append(torch.from_numpy(volume))
        return torch.stack(out).reshape(*y.shape[:2], *out[0].shape).to(device=y.device, dtype=y.dtype)
