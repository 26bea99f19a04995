"""Cone-beam geometry as per-view vectors, in ASTRA's ``cone_vec`` convention: 12 numbers per view, which is how
measured scans describe their geometry (calibrated, non-circular orbits included).

A view's row of ``vectors (V, 12)`` is ``(sx, sy, sz, dx, dy, dz, ux, uy, uz, vx, vy, vz)``: the source ``s``, the
detector's centre ``d``, the step from one detector column to the next ``u`` and from one detector row to the next
``v`` (all in voxel units). Detector pixel ``(row r, column c)`` of a ``(rows, columns)`` detector is centred at
``d + (c - (columns - 1) / 2) u + (r - (rows - 1) / 2) v``.

Volume voxel ``(k, j, i)`` of a ``(D, H, W)`` volume sits at ``x = i - (W - 1) / 2``, ``y = j - (H - 1) / 2``,
``z = k - (D - 1) / 2`` (unit voxels, the volume's centre at the origin, as ASTRA).
"""

from __future__ import annotations

import math

import torch


def circular_vectors(
    angles: torch.Tensor,
    source_distance: float,
    detector_distance: float,
    detector_shape: tuple[int, int],
    pixel_size: float | tuple[float, float] = 1.0,
) -> torch.Tensor:
    """The vectors of a circular orbit about z, as ASTRA's ``cone`` geometry converts to ``cone_vec``: at angle
    ``a`` the source is at ``(sin a, -cos a, 0) * source_distance`` and the detector's centre at
    ``(-sin a, cos a, 0) * detector_distance``, its columns along ``(cos a, sin a, 0)`` and its rows along z.

    :param angles: ``(V,)`` view angles in degrees.
    :param source_distance: source to the rotation axis, in voxels (> 0).
    :param detector_distance: rotation axis to the detector, in voxels (>= 0).
    :param detector_shape: ``(rows, columns)``; only checked here (the vectors place the centre).
    :param pixel_size: detector pixel pitch in voxels: one number, or ``(row pitch, column pitch)``.
    :return: ``(V, 12)`` float64 vectors.
    :raises ValueError: for distances or pitches that are not finite and positive, or an empty detector.
    """
    angles = torch.as_tensor(angles, dtype=torch.float64)
    if angles.ndim != 1 or angles.numel() == 0:
        raise ValueError(f"angles of shape {tuple(angles.shape)}: give a 1D tensor of at least one angle (deg).")
    if not (math.isfinite(source_distance) and source_distance > 0):
        raise ValueError(f"source_distance={source_distance}: give the source's distance to the axis, > 0 voxels.")
    if not (math.isfinite(detector_distance) and detector_distance >= 0):
        raise ValueError(f"detector_distance={detector_distance}: give the detector's distance, >= 0 voxels.")
    rows, columns = (int(n) for n in detector_shape)
    if rows < 1 or columns < 1:
        raise ValueError(f"detector_shape={tuple(detector_shape)}: give at least one row and one column.")
    row_pitch, column_pitch = (pixel_size, pixel_size) if isinstance(pixel_size, int | float) else pixel_size
    if not all(math.isfinite(p) and p > 0 for p in (row_pitch, column_pitch)):
        raise ValueError(f"pixel_size={pixel_size}: give the detector pitch in voxels, > 0.")
    a = angles * (math.pi / 180)
    sin, cos, zero = a.sin(), a.cos(), torch.zeros_like(a)
    return torch.stack(
        [
            *(sin * source_distance, -cos * source_distance, zero),
            *(-sin * detector_distance, cos * detector_distance, zero),
            *(cos * column_pitch, sin * column_pitch, zero),
            *(zero, zero, zero + row_pitch),
        ],
        dim=1,
    )


