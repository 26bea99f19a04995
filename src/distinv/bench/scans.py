"""Measured cone-beam scans on disk, read in parts: each rank reads only the views and detector rows it needs.

Two layouts:

- **a folder of projection TIFFs** (the 42-walnuts layout of a laboratory micro-CT scan): ``scan_NNNNNN.tif``, one
  raw intensity image ``(rows, columns)`` per view in file-number order; dark-field ``di*.tif`` and flat-field
  ``io*.tif`` images (each kind averaged); and a geometry file ``*.geom`` (or ``*.txt``) of 12 numbers per view,
  ASTRA's ``cone_vec`` (source, detector centre, column step, row step) in the scan's length unit. Pixel ``(r, c)``
  of view ``k``'s file is detector pixel ``(r, c)`` of the geometry file's row ``k``. The line integrals are
  ``-log((raw - dark) / (flat - dark))``, computed after binning raw, dark and flat alike (intensities below one
  count are held at one count, so a dead pixel does not give an infinity). Uncompressed TIFFs are memory-mapped,
  so a rank reading a band of rows reads those rows of each file only; compressed ones are decoded whole, one view
  at a time.
- **one array file**: ``.npz`` (written by ``numpy.savez``, uncompressed: its members are memory-mapped),
  ``.pt`` (a dict of tensors, loaded memory-mapped) or HDF5 (``.h5``, ``.hdf5``: datasets sliced), holding
  ``sinogram (views, rows, columns)`` (line integrals), ``vectors (views, 12)`` and optionally ``reference (D, H,
  W)``, a reference reconstruction to score against.

Selections apply in this order: ``binning`` (``b x b`` detector pixels averaged, the remainder rows and columns
dropped), ``view_step`` (every n-th view), ``rows`` (a range of the binned detector's rows). The vectors follow
every selection and are divided by ``voxel_size`` (the scan's unit per voxel), so they are in voxel units.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ARRAY_SUFFIXES = (".npz", ".pt", ".h5", ".hdf5")
SCAN_FILE = re.compile(r"scan_(\d+)\.tiff?$")
MIN_COUNT = 1.0  # intensities are held at one count at least before the logarithm


@dataclass(frozen=True)
class Scan:
    """A scan's description, read once (no projections): its layout, the selected views (indices into the file),
    the detector after binning and the row range, and the selected views' vectors in voxel units.

    ``detector_shape`` is ``(rows, columns)`` of the selection; :func:`read_projections` reads parts of it.
    """

    path: Path
    layout: str  # "tiff" or "array"
    views: tuple[int, ...]
    binning: int
    rows: tuple[int, int]  # of the binned detector
    columns: int  # of the binned detector
    vectors: torch.Tensor  # (V, 12) float64, voxel units
    has_reference: bool

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.columns


def open_scan(
    path: str | Path,
    *,
    binning: int = 1,
    view_step: int = 1,
    rows: tuple[int, int] | None = None,
    voxel_size: float = 1.0,
) -> Scan:
    """Describe the scan at ``path`` (a folder of TIFFs or an array file) with a selection.

    :param binning: detector pixels averaged per binned pixel along rows and columns (>= 1).
    :param view_step: keep every ``view_step``-th view (>= 1).
    :param rows: ``(first, stop)`` rows of the binned detector to keep; default all.
    :param voxel_size: the scan's length unit per voxel of the reconstruction (e.g. mm per voxel), > 0.
    :raises ValueError: naming the argument, for a path that does not exist, a folder without scan TIFFs, flat
        fields or a geometry file, a selection the scan cannot give, a file of another kind, missing or misshapen
        arrays.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path={str(path)!r}: no such file or folder; give a folder of TIFFs or a scan file.")
    if not (isinstance(binning, int) and binning >= 1):
        raise ValueError(f"binning={binning!r}: give a whole number >= 1 of detector pixels per binned pixel.")
    if not (isinstance(view_step, int) and view_step >= 1):
        raise ValueError(f"view_step={view_step!r}: give a whole number >= 1 (keep every n-th view).")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"voxel_size={voxel_size!r}: give the scan's length unit per voxel, > 0.")
    if path.is_dir():
        files, _, _, geometry = _tiff_layout(path)
        vectors = torch.as_tensor(np.loadtxt(geometry, ndmin=2), dtype=torch.float64)
        height, width = _tiff_shape(files[0])
        count, layout, has_reference = len(files), "tiff", False
        if vectors.shape != (count, 12):
            raise ValueError(
                f"{geometry.name}: {tuple(vectors.shape)} numbers for {count} projection files: give 12 numbers per "
                "view (ASTRA's cone_vec), one line per scan_NNNNNN.tif."
            )
    elif path.suffix in ARRAY_SUFFIXES:
        with _ArrayFile(path) as arrays:
            sinogram = arrays.get("sinogram")
            vectors = arrays.get("vectors")
            if sinogram is None or vectors is None or len(sinogram.shape) != 3:
                raise ValueError(
                    f"{path.name}: give arrays 'sinogram' (views, rows, columns) and 'vectors' (views, 12), and "
                    "optionally 'reference' (D, H, W)."
                )
            count, height, width = (int(n) for n in sinogram.shape)
            vectors = torch.tensor(np.array(vectors[:]), dtype=torch.float64)
            has_reference, layout = arrays.get("reference") is not None, "array"
        if tuple(vectors.shape) != (count, 12):
            raise ValueError(f"{path.name}: vectors of shape {tuple(vectors.shape)}: give (views={count}, 12).")
    else:
        raise ValueError(
            f"path={str(path)!r}: give a folder of projection TIFFs or an array file ({', '.join(ARRAY_SUFFIXES)})."
        )
    binned_rows, binned_columns = height // binning, width // binning
    if min(binned_rows, binned_columns) < 2:
        raise ValueError(
            f"binning={binning}: a {height} x {width} detector binned leaves fewer than 2 rows or columns."
        )
    first, stop = (0, binned_rows) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= first < stop <= binned_rows or stop - first < 2:
        raise ValueError(
            f"rows={rows!r}: give (first, stop) with 0 <= first, stop - first >= 2, stop <= {binned_rows} (the "
            "binned detector's rows)."
        )
    views = tuple(range(0, count, view_step))
    vectors = _selected_vectors(vectors[list(views)], binning, (height, width), (first, stop), voxel_size)
    return Scan(path, layout, views, binning, (first, stop), binned_columns, vectors, has_reference)


