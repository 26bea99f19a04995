"""Write a simulated radio observation of a known sky, to try the Measurement Set path end to end without a
download: a sky model (the synthetic radio problem's sky, in Jy per pixel) written as a FITS image with its SIN
WCS, and the array of the synthetic problem observing it, written as a Measurement Set with casacore:

- ``OUT/sky.fits``: the sky model, ``--size`` pixels per side at ``--cell-arcsec`` (default: two pixels per fringe
  of the longest baseline at the highest frequency, as the synthetic problem's ``uv_extent: 0.5``);
- ``OUT/observation.ms``: ``--antennas`` antennas (core and spiral arms within ``--radius-m``), ``--times``
  integrations over 8 hours, ``--channels`` channels about 1.4 GHz, ``XX`` and ``YY``, with complex Gaussian noise
  of ``--noise`` times the sky's peak in the imaging operators' units (1e-3: the synthetic problem's default).

    python benchmarks/synthetic_observation.py -o results/observations/sky256
    distinv preview radio --param ms=results/observations/sky256/observation.ms -o results/previews/sky256
    distinv run configs/radio_ms.yml          # reads it on 2 ranks, scores it against sky.fits

With ``--rows N``, only the Measurement Set, with at least ``N`` rows (antennas and integrations raised to reach
them) and a point-source sky, for the reading benchmark (``benchmarks/measurement_set_reading.py``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from distinv.bench.nufft import radio_operator
from distinv.bench.radio.fits_images import write_fits_image
from distinv.bench.radio.geometry import ARCSEC, ImageGeometry, cell_from_baseline
from distinv.bench.radio.simulate import Observation, Sky, observation, simulate_measurement_set
from distinv.comm.context import DistributedContext
from distinv.images import radio_sky

PEAK_JY = 0.05  # the sky model's brightest pixel, Jy


def operator_unit(size: int) -> float:
    """``|A delta|`` of the imaging NUFFT at ``size x size`` (its normalisation: the problem's operators divide the
    visibilities in Jy by it), for setting the noise in the operators' units."""
    op = radio_operator((size, size), torch.zeros(2, 1), None)
    delta = torch.zeros(1, 1, size, size)
    delta[0, 0, size // 2, size // 2] = 1
    return float(op.A(delta).abs().reshape(-1)[0])


def longest_baseline_m(obs: Observation) -> float:
    antennas = obs.antennas_enu_m
    return float(torch.cdist(antennas, antennas).max())


def write_observation(
    out: Path,
    size: int,
    antennas: int,
    times: int,
    channels: int,
    radius_m: float,
    noise: float,
    cell_arcsec: float | None,
    seed: int,
) -> tuple[Path, Path, dict]:
    """``OUT/sky.fits`` and ``OUT/observation.ms`` (see the module's docstring). Returns their paths and what was
    written (cell, noise in Jy, visibilities)."""
    obs = observation(num_antennas=antennas, num_times=times, num_channels=channels, max_radius_m=radius_m,
                      seed=seed)  # fmt: skip
    fmax = float(obs.frequencies_hz.max())
    cell = cell_from_baseline(longest_baseline_m(obs), fmax, 0.5) if cell_arcsec is None else cell_arcsec * ARCSEC
    geometry = ImageGeometry((size, size), cell, obs.ra_rad, obs.dec_rad, float(obs.frequencies_hz.mean()))
    image = radio_sky(size, seed=seed) * PEAK_JY  # Jy/pixel
    out.mkdir(parents=True, exist_ok=True)
    with DistributedContext(env={}) as ctx:
        sky_path = write_fits_image(out / "sky.fits", image, geometry, "JY/PIXEL", ctx)
    # Stokes I's noise |n|^2 averages noise_jy^2 (XX and YY each noise_jy per part, halved); in the operators'
    # units (times unit / peak) that is noise^2, as the synthetic problem's
    noise_jy = noise * PEAK_JY / operator_unit(size)
    ms_path = simulate_measurement_set(out / "observation.ms", obs, Sky(image=image, geometry=geometry), noise_jy,
                                       seed=seed)  # fmt: skip
    facts = {"cell_arcsec": cell / ARCSEC, "noise_jy": noise_jy, "visibilities": obs.num_rows * channels}
    return sky_path, ms_path, facts


def write_points_observation(out: Path, rows: int, channels: int, seed: int) -> tuple[Path, dict]:
    """A set of at least ``rows`` rows and ``channels`` channels (a 1 Jy point source at the phase centre, noise
    0.01 Jy, 1% of the visibilities flagged), ``OUT/observation.ms``."""
    antennas = 64
    baselines = antennas * (antennas - 1) // 2
    times = math.ceil(rows / baselines)
    obs = observation(num_antennas=antennas, num_times=times, num_channels=channels, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    sky = Sky(points=[(obs.ra_rad, obs.dec_rad, 1.0)])
    path = simulate_measurement_set(out / "observation.ms", obs, sky, 0.01, seed=seed, flag_fraction=0.01)
    return path, {"rows": obs.num_rows, "channels": channels, "antennas": antennas, "times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", required=True, help="folder for sky.fits and observation.ms")
    parser.add_argument("--size", type=int, default=256, help="the sky model's pixels per side (default 256)")
    parser.add_argument("--antennas", type=int, default=32, help="antennas (default 32, the synthetic problem's)")
    parser.add_argument("--times", type=int, default=32, help="integrations over 8 hours (default 32)")
    parser.add_argument("--channels", type=int, default=4, help="channels over 1.3-1.5 GHz (default 4)")
    parser.add_argument("--radius-m", type=float, default=4000.0, help="the array's radius in metres (default 4000)")
    parser.add_argument("--noise", type=float, default=1e-3, help="noise per visibility over the sky's peak, in the "
                        "operators' units (default 1e-3)")  # fmt: skip
    parser.add_argument("--cell-arcsec", type=float, default=None, help="the sky's cells (default: from the array)")
    parser.add_argument("--rows", type=int, default=None, help="only a point-source set of at least this many rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    if args.rows is not None:
        path, facts = write_points_observation(out, args.rows, args.channels, args.seed)
        print(f"wrote {path}: {facts} in {time.perf_counter() - start:.1f} s")
        return
    sky, ms, facts = write_observation(out, args.size, args.antennas, args.times, args.channels, args.radius_m,
                                       args.noise, args.cell_arcsec, args.seed)  # fmt: skip
    print(f"wrote {sky} and {ms}: cell {facts['cell_arcsec']:.4g} arcsec, noise {facts['noise_jy']:.3g} Jy, "
          f"{facts['visibilities']} visibilities, in {time.perf_counter() - start:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
