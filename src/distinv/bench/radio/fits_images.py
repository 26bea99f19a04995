"""Sky images as FITS files with a celestial coordinate system, as radio imagers write them and every viewer
opens them (DS9, CARTA, astropy): four axes ``RA---SIN``, ``DEC--SIN``, ``FREQ``, ``STOKES`` (the last two of length
one), float32, the phase centre at pixel ``(W // 2 + 1, H // 2 + 1)`` (FITS counts from 1), right ascension
decreasing along the first axis (``CDELT1 < 0``), ``BUNIT`` the brightness unit.

A written image lives in parts: each rank writes its own band of rows into one file at its offset (the header
and the file's size set first by rank 0), so no rank gathers the image; the file is written under a temporary
name and renamed when every rank has written, so a reader sees a whole image or none.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from distinv.bench.radio.geometry import ImageGeometry
from distinv.comm.context import DistributedContext
from distinv.placements.row_bands import RowBands, rows_of_rank

BLOCK = 2880  # FITS's record length: headers and data are padded to a whole number of them


def fits_header(geometry: ImageGeometry, bunit: str, extra: dict | None = None):
    """The astropy header of an image on ``geometry`` in ``bunit`` (e.g. ``"JY/BEAM"``, ``"JY/PIXEL"``), with
    ``extra`` cards (name -> value or (value, comment))."""
    from astropy.io import fits

    height, width = geometry.shape
    cell_deg = math.degrees(geometry.cell_rad)
    cards = [
        ("SIMPLE", True),
        ("BITPIX", -32),
        ("NAXIS", 4),
        ("NAXIS1", width),
        ("NAXIS2", height),
        ("NAXIS3", 1),
        ("NAXIS4", 1),
        ("BUNIT", bunit, "brightness unit"),
        ("BTYPE", "Intensity"),
        ("RADESYS", "ICRS"),
        ("EQUINOX", 2000.0),
        ("CTYPE1", "RA---SIN"),
        ("CRVAL1", math.degrees(geometry.ra_rad) % 360.0),
        ("CDELT1", -cell_deg),
        ("CRPIX1", float(width // 2 + 1)),
        ("CUNIT1", "deg"),
        ("CTYPE2", "DEC--SIN"),
        ("CRVAL2", math.degrees(geometry.dec_rad)),
        ("CDELT2", cell_deg),
        ("CRPIX2", float(height // 2 + 1)),
        ("CUNIT2", "deg"),
        ("CTYPE3", "FREQ"),
        ("CRVAL3", float(geometry.frequency_hz)),
        ("CDELT3", float(geometry.bandwidth_hz) or 1.0),
        ("CRPIX3", 1.0),
        ("CUNIT3", "Hz"),
        ("SPECSYS", "TOPOCENT"),
        ("CTYPE4", "STOKES"),
        ("CRVAL4", 1.0, "Stokes I"),
        ("CDELT4", 1.0),
        ("CRPIX4", 1.0),
        ("ORIGIN", "distinv"),
    ]
    header = fits.Header()
    for card in cards:
        header[card[0]] = card[1] if len(card) == 2 else (card[1], card[2])
    for name, value in (extra or {}).items():
        header[name] = value
    return header


def write_fits_image(
    path: str | Path,
    x: RowBands | torch.Tensor,
    geometry: ImageGeometry,
    bunit: str,
    ctx: DistributedContext,
    extra: dict | None = None,
    scale: float = 1.0,
) -> Path:
    """Write the image ``x`` times ``scale`` (``x``: ``(1, 1, H, W)``, sharded in row bands, each rank its band;
    replicated, each rank a balanced share of rows) to ``path``; every rank calls it (three agreed steps: the file
    made, the rows written, the file renamed).

    :raises ValueError: on every rank, for an image that is not one ``(1, 1, H, W)`` image of ``geometry``'s shape.
    :raises PeerRankError: on the others, when a rank fails to write (a full disk, say).
    """
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[:2] != (1, 1) or shape[2:] != tuple(geometry.shape):
        raise ValueError(f"an image of shape {shape}: a FITS sky image is (1, 1, {geometry.shape[0]}, "
                         f"{geometry.shape[1]}).")  # fmt: skip
    first, _, rows = rows_of_rank(ctx, x)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    head = fits_header(geometry, bunit, extra).tostring().encode("ascii")  # padded to whole blocks
    width = shape[3]
    data_bytes = shape[2] * width * 4
    total = len(head) + -(-data_bytes // BLOCK) * BLOCK

    def create() -> None:
        if ctx.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as f:
                f.write(head)
                f.truncate(total)  # the data's padding reads as zeros, as FITS asks

    def write() -> None:
        values = np.ascontiguousarray((rows[0, 0].detach().double().cpu().numpy() * scale).astype(">f4"))
        descriptor = os.open(temporary, os.O_WRONLY)
        try:
            os.pwrite(descriptor, values.tobytes(), len(head) + first * width * 4)
        finally:
            os.close(descriptor)

    def rename() -> None:
        if ctx.rank == 0:
            temporary.replace(path)

    ctx.run_agreed(f"creating {path.name}", create)
    ctx.run_agreed(f"writing {path.name}", write)
    ctx.run_agreed(f"renaming {path.name}", rename)
    return path


def read_fits_image(path: str | Path, name: str = "sky") -> tuple[torch.Tensor, ImageGeometry, str]:
    """A sky image from a FITS file (2 to 4 axes, the third and fourth of length one), e.g. a survey cutout.

    Its pixels are taken as the SIN grid of :mod:`distinv.bench.radio.geometry` about the pixel ``(H // 2,
    W // 2)`` after turning the image to its orientation (right ascension decreasing with the column, declination
    increasing with the row): the columns are reversed when right ascension increases along them, the rows when
    declination decreases along them (read from the ``CDELT``/``PC`` or ``CD`` matrix); the phase centre is that
    pixel's world position. A TAN or other zenithal cutout agrees with that grid to the third order in the field's
    radius (negligible over a few degrees).

    :param name: the parameter that named the file, for the errors (``sky``, ``reference``).
    :return: the image ``(1, 1, H, W)`` float32, its :class:`ImageGeometry` and its ``BUNIT`` (``""`` if none).
    :raises ValueError: naming ``name`` and the file, for a missing file, a cube (more than one frequency or Stokes
        plane), no celestial axes, declination on the first axis, a rotated grid, or cells that are not square.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    path = Path(path)
    where = f"{name}={str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: no such FITS file.")
    with fits.open(path, memmap=False) as hdus:
        hdu = next((h for h in hdus if h.data is not None and h.data.ndim >= 2), None)
        if hdu is None:
            raise ValueError(f"{where}: no image in the file.")
        data = np.asarray(hdu.data, dtype=np.float32)
        header = hdu.header
    if data.ndim > 2 and any(n != 1 for n in data.shape[:-2]):
        raise ValueError(f"{where}: an image of shape {data.shape}: give one plane (one frequency, Stokes I).")
    data = data.reshape(data.shape[-2:])
    wcs = WCS(header).celestial
    if wcs.naxis != 2:
        raise ValueError(f"{where}: no celestial axes (RA, DEC) in its header.")
    if wcs.wcs.lng != 0:
        raise ValueError(f"{where}: declination along the first axis; give right ascension first (CTYPE1 = RA---).")
    matrix = wcs.pixel_scale_matrix  # degrees per pixel: world (RA, DEC) by pixel (column, row)
    cell = float(abs(matrix[1, 1]))
    if abs(matrix[0, 1]) > 1e-6 * cell or abs(matrix[1, 0]) > 1e-6 * cell:
        raise ValueError(f"{where}: a rotated grid (CROTA, PC or CD off the diagonal); regrid it north up first.")
    if not np.isclose(abs(matrix[0, 0]), cell, rtol=1e-6):
        raise ValueError(
            f"{where}: cells of {abs(matrix[0, 0]) * 3600:.4g} x {cell * 3600:.4g} arcsec: give square cells."
        )
    height, width = data.shape
    flip_columns, flip_rows = matrix[0, 0] > 0, matrix[1, 1] < 0
    # the pixel that lands at (H // 2, W // 2) once the image is turned
    column = width - 1 - width // 2 if flip_columns else width // 2
    row = height - 1 - height // 2 if flip_rows else height // 2
    centre = wcs.pixel_to_world_values(column, row)
    if flip_columns:
        data = data[:, ::-1]
    if flip_rows:
        data = data[::-1]
    frequency = float(header.get("CRVAL3", 0.0)) if str(header.get("CTYPE3", "")).startswith("FREQ") else 0.0
    geometry = ImageGeometry(
        (height, width), math.radians(cell), math.radians(float(centre[0]) % 360.0), math.radians(float(centre[1])),
        frequency,
    )  # fmt: skip
    image = torch.from_numpy(np.ascontiguousarray(np.nan_to_num(data)))[None, None]
    return image, geometry, str(header.get("BUNIT", ""))
