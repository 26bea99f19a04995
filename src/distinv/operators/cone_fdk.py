"""Feldkamp-Davis-Kress (FDK) reconstruction for cone-beam projections on a flat detector, from the per-view
vectors of :mod:`distinv.operators.cone_geometry` (ASTRA's ``cone_vec``; voxel coordinates as stated there).

Kak and Slaney's flat-detector FDK (chapter 3.6), for an orbit about z:

1. **cosine weighting**: each detector pixel's value times ``D / |p - s|``, the cosine of its ray's angle to the
   detector's normal (``D``: source to detector plane);
2. **ramp filter along each detector row** (across the columns), at the pitch of a virtual detector through the
   rotation axis (``|u| R / D``, ``R``: source to axis along the normal, level with the source), Kak and
   Slaney's discrete band-limited ramp (:func:`~distinv.operators.parallel_beam.ramp_filter`);
3. **weighted back-projection**, voxel-driven: every voxel reads its view's filtered projection where the ray from
   the source through the voxel meets the detector (bilinear; zero off the detector), weighted by ``(R / L)^2``
   (``L``: source to voxel along the normal) and by half the view's share of the orbit's angle.

The views' shares of the angle come from their sources' azimuths about z (half the gaps to the two neighbouring
views), so uneven or interleaved subsets of a turn are weighted right. FDK assumes a full turn: a short scan
needs Parker's weights, which are not applied. It is exact in the mid-plane and approximate away from it (the
cone's missing data); its noise and streaks are what iterative reconstructions improve on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distinv.operators.parallel_beam import ramp_filter

CPU_WORKSPACE_BYTES = 32 * 2**20
GPU_WORKSPACE_BYTES = 512 * 2**20
BYTES_PER_VOXEL = 40  # the block's grid (two float32 coordinates), the distances and weights being made, a reading


def view_angle_weights(vectors: torch.Tensor) -> torch.Tensor:
    """``(V,)`` each view's share of the orbit in radians: half the azimuthal gaps (about z) to the previous and
    the next view's source, cyclically; for ``V`` evenly spaced views of a turn, ``2 pi / V`` each."""
    azimuth = torch.atan2(vectors[:, 1], vectors[:, 0]) % (2 * math.pi)
    order = torch.argsort(azimuth)
    sorted_azimuth = azimuth[order]
    gaps = torch.diff(sorted_azimuth, append=sorted_azimuth[:1] + 2 * math.pi)  # from each view to the next
    shares = torch.empty_like(azimuth)
    shares[order] = (gaps + gaps.roll(1)) / 2
    return shares