def check_vectors(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` as a float64 ``(V, 12)`` tensor; raises ValueError naming what is wrong (shape, non-finite
    numbers, a zero detector step, a source on its detector's plane)."""
    vectors = torch.as_tensor(vectors, dtype=torch.float64)
    if vectors.ndim != 2 or vectors.shape[1] != 12 or vectors.shape[0] == 0:
        raise ValueError(
            f"vectors of shape {tuple(vectors.shape)}: give (views, 12) numbers per view, ASTRA's cone_vec "
            "(source, detector centre, column step, row step)."
        )
    if not torch.isfinite(vectors).all():
        raise ValueError("vectors hold NaN or infinite numbers: give finite geometry for every view.")
    source, centre, u, v = vectors[:, 0:3], vectors[:, 3:6], vectors[:, 6:9], vectors[:, 9:12]
    normal = torch.linalg.cross(u, v)
    if (normal.norm(dim=1) == 0).any():
        raise ValueError("vectors: a view's column and row steps are parallel or zero: give the detector's two steps.")
    if (((source - centre) * normal).sum(dim=1).abs() < 1e-9).any():
        raise ValueError("vectors: a view's source lies in its detector's plane: no ray reaches the detector.")
    return vectors


def detector_coordinates(vectors: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Where the rays from each view's source through ``points`` ``(N, 3)`` (x, y, z) meet its detector:
    ``(V, N, 2)`` fractional ``(row, column)`` pixel indices (0 at the first pixel's centre)."""
    source, centre, u, v = vectors[:, None, 0:3], vectors[:, None, 3:6], vectors[:, None, 6:9], vectors[:, None, 9:12]
    normal = torch.linalg.cross(u, v)
    ray = points[None] - source
    hit = source + ray * ((centre - source) * normal).sum(-1, keepdim=True) / (ray * normal).sum(-1, keepdim=True)
    w = hit - centre
    # (a, b) with w = a u + b v: the Gram system of the detector's two steps
    uu, uv, vv = (u * u).sum(-1), (u * v).sum(-1), (v * v).sum(-1)
    wu, wv = (w * u).sum(-1), (w * v).sum(-1)
    det = uu * vv - uv * uv
    a, b = (vv * wu - uv * wv) / det, (uu * wv - uv * wu) / det
    return torch.stack([b, a], dim=-1)


def rows_reached(
    vectors: torch.Tensor, volume_shape: tuple[int, int, int], rows: int, slices: tuple[int, int]
) -> tuple[int, int]:
    """The detector rows ``(first, stop)`` that any view's rays through slices ``slices = (first, stop)`` of a
    ``(D, H, W)`` volume can reach, over all views: the detector image of the slab's box widened by one voxel
    (bilinear reading reaches a voxel from up to one voxel away), which bounds the image of every point inside it
    (a box is convex and each view's perspective map keeps it so); one row of margin either side, clipped to the
    detector."""
    depth, height, width = volume_shape
    z0, z1 = slices[0] - 1 - (depth - 1) / 2, slices[1] - (depth - 1) / 2
    x, y = (width - 1) / 2 + 1, (height - 1) / 2 + 1
    corners = torch.tensor(
        [[sx * x, sy * y, z] for sx in (-1, 1) for sy in (-1, 1) for z in (z0, z1)], dtype=torch.float64
    )
    row = detector_coordinates(vectors, corners)[..., 0] + (rows - 1) / 2
    return max(0, math.floor(row.min().item()) - 1), min(rows, math.ceil(row.max().item()) + 2)


def restricted(
    vectors: torch.Tensor, volume_shape: tuple[int, int, int], rows: int, slices: tuple[int, int], band: tuple[int, int]
) -> torch.Tensor:
    """The vectors of the same views for slices ``slices`` of the volume alone, seen by detector rows ``band``
    alone: the geometry moved so the slab's centre is the origin (source and detector shifted along z) and the
    detector's centre moved to the band's centre, so that a voxel and a detector pixel keep their place."""
    depth = volume_shape[0]
    shift = (slices[0] + slices[1] - 1) / 2 - (depth - 1) / 2
    out = vectors.clone()
    out[:, 2] -= shift
    out[:, 5] -= shift
    out[:, 3:6] += ((band[0] + band[1] - 1) / 2 - (rows - 1) / 2) * vectors[:, 9:12]
    return out