def read_projections(scan: Scan, views: Sequence[int], rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Line integrals ``(len(views), rows, columns)`` (float32) of the selection's views ``views`` (indices into
    ``scan.views``) and rows ``rows`` (of the selection, default all): only those views and (for memory-mapped
    files) rows are read."""
    first, stop = (0, scan.detector_shape[0]) if rows is None else rows
    b = scan.binning
    raw_rows = slice((scan.rows[0] + first) * b, (scan.rows[0] + stop) * b)
    raw_columns = slice(0, scan.columns * b)
    if scan.layout == "tiff":
        files, darks, flats, _ = _tiff_layout(scan.path)
        dark = _bin(np.mean([_read_tiff(f, raw_rows, raw_columns) for f in darks], axis=0), b) if darks else 0.0
        flat = _bin(np.mean([_read_tiff(f, raw_rows, raw_columns) for f in flats], axis=0), b)
        out = np.empty((len(views), stop - first, scan.columns), dtype=np.float32)
        for i, view in enumerate(views):
            raw = _bin(_read_tiff(files[scan.views[view]], raw_rows, raw_columns), b)
            out[i] = -np.log(np.maximum(raw - dark, MIN_COUNT) / np.maximum(flat - dark, MIN_COUNT))
        return torch.from_numpy(out)
    with _ArrayFile(scan.path) as arrays:
        sinogram = arrays.get("sinogram")
        out = np.empty((len(views), stop - first, scan.columns), dtype=np.float32)
        for i, view in enumerate(views):
            out[i] = _bin(np.asarray(sinogram[scan.views[view], raw_rows, raw_columns], dtype=np.float64), b)
    return torch.from_numpy(out)


def read_reference(scan: Scan) -> torch.Tensor | None:
    """The file's reference volume ``(1, 1, D, H, W)`` (float32), or ``None`` without one."""
    if not scan.has_reference:
        return None
    with _ArrayFile(scan.path) as arrays:
        reference = np.asarray(arrays.get("reference")[:], dtype=np.float32)
    if reference.ndim != 3:
        raise ValueError(f"{scan.path.name}: reference of shape {reference.shape}: give a (D, H, W) volume.")
    return torch.from_numpy(reference)[None, None]


