"""A simulated observation written as a Measurement Set, with python-casacore's table API: the array of
:mod:`distinv.bench.uv_coverage` on a site, earth-rotation tracks, one or several spectral windows, and the
visibilities of point sources (exact, with the w-term) and of a sky image (its NUFFT, small-field) plus complex
Gaussian noise, written the way telescopes write them (rows in time order, each time every window's baselines;
``UVW`` in metres, antenna 2 minus antenna 1; ``WEIGHT = 1 / SIGMA^2`` per correlation). Flags may be drawn at
random; a flagged visibility is written as garbage (``1e6``), so a reader that ignores the flags is caught.

For tests and benchmarks that must not download an observation (``tests/test_measurement_sets.py``,
``benchmarks/measurement_set_reading.py``), and for users who want a set of a known sky.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from distinv.bench.radio.geometry import ImageGeometry, lm_of_radec
from distinv.bench.radio.measurement_set import tables
from distinv.bench.uv_coverage import SPEED_OF_LIGHT, antenna_layout, earth_rotation_uvw, enu_to_itrf

SIDEREAL_DAY_S = 86_164.0905
CORRELATION_CODES = {"I": 1, "RR": 5, "RL": 6, "LR": 7, "LL": 8, "XX": 9, "XY": 10, "YX": 11, "YY": 12}
GARBAGE = 1e6  # the value of a flagged visibility
START_MJD_S = 5.1e9  # about 2020 in MJD seconds


@dataclass
class Observation:
    """An array and its schedule.

    :param antennas_enu_m: ``(A, 3)`` local (east, north, up) positions, metres.
    :param frequencies_hz: ``(S, C)``: C channels in each of S spectral windows.
    :param hour_angles_rad: ``(T,)`` the integrations' hour angles of the phase centre.
    :param ra_rad, dec_rad: the phase centre (radians, J2000).
    :param correlations: the correlation products written (``("XX", "YY")``, ``("XX", "XY", "YX", "YY")``, ...).
    """

    antennas_enu_m: torch.Tensor
    frequencies_hz: np.ndarray
    hour_angles_rad: torch.Tensor
    ra_rad: float
    dec_rad: float
    latitude_deg: float = -30.7
    longitude_deg: float = 21.4
    dish_diameter_m: float = 13.5
    correlations: tuple[str, ...] = ("XX", "YY")

    @property
    def num_baselines(self) -> int:
        a = len(self.antennas_enu_m)
        return a * (a - 1) // 2

    @property
    def num_rows(self) -> int:
        return len(self.hour_angles_rad) * self.frequencies_hz.shape[0] * self.num_baselines


def observation(
    num_antennas: int = 32,
    num_times: int = 32,
    num_channels: int = 4,
    num_windows: int = 1,
    frequency_hz: float = 1.4e9,
    bandwidth_hz: float = 0.2e9,
    duration_hours: float = 8.0,
    ra_deg: float = 150.0,
    dec_deg: float = -40.0,
    max_radius_m: float = 4000.0,
    correlations: Sequence[str] = ("XX", "YY"),
    seed: int = 0,
) -> Observation:
    """The synthetic radio problem's array and schedule as an :class:`Observation`: ``num_windows`` windows of
    ``num_channels`` channels evenly spread over ``frequency_hz +- bandwidth_hz / 2``, hour angles over
    ``duration_hours`` about transit."""
    total = num_windows * num_channels
    spread = np.linspace(-0.5, 0.5, total) if total > 1 else np.zeros(1)
    frequencies = (frequency_hz + bandwidth_hz * spread).reshape(num_windows, num_channels)
    steps = torch.linspace(-0.5, 0.5, num_times, dtype=torch.float64) if num_times > 1 else torch.zeros(1)
    return Observation(
        antennas_enu_m=antenna_layout(num_antennas, max_radius_m=max_radius_m, seed=seed),
        frequencies_hz=frequencies,
        hour_angles_rad=steps * duration_hours * (math.pi / 12),
        ra_rad=math.radians(ra_deg),
        dec_rad=math.radians(dec_deg),
        correlations=tuple(correlations),
    )


@dataclass
class Sky:
    """What the simulated array sees: point sources at ``(ra, dec)`` radians with fluxes in Jy, and optionally
    an image in Jy per pixel on its geometry (centred anywhere; its pixels at their own sky positions)."""

    points: list[tuple[float, float, float]] = field(default_factory=list)  # (ra_rad, dec_rad, flux_jy)
    image: torch.Tensor | None = None  # (1, 1, H, W)
    geometry: ImageGeometry | None = None


def simulate_measurement_set(
    path: str | Path,
    obs: Observation,
    sky: Sky,
    noise_jy: float = 0.0,
    seed: int = 0,
    flag_fraction: float = 0.0,
    flag_row_fraction: float = 0.0,
    weight_spectrum: bool = False,
    column_gains: dict[str, float] | None = None,
    times_per_chunk: int = 64,
) -> Path:
    """Write the observation ``obs`` of ``sky`` to a Measurement Set at ``path`` (replaced if it exists; written
    under a temporary name and renamed when whole).

    :param noise_jy: the standard deviation of the real and of the imaginary part of each correlation's noise (Jy);
        ``SIGMA`` is it and ``WEIGHT`` ``1 / noise_jy^2`` (1 and 1 without noise).
    :param flag_fraction: the fraction of visibilities (row, channel, correlation) flagged at random.
    :param flag_row_fraction: the fraction of rows flagged whole (``FLAG_ROW``).
    :param weight_spectrum: also write ``WEIGHT_SPECTRUM`` (per channel), twice ``WEIGHT`` on the odd channels (so a
        reader using the wrong one is caught; the noise written follows it).
    :param column_gains: the data columns written, each the visibilities times its gain (default ``{"DATA": 1}``;
        e.g. ``{"DATA": 2, "CORRECTED_DATA": 1}`` for data still to calibrate).
    :return: the set's path.
    """
    ct = tables()
    gains = {"DATA": 1.0} if column_gains is None else dict(column_gains)
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    windows, channels = obs.frequencies_hz.shape
    num_corr = len(obs.correlations)
    columns = [ct.makearrcoldesc(name, 0j, shape=[channels, num_corr], valuetype="complex") for name in gains]
    if weight_spectrum:
        columns.append(ct.makearrcoldesc("WEIGHT_SPECTRUM", 0.0, shape=[channels, num_corr], valuetype="float"))
    with ct.default_ms(str(partial), ct.maketabdesc(columns)) as main:
        main.addrows(obs.num_rows)
        _write_main(main, obs, sky, noise_jy, seed, flag_fraction, flag_row_fraction, weight_spectrum, gains,
                    times_per_chunk)  # fmt: skip
    _write_subtables(ct, partial, obs)
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    return path


def _write_main(main, obs, sky, noise_jy, seed, flag_fraction, flag_row_fraction, weight_spectrum, gains, chunk):
    rng = np.random.default_rng(seed)
    windows, channels = obs.frequencies_hz.shape
    num_corr = len(obs.correlations)
    i, j = torch.triu_indices(len(obs.antennas_enu_m), len(obs.antennas_enu_m), offset=1)
    baselines = obs.antennas_enu_m[j] - obs.antennas_enu_m[i]  # antenna 2 minus antenna 1
    num_b = len(baselines)
    step_s = float(obs.hour_angles_rad[1] - obs.hour_angles_rad[0]) / (2 * math.pi) * SIDEREAL_DAY_S if len(
        obs.hour_angles_rad) > 1 else 10.0  # fmt: skip
    parallel = [k for k, c in enumerate(obs.correlations) if c in ("I", "XX", "YY", "RR", "LL")]
    sigma = noise_jy if noise_jy > 0 else 1.0
    channel_factor = np.where(np.arange(channels) % 2 == 1, 2.0, 1.0) if weight_spectrum else np.ones(channels)
    for first in range(0, len(obs.hour_angles_rad), chunk):
        hours = obs.hour_angles_rad[first : first + chunk]
        uvw = earth_rotation_uvw(baselines, hours, obs.latitude_deg, math.degrees(obs.dec_rad))  # (3, t, B)
        uvw = uvw.permute(1, 2, 0).numpy()  # (t, B, 3)
        t = len(hours)
        rows = t * windows * num_b
        uvw_rows = np.broadcast_to(uvw[:, None], (t, windows, num_b, 3)).reshape(rows, 3)
        freqs = np.broadcast_to(obs.frequencies_hz[None, :, None, :], (t, windows, num_b, channels)).reshape(rows, -1)
        stokes_i = _visibilities(sky, obs, uvw_rows, freqs)  # (rows, C) complex128
        data = np.zeros((rows, channels, num_corr), dtype=np.complex128)
        data[..., parallel] = stokes_i[..., None]
        noise_scale = noise_jy / np.sqrt(channel_factor)[None, :, None]
        noise = rng.standard_normal((rows, channels, num_corr)) + 1j * rng.standard_normal((rows, channels, num_corr))
        data = data + noise * noise_scale
        flags = rng.random((rows, channels, num_corr)) < flag_fraction
        flag_row = rng.random(rows) < flag_row_fraction
        bad = flags | flag_row[:, None, None]
        data = np.where(bad, GARBAGE, data)
        start = first * windows * num_b
        hour_index = np.repeat(np.arange(first, first + t), windows * num_b)
        put = {
            "UVW": uvw_rows,
            "TIME": START_MJD_S + hour_index * step_s,
            "TIME_CENTROID": START_MJD_S + hour_index * step_s,
            "INTERVAL": np.full(rows, step_s),
            "EXPOSURE": np.full(rows, step_s),
            "ANTENNA1": np.tile(i.numpy(), t * windows).astype(np.int32),
            "ANTENNA2": np.tile(j.numpy(), t * windows).astype(np.int32),
            "DATA_DESC_ID": np.tile(np.repeat(np.arange(windows), num_b), t).astype(np.int32),
            "FIELD_ID": np.zeros(rows, dtype=np.int32),
            "SCAN_NUMBER": np.ones(rows, dtype=np.int32),
            "FLAG": flags,
            "FLAG_ROW": flag_row,
            "WEIGHT": np.full((rows, num_corr), 1 / sigma**2, dtype=np.float32),
            "SIGMA": np.full((rows, num_corr), sigma, dtype=np.float32),
        }
        if weight_spectrum:
            spectrum = np.broadcast_to((channel_factor / sigma**2)[None, :, None], (rows, channels, num_corr))
            put["WEIGHT_SPECTRUM"] = np.ascontiguousarray(spectrum, dtype=np.float32)
        for name, gain in gains.items():
            put[name] = np.where(bad, GARBAGE, data * gain).astype(np.complex64)
        for name, values in put.items():
            main.putcol(name, values, startrow=start, nrow=rows)


def _visibilities(sky: Sky, obs: Observation, uvw_m: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Stokes I ``(rows, C)`` complex128 of ``sky`` at these rows' ``uvw_m`` ``(rows, 3)`` and ``freqs``."""
    per_metre = freqs / SPEED_OF_LIGHT
    u, v, w = (uvw_m[:, k : k + 1] * per_metre for k in range(3))
    out = np.zeros(u.shape, dtype=np.complex128)
    for ra, dec, flux in sky.points:
        l_, m_ = lm_of_radec(ra, dec, obs.ra_rad, obs.dec_rad)
        n_1 = math.sqrt(1 - l_ * l_ - m_ * m_) - 1
        out += flux * np.exp(-2j * math.pi * (u * l_ + v * m_ + w * n_1))
    if sky.image is not None:
        out += _image_visibilities(sky, obs, u, v)
    return out


