"""3D cone-beam CT from a measured scan on disk (:mod:`distinv.bench.scans`: a folder of projection TIFFs in the
42-walnuts layout, or one ``.npz`` / ``.pt`` / HDF5 file with ``sinogram``, ``vectors`` and optionally
``reference``).

The views are dealt in K interleaved blocks, each a :class:`~distinv.operators.cone_beam.ConeBeam` of the scan's own
per-view vectors, scaled to about unit norm (:func:`~distinv.bench.problems.tomography_3d.estimated_sqnorm`). Nothing is
synthesised and no rank reads the whole scan: with the operator split, a rank reads its blocks' views; with slabs
(``distinv-sharded``), each rank reads the detector rows it owns of every view. The start is FDK. The reference
reconstruction, when the file has one, is the volume scored against (PSNR and SSIM with its own data range); without
one (the TIFF layout has none) runs are scored by the data residual ``||A x - y|| / ||y||``. The volume's shape is the
reference's, else ``size`` (its width and height) and ``depth``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from distinv.bench.problems.base import Problem, check_number
from distinv.bench.problems.tomography_2d import fbp_start
from distinv.bench.problems.tomography_3d import estimated_sqnorm
from distinv.bench.scans import Scan, open_scan, read_projections, read_reference
from distinv.comm.context import DistributedContext
from distinv.operators.cone_beam import ConeBeam
from distinv.placements.row_bands import RowBands
from distinv.sharded.cone_slabs import ConeSlabs

MIN_SIZE = 8


def _scan(path: str | None, binning: int, view_step: int, row_first: int | None, row_stop: int | None, voxel_size):
    if not path:
        raise ValueError("path: give the scan, a folder of projection TIFFs or an .npz / .pt / .h5 file.")
    rows = None if row_first is None and row_stop is None else (row_first or 0, row_stop)
    if rows is not None and rows[1] is None:
        raise ValueError("row_stop: give the last row (exclusive) with row_first, e.g. row_first=100 row_stop=400.")
    return open_scan(path, binning=binning, view_step=view_step, rows=rows, voxel_size=voxel_size)


def _volume_shape(scan: Scan, size: int | None, depth: int | None) -> tuple[int, int, int]:
    reference = read_reference(scan) if scan.has_reference else None
    if reference is not None:
        shape = tuple(int(n) for n in reference.shape[2:])
        if size is not None and size != shape[2] or depth is not None and depth != shape[0]:
            raise ValueError(
                f"size={size}, depth={depth}: the scan's reference volume is {shape} (D, H, W); leave size and depth "
                "out, or give the reference's."
            )
        return shape
    if size is None:
        raise ValueError("size: give the volume's width (and depth, default the width): the scan has no reference.")
    return (depth or size, size, size)


@dataclass
class ScanProblem(Problem):
    """A :class:`Problem` whose measurements are read from the scan rather than simulated."""

    scan: Scan | None = None

    def measure(self, physics) -> Any:
        """This rank's operators' measurements: their blocks' views, read from the file (all rows)."""
        from distinv.placements.measurements import LocalMeasurements

        def read() -> list[torch.Tensor]:
            return [self._read(i, op.scale, None).to(physics.ctx.device) for i, op in self._local(physics)]

        out = physics.ctx.run_agreed("reading the scan", read)  # a bad file on one rank fails every rank
        return LocalMeasurements(out, physics.local_indexes, self.num_operators)

    def measure_sharded(self, physics: ConeSlabs, x: RowBands) -> list[RowBands]:
        """Every block's measurement in the detector rows this rank owns, read from the file."""
        plan = physics.plan(x.bounds)
        rows = (plan.owned[x.ctx.rank], plan.owned[x.ctx.rank + 1])

        def read() -> list[torch.Tensor]:
            return [self._read(i, op.scale, rows).to(x.device) for i, op in enumerate(physics.operators)]

        parts = x.ctx.run_agreed("reading the scan", read)
        shapes = [(1, 1, op.rows, op.columns, op.views) for op in physics.operators]
        return [RowBands(x.ctx, shape, plan.owned, local) for shape, local in zip(shapes, parts, strict=True)]

    def write_results(self, folder, x, view) -> None:
        """The volume as float32 TIFF slices in ``folder``, each rank its slab (:func:`~distinv.bench.volume_files.
        write_slices`); a full disk on one rank fails every rank."""
        from distinv.bench.volume_files import write_slices

        view.ctx.run_agreed("writing the reconstruction", lambda: write_slices(folder, x, view.ctx))

    def _local(self, physics) -> list[tuple[int, ConeBeam]]:
        return list(zip(physics.local_indexes, physics.local_physics, strict=True))

    def _read(self, index: int, scale: float, rows: tuple[int, int] | None) -> torch.Tensor:
        """Block ``index``'s views ``(1, 1, rows, columns, views)``, times the operator's scale (``A`` is scaled)."""
        views = block_views(index, len(self.scan.views), self.num_operators)
        projections = read_projections(self.scan, views, rows)  # (views, rows, columns)
        return (projections.permute(1, 2, 0) * scale)[None, None].contiguous()


