"""Where an image's pixels lie on the sky, and where its uv samples fall in the NUFFT's frequency plane.

An image ``(H, W)`` (rows, columns) is a grid of direction cosines on the SIN projection (the orthographic
projection the interferometer's Fourier relation is exact on) about the phase centre, which is pixel
``(H // 2, W // 2)`` (the NUFFT's centre)::

    l = -(column - W // 2) * cell        (l grows east, with right ascension: columns grow west, as skies are shown)
    m =  (row - H // 2) * cell           (m grows north: row 0 is the southern edge, FITS's first row)

The measurement equation is taken in its small-field 2D form, as the Measurement Set's convention for ``UVW``
(antenna 2 minus antenna 1, in metres) and the imagers reading it (CASA, WSClean) write it::

    V(u, v) = sum over pixels of I(l, m) exp(-2 pi i (u l + v m))        (u, v in wavelengths)

dropping the w-term ``exp(-2 pi i w (sqrt(1 - l^2 - m^2) - 1))``, whose phase ``pi w (l^2 + m^2)`` stays below
0.01 radian (an error under 1%) within the radius :func:`w_term_radius_rad` of the phase centre: ``sqrt(0.01 / (pi
w_max))``. With samples at ``omega = 2 pi cell (v, -u)`` radians per pixel (rows, columns), the sum above is the
NUFFT ``exp(-i omega . (n - N // 2))`` of :mod:`distinv.bench.nufft`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ARCSEC = math.pi / (180 * 3600)  # radians


@dataclass(frozen=True)
class ImageGeometry:
    """An image's pixel grid on the sky.

    :param shape: ``(H, W)`` pixels.
    :param cell_rad: the pixel's side, radians (the same along both axes).
    :param ra_rad, dec_rad: the phase centre (pixel ``(H // 2, W // 2)``), radians (ICRS / J2000).
    :param frequency_hz: the image's frequency (the mean of its channels).
    :param bandwidth_hz: the width its channels span (0 for one channel).
    """

    shape: tuple[int, int]
    cell_rad: float
    ra_rad: float
    dec_rad: float
    frequency_hz: float
    bandwidth_hz: float = 0.0

    def omega(self, u_wavelengths: torch.Tensor, v_wavelengths: torch.Tensor) -> torch.Tensor:
        """The NUFFT's sample locations ``(2, M)`` (rows, columns) in radians per pixel, float32, of ``M`` uv
        points in wavelengths."""
        scale = 2 * math.pi * self.cell_rad
        return torch.stack([v_wavelengths * scale, -u_wavelengths * scale]).float()

    def pixel_of(self, l_rad: float, m_rad: float) -> tuple[float, float]:
        """The ``(row, column)`` (fractional) where direction cosines ``(l, m)`` fall."""
        return self.shape[0] // 2 + m_rad / self.cell_rad, self.shape[1] // 2 - l_rad / self.cell_rad

    def lm_of(self, row: float, column: float) -> tuple[float, float]:
        """The direction cosines ``(l, m)`` of pixel ``(row, column)``."""
        return -(column - self.shape[1] // 2) * self.cell_rad, (row - self.shape[0] // 2) * self.cell_rad


def lm_of_radec(ra_rad: float, dec_rad: float, ra0_rad: float, dec0_rad: float) -> tuple[float, float]:
    """Direction cosines ``(l, m)`` of the sky position ``(ra, dec)`` about the phase centre ``(ra0, dec0)`` (SIN
    projection), radians."""
    d_ra = ra_rad - ra0_rad
    l_ = math.cos(dec_rad) * math.sin(d_ra)
    m_ = math.sin(dec_rad) * math.cos(dec0_rad) - math.cos(dec_rad) * math.sin(dec0_rad) * math.cos(d_ra)
    return l_, m_


def radec_of_lm(l_rad: float, m_rad: float, ra0_rad: float, dec0_rad: float) -> tuple[float, float]:
    """The sky position ``(ra, dec)`` of direction cosines ``(l, m)`` about ``(ra0, dec0)``: the inverse of
    :func:`lm_of_radec`, radians."""
    n = math.sqrt(max(0.0, 1 - l_rad * l_rad - m_rad * m_rad))
    dec = math.asin(m_rad * math.cos(dec0_rad) + n * math.sin(dec0_rad))
    ra = ra0_rad + math.atan2(l_rad, n * math.cos(dec0_rad) - m_rad * math.sin(dec0_rad))
    return ra, dec


def cell_from_baseline(longest_baseline_m: float, highest_frequency_hz: float, uv_extent: float = 0.5) -> float:
    """The cell (radians) at which the longest baseline's finest fringe at the highest frequency spans
    ``2 / uv_extent`` pixels: ``uv_extent / (2 u_max)`` with ``u_max`` in wavelengths (``uv_extent = 1``: the
    Nyquist limit; 0.5, the default, two pixels per fringe, four across the beam's main lobe)."""
    from distinv.bench.uv_coverage import SPEED_OF_LIGHT

    u_max = longest_baseline_m * highest_frequency_hz / SPEED_OF_LIGHT
    return uv_extent / (2 * u_max)


def w_term_radius_rad(w_max_wavelengths: float, error: float = 0.01) -> float:
    """The radius about the phase centre (radians) within which the dropped w-term's phase stays below ``error``
    radians (a relative error below ``error``): ``sqrt(error / (pi w_max))``."""
    return math.sqrt(error / (math.pi * max(w_max_wavelengths, 1e-30)))