def _image_visibilities(sky: Sky, obs: Observation, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The image's visibilities (its NUFFT, no w-term): its pixels lie about its own centre, which lies at ``(l0,
    m0)`` from the phase centre (a phase shift)."""
    from distinv.bench.nufft import FinufftRadio

    geometry = sky.geometry
    l0, m0 = lm_of_radec(geometry.ra_rad, geometry.dec_rad, obs.ra_rad, obs.dec_rad)
    omega = geometry.omega(torch.from_numpy(u.reshape(-1)), torch.from_numpy(v.reshape(-1)))
    if omega.abs().max() >= math.pi:
        raise ValueError(
            f"the sky image's cells ({math.degrees(geometry.cell_rad) * 3600:.3g} arcsec) are too coarse for the "
            "array's longest baseline (its fringes alias): give a finer image or a smaller array (max_radius_m)."
        )
    op = FinufftRadio(geometry.shape, omega, eps=1e-6)  # float32: finer is below its epsilon
    values = op._type2(sky.image.to(torch.float32)).reshape(u.shape).numpy().astype(np.complex128) / op.scale
    return values * np.exp(-2j * math.pi * (u * l0 + v * m0))


def _write_subtables(ct, path: Path, obs: Observation) -> None:
    windows, channels = obs.frequencies_hz.shape
    positions = enu_to_itrf(obs.antennas_enu_m, obs.latitude_deg, obs.longitude_deg).numpy()
    with ct.table(f"{path}/ANTENNA", readonly=False, ack=False) as t:
        t.addrows(len(positions))
        t.putcol("POSITION", positions)
        t.putcol("DISH_DIAMETER", np.full(len(positions), obs.dish_diameter_m))
        t.putcol("NAME", [f"A{k:03d}" for k in range(len(positions))])
        t.putcol("STATION", [f"S{k:03d}" for k in range(len(positions))])
        t.putcol("MOUNT", ["alt-az"] * len(positions))
        t.putcol("TYPE", ["GROUND-BASED"] * len(positions))
    direction = np.array([[[obs.ra_rad, obs.dec_rad]]])
    with ct.table(f"{path}/FIELD", readonly=False, ack=False) as t:
        t.addrows(1)
        for name in ("PHASE_DIR", "DELAY_DIR", "REFERENCE_DIR"):
            t.putcol(name, direction)
        t.putcol("NAME", ["target"])
    width = float(np.diff(obs.frequencies_hz, axis=1).mean()) if channels > 1 else 1e6
    with ct.table(f"{path}/SPECTRAL_WINDOW", readonly=False, ack=False) as t:
        t.addrows(windows)
        for w in range(windows):
            t.putcell("CHAN_FREQ", w, obs.frequencies_hz[w])
            for name in ("CHAN_WIDTH", "EFFECTIVE_BW", "RESOLUTION"):
                t.putcell(name, w, np.full(channels, width))
            t.putcell("NUM_CHAN", w, channels)
            t.putcell("REF_FREQUENCY", w, float(obs.frequencies_hz[w, 0]))
            t.putcell("TOTAL_BANDWIDTH", w, width * channels)
            t.putcell("MEAS_FREQ_REF", w, 5)  # TOPO
            t.putcell("NAME", w, f"spw{w}")
    codes = [CORRELATION_CODES[c] for c in obs.correlations]
    products = [[0 if c[0] in "XR" else 1, 0 if c[-1] in "XR" else 1] for c in obs.correlations]
    with ct.table(f"{path}/POLARIZATION", readonly=False, ack=False) as t:
        t.addrows(1)
        t.putcell("CORR_TYPE", 0, np.array(codes, dtype=np.int32))
        t.putcell("CORR_PRODUCT", 0, np.array(products, dtype=np.int32))
        t.putcell("NUM_CORR", 0, len(codes))
    with ct.table(f"{path}/DATA_DESCRIPTION", readonly=False, ack=False) as t:
        t.addrows(windows)
        t.putcol("SPECTRAL_WINDOW_ID", np.arange(windows, dtype=np.int32))
        t.putcol("POLARIZATION_ID", np.zeros(windows, dtype=np.int32))