def _selected_vectors(
    vectors: torch.Tensor, binning: int, raw_shape: tuple[int, int], rows: tuple[int, int], voxel_size: float
) -> torch.Tensor:
    """The vectors of the binned detector's rows ``rows``: steps ``binning`` times longer, the centre moved to the
    kept pixels' centre, and everything in voxel units."""
    height, width = raw_shape
    out = vectors.clone()
    u, v = vectors[:, 6:9], vectors[:, 9:12]
    # the binned pixels cover raw columns 0 .. (width // b) b - 1: their centre, against the raw detector's
    shift_columns = ((width // binning) * binning - width) / 2
    binned_rows = height // binning
    shift_rows = ((binned_rows * binning) - height) / 2 + (
        (rows[0] + rows[1] - 1) / 2 - (binned_rows - 1) / 2
    ) * binning
    out[:, 3:6] += shift_columns * u + shift_rows * v
    out[:, 6:9], out[:, 9:12] = u * binning, v * binning
    return out / voxel_size


def _bin(image: np.ndarray, b: int) -> np.ndarray:
    """``b x b`` pixel means of ``image`` (its size a multiple of ``b``)."""
    image = np.asarray(image, dtype=np.float64)
    if b == 1:
        return image
    rows, columns = image.shape[0] // b, image.shape[1] // b
    return image.reshape(rows, b, columns, b).mean(axis=(1, 3))


def _tiff_layout(folder: Path) -> tuple[list[Path], list[Path], list[Path], Path]:
    """The folder's projection files in view order, its dark and flat fields and its geometry file."""
    numbered = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := SCAN_FILE.match(p.name)))
    if not numbered:
        raise ValueError(f"{folder}: no scan_NNNNNN.tif projections; give a folder in the 42-walnuts layout.")
    flats = sorted(p for p in folder.glob("io*.tif*"))
    if not flats:
        raise ValueError(f"{folder}: no flat-field io*.tif images: the line integrals need one.")
    geometry = sorted(folder.glob("*.geom")) or sorted(p for p in folder.glob("*.txt") if "geom" in p.name)
    if not geometry:
        raise ValueError(f"{folder}: no geometry file (*.geom): give 12 numbers per view (ASTRA's cone_vec).")
    return [p for _, p in numbered], sorted(folder.glob("di*.tif*")), flats, geometry[0]


def _tiff_shape(path: Path) -> tuple[int, int]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        shape = tif.pages[0].shape
    if len(shape) != 2:
        raise ValueError(f"{path.name}: a projection of shape {shape}: give one grey image per file.")
    return int(shape[0]), int(shape[1])


def _read_tiff(path: Path, rows: slice, columns: slice) -> np.ndarray:
    """Rows and columns of a TIFF image: memory-mapped (only those rows read) when uncompressed."""
    import tifffile

    try:
        image = tifffile.memmap(path, mode="r")
    except ValueError:  # compressed or not contiguous: decoded whole
        image = tifffile.imread(path)
    return np.asarray(image[rows, columns], dtype=np.float64)


class _ArrayFile:
    """An array file's named arrays, sliceable without loading them: npz members memory-mapped, ``.pt`` tensors
    memory-mapped, HDF5 datasets."""

    def __init__(self, path: Path):
        self.path = path
        self._arrays: dict = {}
        self._close = None

    def __enter__(self) -> _ArrayFile:
        suffix = self.path.suffix
        if suffix == ".npz":
            self._arrays = _npz_members(self.path)
        elif suffix == ".pt":
            loaded = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            if not isinstance(loaded, dict):
                raise ValueError(f"{self.path.name}: give a dict of tensors (sinogram, vectors, reference).")
            self._arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in loaded.items()}
        else:
            import h5py

            handle = h5py.File(self.path, "r")
            self._arrays, self._close = handle, handle.close
        return self

    def get(self, name: str):
        return self._arrays[name] if name in self._arrays else None

    def __exit__(self, *exc) -> None:
        if self._close is not None:
            self._close()


def _npz_members(path: Path) -> dict[str, np.ndarray]:
    """Each ``.npy`` member of an uncompressed ``.npz`` as a read-only memory map (no member read whole).

    :raises ValueError: for a compressed archive (``numpy.savez_compressed``), whose members cannot be read in parts.
    """
    members = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(
                    f"{path.name}: member {info.filename} is compressed, so it cannot be read in parts: save the scan "
                    "with numpy.savez (not savez_compressed), or as HDF5."
                )
            raw.seek(info.header_offset)
            local = raw.read(30)
            name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            raw.seek(info.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(raw)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(raw)
            offset = raw.tell()
            order = "F" if fortran else "C"
            members[info.filename[:-4]] = np.memmap(
                path, dtype=dtype, mode="r", shape=shape, order=order, offset=offset
            )
    return members
