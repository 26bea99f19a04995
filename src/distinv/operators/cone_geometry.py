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