def fdk(
    projections: torch.Tensor,
    vectors: torch.Tensor,
    volume_shape: tuple[int, int, int],
    workspace_bytes: int | None = None,
) -> torch.Tensor:
    """The FDK reconstruction ``(P, D, H, W)`` of projections ``(P, rows, columns, views)`` (line integrals in
    voxel units; ``P`` planes: batch times channels), in the volume's density per voxel.

    :param vectors: ``(V, 12)`` float64 geometry, ASTRA's ``cone_vec``.
    :param volume_shape: ``(D, H, W)``.
    :param workspace_bytes: the most one block of voxels may hold while it reads a view (default 32 MiB on a CPU,
        512 MiB on a GPU).
    :raises ValueError: for a detector of fewer than 2 rows or columns (no interpolation between pixels).
    """
    planes, rows, columns, views = projections.shape
    if rows < 2 or columns < 2:
        raise ValueError(f"detector of {rows} x {columns} pixels: FDK needs at least 2 rows and 2 columns.")
    if workspace_bytes is None:
        workspace_bytes = GPU_WORKSPACE_BYTES if projections.device.type == "cuda" else CPU_WORKSPACE_BYTES
    depth, height, width = (int(n) for n in volume_shape)
    device, dtype = projections.device, projections.dtype
    shares = view_angle_weights(vectors)
    axes = [torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2 for n in (width, height, depth)]
    step = max(1, min(depth, workspace_bytes // max(1, height * width * (BYTES_PER_VOXEL + 4 * planes))))
    volume = projections.new_zeros((planes, depth, height, width))
    for view in range(views):
        vector = vectors[view].to(device)
        source, centre, u, v = vector[0:3], vector[3:6], vector[6:9], vector[9:12]
        normal = torch.linalg.cross(u, v)
        normal = normal / normal.norm()
        if (normal * (centre - source)).sum() < 0:
            normal = -normal
        to_detector = (normal * (centre - source)).sum()  # D
        # R: the depth along the normal of the axis point level with the source (moving the geometry along z,
        # as a slab's does, leaves it alone)
        to_axis = -(normal[:2] * source[:2]).sum()
        filtered = _filtered_view(projections[..., view], source, centre, u, v, to_detector, to_axis)
        # detector coordinates (a along u, b along v) of the ray from the source through x: a point of the
        # detector's plane is centre + a u + b v; with G the Gram matrix of (u, v), (a, b) = G^-1 (u.w, v.w),
        # w = the hit point minus the centre = (source - centre) + (x - source) D / L
        gram_inverse = torch.linalg.inv(torch.stack([torch.stack([u @ u, u @ v]), torch.stack([v @ u, v @ v])]))
        ab_rows = gram_inverse @ torch.stack([u, v])  # (2, 3): (a, b) = ab_rows @ w
        offset = ab_rows @ (source - centre)
        weight = shares[view].item() / 2
        for first in range(0, depth, step):
            z = axes[2][first : first + step]
            # L and the numerators of (a, b) are affine in x, y, z: summed from their three axes' terms
            depth_of = _affine(normal, source, axes[0], axes[1], z)
            a_num = _affine(ab_rows[0], source, axes[0], axes[1], z)
            b_num = _affine(ab_rows[1], source, axes[0], axes[1], z)
            scale = to_detector / depth_of
            grid = torch.stack(
                [
                    (offset[0] + a_num * scale) * (2 / (columns - 1)),
                    (offset[1] + b_num * scale) * (2 / (rows - 1)),
                ],
                dim=-1,
            ).to(dtype)  # (slices, H, W, 2)
            slices = grid.shape[0]
            reading = F.grid_sample(
                filtered[None],
                grid.reshape(1, slices * height, width, 2),
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            )[0].reshape(planes, slices, height, width)
            distance_weight = (to_axis / depth_of) ** 2 * weight
            volume[:, first : first + slices] += reading * distance_weight.to(dtype)
    return volume


def _filtered_view(
    projection: torch.Tensor,
    source: torch.Tensor,
    centre: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    to_detector: torch.Tensor,
    to_axis: torch.Tensor,
) -> torch.Tensor:
    """One view ``(P, rows, columns)`` cosine-weighted and ramp-filtered along its rows, at the virtual detector's
    pitch through the axis; scaled so that the back-projection needs only the distance and angle weights."""
    _, rows, columns = projection.shape
    device = projection.device
    r = torch.arange(rows, dtype=torch.float64, device=device) - (rows - 1) / 2
    c = torch.arange(columns, dtype=torch.float64, device=device) - (columns - 1) / 2
    pixel = centre + c[None, :, None] * u + r[:, None, None] * v  # (rows, columns, 3)
    cosine = (to_detector / (pixel - source).norm(dim=-1)).to(projection.dtype)
    virtual_pitch = (u.norm() * to_axis / to_detector).item()
    # ramp_filter is twice Kak and Slaney's unit-pitch convolution; the filter's pitch divides it once more
    return ramp_filter(projection * cosine, dim=-1) / (2 * virtual_pitch)


def _affine(row: torch.Tensor, source: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``row . (p - source)`` for every voxel ``p = (x, y, z)`` of the block: ``(len(z), len(y), len(x))``."""
    return (row[2] * z - row @ source)[:, None, None] + (row[1] * y)[None, :, None] + (row[0] * x)[None, None, :]
