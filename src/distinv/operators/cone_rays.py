"""The cone-beam pair in PyTorch, CPU and CUDA alike, by Joseph's method: for each view, the volume is cut into slices
across the axis its detector's normal (its central ray) runs along most (x, y or z); every detector pixel's ray
crosses each slice once, the slice is read there by bilinear interpolation (``grid_sample``, zero outside), and the
readings are summed times the ray's length between two slices (a line integral in voxel units). The adjoint is the
exact transpose of that sum: the interpolation weights scattered back (``grid_sample``'s own backward, without its
forward).

Nothing is stored but the geometry (the vectors, :mod:`distinv.operators.cone_geometry`): each call makes the ray
crossings of one view with a run of its slices, sized to fit ``workspace_bytes``, and frees them before the next.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the most one block of ray crossings holds by default: cache-sized on a CPU (at 128³ and 180 views, 8 MiB blocks
# take 24 s for A and A^T where 256 MiB ones take 80 s), large on a GPU (few, large kernels)
CPU_WORKSPACE_BYTES = 8 * 2**20
GPU_WORKSPACE_BYTES = 256 * 2**20
# bytes per ray crossing while a block is made: float64 positions, the float32 grid, one reading per plane (below)
BYTES_PER_CROSSING = 48
# for each slicing axis (x, y, z of the volume): the volume's dims, in (P, D, H, W) terms, that become
# (slices, planes, image rows, image columns), and the axes of the image's columns and rows (grid_sample's x, y)
SLICINGS = {0: ((3, 0, 1, 2), (1, 2)), 1: ((2, 0, 1, 3), (0, 2)), 2: ((1, 0, 2, 3), (0, 1))}


class ConeRays:
    """Projections ``(P, rows, columns, views)`` of ``(P, D, H, W)`` volumes (``P`` planes: batch times channels),
    and the transpose.

    :param vectors: ``(V, 12)`` float64 geometry (ASTRA's ``cone_vec``).
    :param volume_shape: ``(D, H, W)``, each at least 2.
    :param detector_shape: ``(rows, columns)``.
    :param workspace_bytes: the most one block of ray crossings may hold; ``None`` (default): 8 MiB on a CPU,
        256 MiB on a GPU.
    """

    def __init__(
        self,
        vectors: torch.Tensor,
        volume_shape: tuple[int, int, int],
        detector_shape: tuple[int, int],
        workspace_bytes: int | None = None,
    ):
        self.vectors = vectors
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.detector_shape = tuple(int(n) for n in detector_shape)
        self.workspace_bytes = workspace_bytes
        depth, height, width = self.volume_shape
        self._sizes = (width, height, depth)  # voxels along x, y, z
        # the axis each view is sliced across: the one its detector's normal runs along most (the central ray's,
        # for a detector facing the source; from the detector's steps alone, so the same for any part of it)
        normal = torch.linalg.cross(vectors[:, 6:9], vectors[:, 9:12])
        self._axis = normal.abs().argmax(dim=1).tolist()

    def project(self, volumes: torch.Tensor) -> torch.Tensor:
        """``(P, D, H, W)`` to ``(P, rows, columns, views)``, no graph."""
        rows, columns = self.detector_shape
        out = volumes.new_zeros((volumes.shape[0], rows, columns, len(self.vectors)))
        sliced = {}
        for view, rows_in, slices_in in self._blocks(volumes.shape[0], volumes.device, by="rows"):
            axis = self._axis[view]
            if axis not in sliced:  # (slices, P, image rows, image columns), once per call and axis
                sliced[axis] = volumes.detach().permute(*SLICINGS[axis][0]).contiguous()
            grid, length = self._crossings(view, rows_in, slices_in, volumes.device, volumes.dtype)
            readings = F.grid_sample(sliced[axis], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out[:, rows_in, :, view] = readings.sum(0) * length  # (P, rows, columns)
        return out

    def back_project(self, projections: torch.Tensor) -> torch.Tensor:
        """The exact transpose of :meth:`project`: ``(P, rows, columns, views)`` to ``(P, D, H, W)``, no graph."""
        planes = projections.shape[0]
        totals: dict[int, torch.Tensor] = {}
        for view, rows_in, slices_in in self._blocks(planes, projections.device, by="slices"):
            axis = self._axis[view]
            if axis not in totals:
                order = SLICINGS[axis][0]
                shape = [(planes, *self.volume_shape)[d] for d in order]
                totals[axis] = projections.new_zeros(shape)
            grid, length = self._crossings(view, rows_in, slices_in, projections.device, projections.dtype)
            weights = projections[..., view].detach() * length  # (P, rows, columns)
            grad = weights[None].expand(grid.shape[0], *weights.shape).contiguous()
            totals[axis][slices_in] += _grid_sample_transpose(grad, totals[axis][slices_in], grid)
        total = projections.new_zeros((planes, *self.volume_shape))
        for axis, part in totals.items():
            order = SLICINGS[axis][0]
            total += part.permute(*[order.index(d) for d in range(4)])
        return total

    def _blocks(self, planes: int, device: torch.device, by: str) -> list[tuple[int, slice, slice]]:
        """``(view, detector rows, slices)`` blocks whose ray crossings fit the workspace: runs of detector rows
        through every slice (``by="rows"``, the projection: each block fills its rows), or every ray through a run
        of slices (``by="slices"``, the transpose: each block scatters into its slices alone, never into the
        whole volume)."""
        rows, columns = self.detector_shape
        workspace = self.workspace_bytes
        if workspace is None:
            workspace = GPU_WORKSPACE_BYTES if device.type == "cuda" else CPU_WORKSPACE_BYTES
        per_crossing = BYTES_PER_CROSSING + 8 * planes
        blocks = []
        for view in range(len(self.vectors)):
            slices = self._sizes[self._axis[view]]
            if by == "rows":
                step = max(1, min(rows, workspace // (columns * slices * per_crossing)))
                blocks += [(view, slice(a, min(rows, a + step)), slice(0, slices)) for a in range(0, rows, step)]
            else:
                step = max(1, min(slices, workspace // (rows * columns * per_crossing)))
                blocks += [(view, slice(0, rows), slice(a, min(slices, a + step))) for a in range(0, slices, step)]
        return blocks

    def _crossings(
        self, view: int, rows_in: slice, slices_in: slice, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the rays of detector rows ``rows_in`` of ``view`` cross the view's slices ``slices_in``:
        ``grid_sample``'s normalised ``(slices, rows, columns, 2)`` grid, and each ray's length between two slices
        ``(rows, columns)`` (voxels)."""
        rows, columns = self.detector_shape
        axis = self._axis[view]
        across = SLICINGS[axis][1]
        vector = self.vectors[view].to(device)
        source, centre, u, v = vector[0:3], vector[3:6], vector[6:9], vector[9:12]
        r = torch.arange(rows_in.start, rows_in.stop, dtype=torch.float64, device=device) - (rows - 1) / 2
        c = torch.arange(columns, dtype=torch.float64, device=device) - (columns - 1) / 2
        direction = centre + c[None, :, None] * u + r[:, None, None] * v - source  # (rows, columns, 3), unnormalised
        slices = self._sizes[axis]
        position = torch.arange(slices_in.start, slices_in.stop, dtype=torch.float64, device=device) - (slices - 1) / 2
        along = direction[..., axis]
        t = (position[:, None, None] - source[axis]) / along  # (slices, rows, columns)
        grid = []
        for other in across:  # the image's column coordinate, then its row coordinate
            coordinate = source[other] + t * direction[..., other]
            grid.append(coordinate * (2 / (self._sizes[other] - 1)))
        length = direction.norm(dim=-1) / along.abs()
        return torch.stack(grid, dim=-1).to(dtype), length.to(dtype)


def _grid_sample_transpose(grad_out: torch.Tensor, like: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The transpose of bilinear ``grid_sample`` (zero padding, corners aligned) applied to ``grad_out``
    ``(slices, P, rows, columns)``: the input gradient of its backward, shaped like ``like``, without running the
    forward (``like``'s values are not read)."""
    volume_grad, _ = torch.ops.aten.grid_sampler_2d_backward(grad_out, like, grid, 0, 0, True, [True, False])
    return volume_grad
