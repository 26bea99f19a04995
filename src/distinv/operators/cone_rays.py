"""The cone-beam pair in PyTorch, CPU and CUDA alike: each detector pixel's ray sampled every ``ray_step`` voxels
between where it enters and leaves the volume's box, the volume read at each sample by trilinear interpolation
(``grid_sample``, zero outside), the samples summed times the step (a line integral in voxel units). The adjoint is
the exact transpose of that sum: the interpolation weights scattered back (``grid_sample``'s own backward).

Nothing is stored but the geometry (the vectors, :mod:`distinv.operators.cone_geometry`): each call makes the rays of
a block of views and detector rows, sized to fit ``workspace_bytes``, and frees them before the next block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WORKSPACE_BYTES = 256 * 2**20
# bytes per ray sample while a block is made: the float64 positions and parameters, the grid, one value per plane
BYTES_PER_SAMPLE = 64
OUTSIDE = 3.0  # a normalised coordinate beyond the volume (zero padding): a sample past the ray's exit


class ConeRays:
    """Projections ``(P, rows, columns, views)`` of ``(P, D, H, W)`` volumes (``P`` planes: batch times channels),
    and the transpose.

    :param vectors: ``(V, 12)`` float64 geometry (ASTRA's ``cone_vec``).
    :param volume_shape: ``(D, H, W)``, each at least 2.
    :param detector_shape: ``(rows, columns)``.
    :param ray_step: samples per voxel of ray length is ``1 / ray_step`` (default 0.5: two per voxel).
    :param workspace_bytes: the most one block of rays may hold.
    """

    def __init__(
        self,
        vectors: torch.Tensor,
        volume_shape: tuple[int, int, int],
        detector_shape: tuple[int, int],
        ray_step: float = 0.5,
        workspace_bytes: int = WORKSPACE_BYTES,
    ):
        self.vectors = vectors
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.detector_shape = tuple(int(n) for n in detector_shape)
        self.ray_step, self.workspace_bytes = float(ray_step), int(workspace_bytes)
        depth, height, width = self.volume_shape
        self._half = torch.tensor([(width - 1) / 2 + 1, (height - 1) / 2 + 1, (depth - 1) / 2 + 1], dtype=torch.float64)
        self._to_grid = torch.tensor([2 / (width - 1), 2 / (height - 1), 2 / (depth - 1)], dtype=torch.float64)
        self._samples_per_ray = math.ceil(2 * float(self._half.norm()) / self.ray_step)  # the box's diagonal

    def project(self, volumes: torch.Tensor) -> torch.Tensor:
        """``(P, D, H, W)`` to ``(P, rows, columns, views)``, no graph."""
        rows, columns = self.detector_shape
        planes = volumes.shape[0]
        out = volumes.new_zeros((planes, rows, columns, len(self.vectors)))
        source = volumes.detach()[None]  # (1, P, D, H, W): every plane reads the same rays
        for view, first, last in self._blocks(planes):
            grid = self._grid(view, first, last, volumes.device, volumes.dtype)
            values = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out[:, first:last, :, view] = values[0].sum(-1) * self.ray_step  # (P, rows, columns)
        return out

    def back_project(self, projections: torch.Tensor) -> torch.Tensor:
        """The exact transpose of :meth:`project`: ``(P, rows, columns, views)`` to ``(P, D, H, W)``, no graph."""
        planes = projections.shape[0]
        total = projections.new_zeros((planes, *self.volume_shape))
        zeros = torch.zeros((1, planes, *self.volume_shape), dtype=projections.dtype, device=projections.device)
        for view, first, last in self._blocks(planes):
            grid = self._grid(view, first, last, projections.device, projections.dtype)
            weights = projections[:, first:last, :, view].detach() * self.ray_step  # (P, rows, columns)
            grad_out = weights[None, ..., None].expand(1, *weights.shape, grid.shape[3]).contiguous()
            total += _grid_sample_transpose(grad_out, zeros, grid)[0]
        return total

    def _blocks(self, planes: int) -> list[tuple[int, int, int]]:
        """``(view, first row, last row)`` blocks whose rays fit the workspace."""
        rows, columns = self.detector_shape
        per_sample = BYTES_PER_SAMPLE + 8 * planes
        per_row = columns * self._samples_per_ray * per_sample
        rows_per_block = max(1, min(rows, self.workspace_bytes // per_row))
        return [
            (view, first, min(rows, first + rows_per_block))
            for view in range(len(self.vectors))
            for first in range(0, rows, rows_per_block)
        ]

    def _grid(self, view: int, first: int, last: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The samples of the rays of detector rows ``first:last`` of ``view``, as ``grid_sample``'s normalised
        ``(1, rows, columns, samples, 3)`` grid (x, y, z); samples beyond a ray's exit lie outside the volume."""
        rows, columns = self.detector_shape
        vector = self.vectors[view].to(device)
        source, centre, u, v = vector[0:3], vector[3:6], vector[6:9], vector[9:12]
        r = torch.arange(first, last, dtype=torch.float64, device=device) - (rows - 1) / 2
        c = torch.arange(columns, dtype=torch.float64, device=device) - (columns - 1) / 2
        pixels = centre + c[None, :, None] * u + r[:, None, None] * v  # (rows, columns, 3)
        direction = pixels - source
        direction = direction / direction.norm(dim=-1, keepdim=True)
        # where each ray enters and leaves the box (slab method; a ray parallel to a face never crosses it)
        half = self._half.to(device)
        safe = torch.where(direction.abs() < 1e-12, torch.full_like(direction, 1e-12), direction)
        near, far = (-half - source) / safe, (half - source) / safe
        enter = torch.minimum(near, far).amax(-1).clamp_min(0)
        leave = torch.maximum(near, far).amin(-1)
        length = (leave - enter).clamp_min(0)
        count = max(1, math.ceil(float(length.max()) / self.ray_step))
        t = enter[..., None] + (torch.arange(count, dtype=torch.float64, device=device) + 0.5) * self.ray_step
        points = source + t[..., None] * direction[..., None, :]  # (rows, columns, samples, 3)
        grid = points * self._to_grid.to(device)
        grid = torch.where((t < leave[..., None])[..., None], grid, torch.full_like(grid, OUTSIDE))
        return grid.to(dtype)[None]


def _grid_sample_transpose(grad_out: torch.Tensor, zeros: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The transpose of trilinear ``grid_sample`` (zero padding, corners aligned) applied to ``grad_out``
    ``(1, P, rows, columns, samples)``: the volume gradient of its backward, without running the forward."""
    volume_grad, _ = torch.ops.aten.grid_sampler_3d_backward(grad_out, zeros, grid, 0, 0, True, [True, False])
    return volume_grad