def block_views(index: int, views: int, num_operators: int) -> list[int]:
    """Operator ``index``'s views: every K-th of the selection's ``views``."""
    return list(range(index, views, num_operators))


def _operator(index: int, device: torch.device, shared: dict) -> ConeBeam:
    views = block_views(index, len(shared["vectors"]), shared["k"])
    scale = 1 / math.sqrt(shared["sqnorm_per_view"] * len(views))
    op = ConeBeam.from_vectors(shared["vectors"][views], shared["volume_shape"], shared["detector_shape"], scale)
    return op.to(device)


def _slabs(problem: Problem, ctx: DistributedContext) -> ConeSlabs:
    return ConeSlabs(ctx, [problem.factory(i, ctx.device, problem.shared) for i in range(problem.num_operators)])


def _params(size, path, binning, view_step, row_first, row_stop, voxel_size, depth, num_operators, noise_sigma):
    check_number("num_operators", num_operators, 1, whole=True)
    check_number("noise_sigma", noise_sigma, 0)
    check_number("voxel_size", voxel_size, 0, above=True)
    for name, value in (("size", size), ("depth", depth)):
        if value is not None:
            check_number(name, value, MIN_SIZE, whole=True)
    scan = _scan(path, binning, view_step, row_first, row_stop, voxel_size)
    if num_operators > len(scan.views):
        raise ValueError(
            f"num_operators={num_operators} is larger than the scan's {len(scan.views)} selected views: every "
            "operator needs at least one view."
        )
    return scan


def signal_shape(size: int | None = None, **params: Any) -> tuple[int, ...]:
    """``(1, 1, D, H, W)``: the reference's shape, else ``(depth or size, size, size)`` (reads the scan's header
    and geometry only)."""
    keys = ("path", "binning", "view_step", "row_first", "row_stop", "voxel_size")
    defaults = {"path": None, "binning": 1, "view_step": 1, "row_first": None, "row_stop": None, "voxel_size": 1.0}
    scan = _scan(*(params.get(k, defaults[k]) for k in keys))
    return (1, 1, *_volume_shape(scan, size, params.get("depth")))


def sharded_halo(size: int | None = None, **params: Any) -> tuple[int, int]:
    """None: the slabs exchange detector rows instead (:mod:`distinv.sharded.cone_slabs`)."""
    return 0, 0


def build(
    size: int | None = None,
    path: str | None = None,
    num_operators: int = 4,
    binning: int = 1,
    view_step: int = 1,
    row_first: int | None = None,
    row_stop: int | None = None,
    voxel_size: float = 1.0,
    depth: int | None = None,
    noise_sigma: float = 0.01,
    seed: int = 0,
    check_only: bool = False,
) -> Problem | None:
    """The scan at ``path`` as a problem (see the module's docstring and :func:`distinv.bench.scans.open_scan` for
    ``binning``, ``view_step``, the row range ``row_first``/``row_stop`` and ``voxel_size``); ``noise_sigma`` is the
    noise level coupled (DPIR) steps assume, not added to anything; ``seed`` is accepted for the table's sake.

    :raises ValueError: naming the parameter (a missing scan among them).
    """
    scan = _params(size, path, binning, view_step, row_first, row_stop, voxel_size, depth, num_operators, noise_sigma)
    if check_only:
        return None
    volume_shape = _volume_shape(scan, size, depth)
    reference = read_reference(scan)
    sqnorm = estimated_sqnorm(scan.vectors, volume_shape, scan.detector_shape) / len(scan.views)
    counts = [float(len(block_views(i, len(scan.views), num_operators))) for i in range(num_operators)]
    shared = {
        "k": num_operators,
        "num_angles": len(scan.views),
        "vectors": scan.vectors,
        "volume_shape": volume_shape,
        "detector_shape": scan.detector_shape,
        "sqnorm_per_view": sqnorm,
        "geometry": "cone",
    }
    data_range = float(reference.max() - reference.min()) or 1.0 if reference is not None else 1.0
    return ScanProblem(
        name="ct_scan",
        ground_truth=reference if reference is not None else torch.zeros((1, 1, *volume_shape)),
        num_operators=num_operators,
        factory=_operator,
        shared=shared,
        noise_sigma=noise_sigma,
        seed=seed,
        init_name="FDK",
        init=fbp_start,
        operator_costs=counts,
        data_range=data_range,
        info={"views": len(scan.views), "detector": list(scan.detector_shape), "layout": scan.layout},
        sharded=_slabs,
        has_reference=reference is not None,
        scan=scan,
    )
