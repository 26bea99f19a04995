"""Small synthetic cone-beam scans written in the two layouts distinv reads (no downloads): a folder of projection
TIFFs with dark and flat fields and a geometry file (the 42-walnuts layout), and one array file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distinv import ConeBeam
from distinv.operators.cone_geometry import circular_vectors

DARK, FLAT = 40.0, 4000.0  # counts
VOXEL_MM = 0.1  # the geometry files' unit (mm) per voxel


def phantom(size: int) -> torch.Tensor:
    """Two smooth blobs and a ball, ``(1, 1, size, size, size)`` in [0, 1]."""
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = size / 2
    blob = torch.exp(-((x - 0.2 * r) ** 2 + (y + 0.1 * r) ** 2 + (z - 0.1 * r) ** 2) / (2 * (0.25 * r) ** 2))
    ball = ((x + 0.3 * r) ** 2 + (y - 0.3 * r) ** 2 + (1.5 * z) ** 2 < (0.3 * r) ** 2).double()
    return (0.7 * blob + 0.3 * ball).float()[None, None]


def scan_geometry(size: int, views: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A circular orbit (source and detector each 3 widths from the axis, pixel pitch 2 voxels): ``(vectors in
    voxel units, (rows, columns))``."""
    detector = (size + 8, size + 12)
    return circular_vectors(torch.arange(views) * (360.0 / views), 3.0 * size, 3.0 * size, detector, 2.0), detector


def line_integrals(size: int, views: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The phantom's projections ``(views, rows, columns)``, with the vectors and the detector's shape."""
    vectors, detector = scan_geometry(size, views)
    op = ConeBeam.from_vectors(vectors, (size, size, size), detector)
    return op.A(phantom(size))[0, 0].permute(2, 0, 1).contiguous(), vectors, detector


def write_tiff_scan(folder: Path, size: int = 24, views: int = 36) -> Path:
    """``scan_NNNNNN.tif`` raw counts ``dark + (flat - dark) exp(-p)``, ``di000000.tif``, ``io000000.tif`` and
    ``io000001.tif``, and ``scan_geom.geom`` (vectors in mm)."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    p, vectors, detector = line_integrals(size, views)
    for k in range(views):
        raw = DARK + (FLAT - DARK) * np.exp(-p[k].double().numpy())
        tifffile.imwrite(folder / f"scan_{k:06d}.tif", raw.astype(np.float32))
    tifffile.imwrite(folder / "di000000.tif", np.full(detector, DARK, dtype=np.float32))
    for name in ("io000000.tif", "io000001.tif"):
        tifffile.imwrite(folder / name, np.full(detector, FLAT, dtype=np.float32))
    np.savetxt(folder / "scan_geom.geom", (vectors * VOXEL_MM).numpy())
    return folder


def write_array_scan(path: Path, size: int = 24, views: int = 36, reference: bool = True) -> Path:
    """``sinogram``, ``vectors`` (voxel units) and, with ``reference``, the phantom, as ``.npz`` (numpy.savez),
    ``.pt`` or HDF5 by ``path``'s suffix."""
    p, vectors, _ = line_integrals(size, views)
    arrays = {"sinogram": p.numpy(), "vectors": vectors.numpy()}
    if reference:
        arrays["reference"] = phantom(size)[0, 0].numpy()
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".pt":
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path)
    else:
        import h5py

        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v)
    return path
