"""Radio from a Measurement Set: small sets written with casacore's table API from the project's array simulation
(point sources at known offsets, flags, per-channel weights, two spectral windows) read back in parts; the dirty
image equal to a direct Fourier sum of what the set holds, a source's peak where its sky position says (through
the FITS WCS), the PSF peak 1, Briggs weighting between its limits, and the same weights, images and
reconstruction at 1, 2 and 3 ranks, written as FITS band by band."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from distinv.bench.problems import build
from distinv.bench.radio.geometry import ARCSEC, radec_of_lm
from distinv.bench.radio.measurement_set import block_rows, open_measurement_set, read_block
from distinv.bench.radio.simulate import Sky, observation, simulate_measurement_set
from distinv.bench.radio.weighting import imaging_weights, weight_grid

ct = pytest.importorskip("casacore.tables")

SIZE = 64
CELL_ARCSEC = 8.0  # the array below (1 km) at 1.5 GHz: Nyquist about 20 arcsec
OFFSET = (14, -10)  # the second source: 14 pixels north, 10 pixels east (columns grow west)
SELECTION = {"spw": [0, 1], "weights": "auto"}


def sources(ra0: float, dec0: float) -> list[tuple[float, float, float]]:
    """A 1 Jy source at the phase centre and a 0.5 Jy one at pixel offset ``OFFSET`` (rows, columns)."""
    cell = CELL_ARCSEC * ARCSEC
    l_, m_ = -OFFSET[1] * cell, OFFSET[0] * cell
    return [(ra0, dec0, 1.0), (*radec_of_lm(l_, m_, ra0, dec0), 0.5)]


@pytest.fixture(scope="module")
def measurement_set(tmp_path_factory) -> Path:
    obs = observation(num_antennas=12, num_times=12, num_channels=4, num_windows=2, max_radius_m=500, seed=1)
    path = tmp_path_factory.mktemp("ms") / "points.ms"
    sky = Sky(points=sources(obs.ra_rad, obs.dec_rad))
    gains = {"DATA": 2.0, "CORRECTED_DATA": 1.0}  # data still to calibrate, and calibrated
    return simulate_measurement_set(path, obs, sky, noise_jy=0.01, flag_fraction=0.05, flag_row_fraction=0.02,
                                    weight_spectrum=True, column_gains=gains)  # fmt: skip


def radio(path: Path, **params):
    params = {"size": SIZE, "ms": str(path), "cell_arcsec": CELL_ARCSEC, "data_column": "CORRECTED_DATA",
              "num_operators": 3, **SELECTION, **params}  # fmt: skip
    return build("radio", **params)


def everything_read_directly(path: Path):
    """Stokes I, weights, uv (wavelengths) of every unflagged visibility, read whole with casacore (the check)."""
    with ct.table(str(path), ack=False) as t:
        uvw, data = t.getcol("UVW"), t.getcol("CORRECTED_DATA")
        flags = t.getcol("FLAG") | t.getcol("FLAG_ROW")[:, None, None]
        spectrum, window = t.getcol("WEIGHT_SPECTRUM").astype(np.float64), t.getcol("DATA_DESC_ID")
    with ct.table(f"{path}/SPECTRAL_WINDOW", ack=False) as t:
        freqs = t.getcol("CHAN_FREQ")[window]
    stokes = (data[..., 0] + data[..., 1]) / 2
    weight = 4 / (1 / spectrum[..., 0] + 1 / spectrum[..., 1])
    good = ~(flags[..., 0] | flags[..., 1])
    scale = freqs / 299_792_458.0
    return stokes[good], weight[good], (uvw[:, :1] * scale)[good], (uvw[:, 1:2] * scale)[good]


def test_a_block_reads_its_rows_and_channels_as_stokes_i_without_the_flagged(measurement_set):
    ms = open_measurement_set(measurement_set, "CORRECTED_DATA", spw=[0, 1])
    assert ms.hands == (0, 1) and ms.weights == "weight_spectrum" and ms.frequencies_hz.shape == (2, 4)
    whole = read_block(ms, np.arange(len(ms.rows)))
    bounds = [(0, 6), (6, 12)]
    rows, channels = block_rows(ms, "time", 1, bounds)
    part = read_block(ms, rows, channels)
    assert len(rows) == len(ms.rows) // 2 and torch.equal(part.visibilities, whole.visibilities[rows])
    rows, channels = block_rows(ms, "channel", 1, [(0, 1), (1, 4)])
    part = read_block(ms, rows, channels)
    assert part.visibilities.shape == (len(ms.rows), 3) and torch.equal(part.weights, whole.weights[:, 1:])
    kept = whole.weights > 0
    assert 0.8 < kept.float().mean() < 0.97  # flags and flagged rows dropped (their garbage never read as data)
    assert whole.visibilities[kept].abs().max() < 2  # 1.5 Jy of sources plus noise
    # WEIGHT_SPECTRUM doubles the odd channels: Stokes I weighs 2 / sigma^2 there twice over
    assert torch.allclose(whole.weights[kept[:, 1], 1].unique(), torch.tensor([4e4], dtype=torch.float64))
    sigma = read_block(open_measurement_set(measurement_set, "CORRECTED_DATA", weights="sigma"), np.arange(4))
    assert torch.allclose(sigma.weights[sigma.weights > 0].unique(), torch.tensor([2e4], dtype=torch.float64))


def test_selections_pick_their_rows_and_bad_ones_are_clear_errors(measurement_set, tmp_path):
    both = open_measurement_set(measurement_set, spw=[0, 1])
    steps = both.time_steps
    step_s = float(steps[1] - steps[0])
    one = open_measurement_set(measurement_set, spw=1, channels=[1, 3], time_range_s=[0, 1.5 * step_s])
    assert one.frequencies_hz.shape == (1, 2) and np.allclose(one.frequencies_hz, both.frequencies_hz[1:, 1:3])
    assert len(one.time_steps) == 2 and len(one.rows) == 2 * 66  # two integrations of spw 1's 66 baselines
    assert set(one.row_window.tolist()) == {0} and np.all(np.diff(one.rows) > 0)
    stop_excluded = open_measurement_set(measurement_set, spw=1, time_range_s=[0, step_s])
    assert len(stop_excluded.time_steps) == 1
    for kwargs, message in [
        ({"data_column": "MODEL_DATA"}, "has no such column"),
        ({"field": 3}, "field=3"),
        ({"spw": 5}, "spw=\\[5\\]"),
        ({"channels": [2, 9]}, "channels=\\[2, 9\\]"),
        ({"time_range_s": [1e9, 2e9]}, "has no rows"),
        ({"weights": "variance"}, "weights='variance'"),
    ]:
        with pytest.raises(ValueError, match=message):
            open_measurement_set(measurement_set, **kwargs)
    with pytest.raises(ValueError, match="not a Measurement Set"):
        open_measurement_set(tmp_path)
    with pytest.raises(ValueError, match="num_antennas"):
        radio(measurement_set, num_antennas=8)
    with pytest.raises(ValueError, match="give ms=PATH"):
        build("radio", size=32, data_column="CORRECTED_DATA")
    with pytest.raises(ValueError, match="cell_arcsec=60"):
        radio(measurement_set, cell_arcsec=60)
    with pytest.raises(ValueError, match="num_operators=20"):
        radio(measurement_set, num_operators=20)


def images_of(ctx, path: str, weighting: str, robust: float, iterations: int, out: str | None, operators: int = 3):
    """On every rank: the problem measured and its dirty image, PSF, start and a few PnP iterations; FITS
    written to ``out`` when given."""
    from distinv.bench.engines import build_engine
    from distinv.bench.spec import TilingSpec
    from distinv.pnp import pnp

    warnings.simplefilter("ignore")
    problem = radio(Path(path), weighting=weighting, robust=robust, num_operators=operators, ctx=ctx)
    engine = build_engine("distinv", ctx, problem, Positive(), TilingSpec(patch_size=None))
    with torch.no_grad():
        y = engine.measure(problem)
        x0 = engine.initial(problem, y)
        images = {name: image for name, (image, _) in problem.sky_images(engine.view).items()}
        x, records = pnp("pgd", engine.physics, engine.denoiser, y, x0, sigma=0.01, iterations=iterations, step=None,
                         ctx=ctx, residual=True)  # fmt: skip
        if out is not None:
            problem.write_results(Path(out), x, engine.view)
    weights = {
        i: op.dataWeight.clone() for i, op in zip(engine.view.local_indexes, engine.view.local_physics, strict=True)
    }
    return images, x0, x, weights, problem.flux_unit_jy, problem.noise_sigma, [r.measurement_residual for r in records]


class Positive(torch.nn.Module):
    """A denoiser that only keeps the sky positive."""

    def forward(self, x, sigma=None):
        return x.clamp(min=0)


def test_the_dirty_image_is_the_direct_fourier_sum_of_the_set_and_the_psf_peaks_at_one(ranks, measurement_set):
    [(images, *_)] = ranks(1).run(images_of, str(measurement_set), "natural", 0.0, 1, None)
    stokes, weight, u, v = everything_read_directly(measurement_set)
    cell = CELL_ARCSEC * ARCSEC
    dirty = images["dirty"][0, 0].double()
    for row, column in [(32, 32), (32 + OFFSET[0], 32 + OFFSET[1]), (10, 50), (40, 21)]:
        l_, m_ = -(column - 32) * cell, (row - 32) * cell
        direct = (weight * (stokes * np.exp(2j * np.pi * (u * l_ + v * m_))).real).sum() / weight.sum()
        assert abs(dirty[row, column].item() - direct) < 1e-4 * dirty.abs().max().item(), (row, column)
    psf = images["psf"][0, 0]
    assert psf[32, 32].item() == pytest.approx(1.0, abs=1e-6) and psf.max().item() <= 1 + 1e-6
    assert dirty[32, 32].item() == pytest.approx(1.0, abs=0.05)  # the 1 Jy source, in Jy/beam (CORRECTED_DATA)


def test_a_source_peaks_at_the_pixel_and_sky_position_its_offset_gives_read_through_the_fits_wcs(
    ranks, measurement_set, tmp_path
):
    from astropy.io import fits
    from astropy.wcs import WCS

    ranks(2).run(images_of, str(measurement_set), "uniform", 0.0, 2, str(tmp_path))
    ms = open_measurement_set(measurement_set)
    ra0, dec0 = ms.phase_centre_rad
    expected = sources(ra0, dec0)[1]
    with fits.open(tmp_path / "dirty.fits") as hdus:
        header, dirty = hdus[0].header, hdus[0].data[0, 0]
    assert header["BUNIT"] == "JY/BEAM" and header["CTYPE1"] == "RA---SIN" and header["CRVAL3"] > 1e9
    masked = dirty.copy()
    masked[22:43, 22:43] = 0  # the central source
    row, column = np.unravel_index(np.argmax(masked), masked.shape)
    assert (row, column) == (32 + OFFSET[0], 32 + OFFSET[1])
    ra, dec = WCS(header).celestial.pixel_to_world_values(column, row)
    assert math.isclose(math.radians(float(dec)), expected[1], abs_tol=0.1 * CELL_ARCSEC * ARCSEC)
    d_ra = (math.radians(float(ra)) - expected[0]) * math.cos(expected[1])
    assert abs(d_ra) < 0.1 * CELL_ARCSEC * ARCSEC
    for name, unit in (("psf", "JY/BEAM"), ("reconstruction", "JY/PIXEL")):
        assert fits.getheader(tmp_path / f"{name}.fits")["BUNIT"] == unit
    assert fits.getdata(tmp_path / "psf.fits")[0, 0, 32, 32] == pytest.approx(1.0, abs=1e-6)


def test_briggs_weighting_is_natural_at_plus_two_and_uniform_at_minus_two():
    g = torch.Generator().manual_seed(0)
    omega = torch.cat([torch.randn(2, 3000, generator=g) * 0.4, torch.rand(2, 300, generator=g) * 5 - 2.5], dim=1)
    data = torch.rand(omega.shape[1], generator=g, dtype=torch.float64) + 0.5
    grid = weight_grid(omega, data, 32)

    def normalised(kind: str, robust: float = 0.0) -> torch.Tensor:
        w = imaging_weights(kind, omega, data, grid, robust)
        return w / w.mean()

    natural, uniform = normalised("natural"), normalised("uniform")
    # uniform: every sampled cell (each sample and its Hermitian twin) sums to the same weight
    per_cell = weight_grid(omega, imaging_weights("uniform", omega, data, grid), 32)
    assert torch.allclose(per_cell[per_cell > 0], torch.ones(()).double(), rtol=1e-9)
    assert ((normalised("briggs", 2.0) - natural).abs() / natural).max() < 0.02
    assert ((normalised("briggs", -2.0) - uniform).abs() / uniform).max() < 0.02
    middle = normalised("briggs", 0.0)
    assert ((middle - natural).abs() / natural).max() > 0.1 and ((middle - uniform).abs() / uniform).max() > 0.1
    with pytest.raises(ValueError, match="robust=3"):
        imaging_weights("briggs", omega, data, grid, 3)


@pytest.mark.parametrize("weighting, robust", [("briggs", 0.5), ("natural", 0.0)])
def test_weights_images_and_reconstruction_are_the_same_at_one_two_and_three_ranks(
    ranks, measurement_set, weighting, robust
):
    runs = {n: ranks(n).run(images_of, str(measurement_set), weighting, robust, 3, None) for n in (1, 2, 3)}
    images, x0, x, weights, unit, noise, residuals = runs[1][0]
    assert len(weights) == 3 and all(0 < r < 1 for r in residuals)
    for n in (2, 3):
        seen = {}
        for other_images, other_x0, other_x, other_weights, other_unit, other_noise, _ in runs[n]:
            seen.update(other_weights)
            for name, image in images.items():
                assert torch.allclose(other_images[name], image, rtol=1e-5, atol=1e-6 * image.abs().max()), name
            assert torch.allclose(other_x, x, rtol=1e-4, atol=1e-5 * x.abs().max())
            assert torch.allclose(other_x0, x0, rtol=1e-5, atol=1e-6 * x0.abs().max())
            assert other_unit == pytest.approx(unit, rel=1e-5) and other_noise == pytest.approx(noise, rel=1e-5)
        assert sorted(seen) == [0, 1, 2]  # every operator on one rank, each built from the blocks it read
        for i, w in weights.items():
            assert torch.allclose(seen[i], w, rtol=1e-6), i


def test_a_rank_without_operators_reaches_every_step_and_agrees_with_one_process(ranks, measurement_set):
    [(images, _, x, *_)] = ranks(1).run(images_of, str(measurement_set), "briggs", 0.5, 2, None, 2)
    runs = ranks(3).run(images_of, str(measurement_set), "briggs", 0.5, 2, None, 2)
    assert sorted(len(r[3]) for r in runs) == [0, 1, 1]  # 2 operators on 3 ranks: one rank holds none
    for other_images, _, other_x, *_ in runs:
        assert torch.allclose(other_images["dirty"], images["dirty"], rtol=1e-5, atol=1e-6)
        assert torch.allclose(other_x, x, rtol=1e-4, atol=1e-5 * x.abs().max())


def plan_of_a_stripe(ctx, path: str):
    """On every rank: the plan read with the ranks' context, and the main-table rows of each scalar column read."""
    import casacore.tables

    reads: dict[str, list[tuple[int, int]]] = {}
    original = casacore.tables.table.getcol

    def recording(table, column, startrow=0, nrow=-1, rowincr=1):
        if column in ("TIME", "FIELD_ID", "DATA_DESC_ID", "ANTENNA1", "ANTENNA2"):
            reads.setdefault(column, []).append((startrow, table.nrows() if nrow < 0 else startrow + nrow))
        return original(table, column, startrow, nrow, rowincr)

    casacore.tables.table.getcol = recording
    try:
        ms = open_measurement_set(path, "CORRECTED_DATA", spw=[0, 1], time_range_s=[0, 3e3], ctx=ctx)
    finally:
        casacore.tables.table.getcol = original
    return ms, reads


def test_each_rank_reads_the_plan_columns_of_its_stripe_alone_and_holds_the_plan_of_one_process(ranks, measurement_set):
    whole = open_measurement_set(measurement_set, "CORRECTED_DATA", spw=[0, 1], time_range_s=[0, 3e3])
    with ct.table(str(measurement_set), ack=False) as t:
        num_rows = t.nrows()
    runs = ranks(3).run(plan_of_a_stripe, str(measurement_set))
    for rank, (ms, reads) in enumerate(runs):
        stripe = (rank * num_rows // 3, (rank + 1) * num_rows // 3)
        assert sorted(reads) == ["ANTENNA1", "ANTENNA2", "DATA_DESC_ID", "FIELD_ID", "TIME"]
        assert all(spans == [stripe] for spans in reads.values()), (rank, reads)
        for name in ("rows", "times", "row_window", "frequencies_hz"):
            assert np.array_equal(getattr(ms, name), getattr(whole, name)), name
        assert ms.longest_baseline_m == whole.longest_baseline_m and ms.hands == whole.hands
    assert 0 < len(whole.rows) < num_rows  # the time range cut some rows


def plan_error(ctx, path: str, missing: str) -> str:
    """The error every rank gets when rank 1 alone cannot open the set."""
    try:
        open_measurement_set(missing if ctx.rank == 1 else path, ctx=ctx)
    except Exception as error:  # noqa: BLE001 - the message is the result
        return f"{type(error).__name__}: {error}"
    return "no error"


def test_a_set_one_rank_cannot_open_fails_every_rank_naming_it(ranks, measurement_set, tmp_path):
    messages = ranks(3).run(plan_error, str(measurement_set), str(tmp_path / "absent.ms"), timeout=60)
    assert messages[1].startswith("ValueError: ms=") and "not a Measurement Set" in messages[1]
    for message in (messages[0], messages[2]):  # the others name the rank and its cause
        assert "rank 1" in message and "not a Measurement Set" in message, message


def test_rows_scattered_in_many_runs_read_through_a_row_selection_the_same(measurement_set, monkeypatch):
    import distinv.bench.radio.measurement_set as module

    ms = open_measurement_set(measurement_set, "CORRECTED_DATA", spw=1)  # every other run of rows
    runs = read_block(ms, np.arange(len(ms.rows)))
    monkeypatch.setattr(module, "MAX_RUNS", 0)
    selected = read_block(ms, np.arange(len(ms.rows)))
    for name in ("uvw_m", "visibilities", "weights"):
        assert torch.equal(getattr(selected, name), getattr(runs, name)), name


def test_auto_correlations_in_the_set_are_left_out(measurement_set, tmp_path):
    import shutil

    copy = tmp_path / "with_autos.ms"
    shutil.copytree(measurement_set, copy)
    with ct.table(str(copy), readonly=False, ack=False) as t:
        first = t.nrows()
        t.addrows(12)  # each antenna's total power at the first integration: uv = 0, huge amplitudes
        for name in ("TIME", "FIELD_ID", "DATA_DESC_ID", "WEIGHT", "SIGMA", "WEIGHT_SPECTRUM"):
            t.putcol(name, t.getcol(name, 0, 12), startrow=first, nrow=12)
        t.putcol("ANTENNA1", np.arange(12, dtype=np.int32), startrow=first)
        t.putcol("ANTENNA2", np.arange(12, dtype=np.int32), startrow=first)
        t.putcol("UVW", np.zeros((12, 3)), startrow=first)
        t.putcol("CORRECTED_DATA", np.full((12, 4, 2), 1e4, dtype=np.complex64), startrow=first)
        t.putcol("FLAG", np.zeros((12, 4, 2), dtype=bool), startrow=first)
        t.putcol("FLAG_ROW", np.zeros(12, dtype=bool), startrow=first)
    plain = open_measurement_set(measurement_set, "CORRECTED_DATA", spw=[0, 1])
    with_autos = open_measurement_set(copy, "CORRECTED_DATA", spw=[0, 1])
    assert np.array_equal(with_autos.rows, plain.rows) and with_autos.longest_baseline_m == plain.longest_baseline_m
    assert read_block(with_autos, np.arange(len(with_autos.rows))).visibilities.abs().max() < 2


def test_rows_naming_an_antenna_the_set_does_not_have_are_a_clear_error(measurement_set, tmp_path):
    import shutil

    copy = tmp_path / "bad_antenna.ms"
    shutil.copytree(measurement_set, copy)
    with ct.table(str(copy), readonly=False, ack=False) as t:
        t.putcell("ANTENNA2", 5, 40)  # the ANTENNA table has 12 rows
    with pytest.raises(ValueError, match="ANTENNA1/ANTENNA2 name antennas beyond its ANTENNA table's 12"):
        open_measurement_set(copy, "CORRECTED_DATA", spw=[0, 1])


def test_fits_images_written_in_bands_by_two_ranks_read_back_whole(ranks, tmp_path):
    ranks(2).run(write_banded, str(tmp_path))
    from distinv.bench.radio.fits_images import read_fits_image

    image, geometry, unit = read_fits_image(tmp_path / "bands.fits")
    assert torch.equal(image, torch.arange(12 * 10, dtype=torch.float32).reshape(1, 1, 12, 10) * 2)
    assert unit == "JY/PIXEL" and geometry.shape == (12, 10) and geometry.cell_rad == pytest.approx(ARCSEC)
    assert not list(tmp_path.glob(".*partial"))


def test_fits_skies_of_any_axis_direction_or_a_cd_matrix_read_north_up_east_left_about_the_same_centre(tmp_path):
    from astropy.io import fits

    from distinv.bench.radio.fits_images import read_fits_image, write_fits_image
    from distinv.bench.radio.geometry import ImageGeometry
    from distinv.comm.context import DistributedContext

    values = torch.arange(12 * 10, dtype=torch.float32).reshape(1, 1, 12, 10)  # even sides: centres are off-centre
    geometry = ImageGeometry((12, 10), 3 * ARCSEC, math.radians(350.0), math.radians(-30.0), 1.4e9)
    with DistributedContext(env={}) as ctx:
        write_fits_image(tmp_path / "standard.fits", values, geometry, "JY/PIXEL", ctx)
    image, read, _ = read_fits_image(tmp_path / "standard.fits")
    assert torch.equal(image, values)
    assert (read.ra_rad, read.dec_rad) == pytest.approx((geometry.ra_rad, geometry.dec_rad), abs=1e-9)
    header = fits.getheader(tmp_path / "standard.fits")
    plane = values[0, 0].numpy()
    celestial = {k: header[k] for k in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2")}
    cell = header["CDELT2"]

    def written(name: str, data: np.ndarray, **cards) -> Path:
        path = tmp_path / name
        fits.PrimaryHDU(np.ascontiguousarray(data), header=fits.Header({**celestial, **cards})).writeto(path)
        return path

    # RA increasing with the column, declination decreasing with the row: the same sky stored the other way round
    turned = written("turned.fits", plane[::-1, ::-1], CDELT1=cell, CDELT2=-cell, CRPIX1=11 - header["CRPIX1"],
                     CRPIX2=13 - header["CRPIX2"])  # fmt: skip
    with_cd = written("cd.fits", plane, CD1_1=-cell, CD1_2=0.0, CD2_1=0.0, CD2_2=cell)
    for path in (turned, with_cd):
        image, read, _ = read_fits_image(path)
        assert torch.equal(image, values), path.name
        assert (read.ra_rad, read.dec_rad) == pytest.approx((geometry.ra_rad, geometry.dec_rad), abs=1e-9)
        assert read.cell_rad == pytest.approx(geometry.cell_rad)
    rotated = written("rotated.fits", plane, CD1_1=-cell, CD1_2=0.1 * cell, CD2_1=0.1 * cell, CD2_2=cell)
    with pytest.raises(ValueError, match="reference=.*rotated grid"):
        read_fits_image(rotated, "reference")


def write_banded(ctx, folder: str):
    from distinv.bench.radio.fits_images import write_fits_image
    from distinv.bench.radio.geometry import ImageGeometry
    from distinv.placements.row_bands import shard_rows

    whole = torch.arange(12 * 10, dtype=torch.float32).reshape(1, 1, 12, 10)
    bands = shard_rows(ctx, whole, [0, 5, 12] if ctx.world_size == 2 else None)
    geometry = ImageGeometry((12, 10), ARCSEC, 1.0, -0.5, 1.4e9)
    write_fits_image(Path(folder) / "bands.fits", bands, geometry, "JY/PIXEL", ctx, scale=2.0)


def test_a_fits_sky_model_is_the_ground_truth_observed_at_its_own_wcs(tmp_path):
    from distinv.bench.radio.fits_images import write_fits_image
    from distinv.bench.radio.geometry import ImageGeometry
    from distinv.comm.context import DistributedContext
    from distinv.images import radio_sky

    sky = radio_sky(48, seed=4) * 0.02  # Jy/pixel
    geometry = ImageGeometry((48, 48), 2 * ARCSEC, math.radians(30.0), math.radians(-60.0), 1.4e9)
    with DistributedContext(env={}) as ctx:
        write_fits_image(tmp_path / "sky.fits", sky, geometry, "JY/PIXEL", ctx)
    problem = build("radio", size=None, sky=str(tmp_path / "sky.fits"), num_antennas=10, num_times=8)
    assert torch.allclose(problem.ground_truth, sky / sky.max(), atol=1e-6)
    omega = problem.shared["omega"]
    assert omega.abs().max().item() == pytest.approx(0.5 * math.pi, rel=1e-4)  # uv_extent of the cells' Nyquist
    with pytest.raises(ValueError, match="size=48 or no size"):
        build("radio", size=64, sky=str(tmp_path / "sky.fits"))


@pytest.fixture(scope="module")
def observed_sky(tmp_path_factory) -> tuple[Path, Path]:
    """A 32x32 FITS sky model (Jy/pixel) and a noisy observation of it written as a Measurement Set."""
    from distinv.bench.radio.fits_images import write_fits_image
    from distinv.bench.radio.geometry import ImageGeometry, cell_from_baseline
    from distinv.comm.context import DistributedContext
    from distinv.images import radio_sky

    folder = tmp_path_factory.mktemp("observed")
    # PHASE_DIR at RA -15 degrees, as some pipelines store it; the FITS model's RA reads 345: the same centre
    obs = observation(num_antennas=10, num_times=8, num_channels=2, max_radius_m=800, ra_deg=-15.0, seed=2)
    longest = float(torch.cdist(obs.antennas_enu_m, obs.antennas_enu_m).max())
    cell = cell_from_baseline(longest, float(obs.frequencies_hz.max()), 0.5)
    geometry = ImageGeometry((32, 32), cell, obs.ra_rad, obs.dec_rad, 1.4e9)
    image = radio_sky(32, seed=3) * 0.05
    with DistributedContext(env={}) as ctx:
        sky = write_fits_image(folder / "sky.fits", image, geometry, "JY/PIXEL", ctx)
    ms = simulate_measurement_set(folder / "sky.ms", obs, Sky(image=image, geometry=geometry), noise_jy=0.01)
    return ms, sky


def test_preview_of_a_measurement_set_writes_dirty_and_psf_as_png_and_fits_with_no_ground_truth(
    tmp_path, capsys, observed_sky
):
    from astropy.io import fits
    from PIL import Image

    from distinv.cli import main

    ms, _ = observed_sky
    assert main(["preview", "radio", "-o", str(tmp_path), "--param", f"ms={ms}", "--size", "48"]) == 0
    assert "no ground truth" in capsys.readouterr().out
    assert not (tmp_path / "ground_truth.png").exists()
    for name in ("measurement", "initial", "dirty", "psf"):
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.size == (48, 48) or name == "measurement"
            assert picture.getextrema() != (0, 0), name
    with fits.open(tmp_path / "psf.fits") as hdus:
        assert hdus[0].data.shape == (1, 1, 48, 48) and hdus[0].data[0, 0, 24, 24] == pytest.approx(1.0, abs=1e-6)
    with fits.open(tmp_path / "dirty.fits") as hdus:
        assert hdus[0].header["BUNIT"] == "JY/BEAM" and hdus[0].header["CTYPE2"] == "DEC--SIN"
    assert main(["preview", "radio", "-o", str(tmp_path / "own"), "--param", f"ms={ms}",
                 "--param", "cell_arcsec=10.0"]) == 0  # fmt: skip
    header = fits.getheader(tmp_path / "own" / "dirty.fits")
    assert header["CDELT2"] == pytest.approx(10.0 / 3600) and header["NAXIS1"] % 16 == 0  # the size from the set


def test_an_observation_runs_end_to_end_scored_by_its_residual_or_its_reference_with_fits_results(
    tmp_path, observed_sky
):
    import yaml
    from astropy.io import fits

    from distinv.bench.config import load_config
    from distinv.bench.report import write_report
    from distinv.bench.results import read_rows, summarise
    from distinv.bench.runner import run_config

    ms, sky = observed_sky
    params = {"ms": str(ms), "num_operators": 4}
    raw = {
        "name": "observed",
        "output": str(tmp_path / "results"),
        "world_sizes": [2],
        "engines": ["distinv"],
        "timeout_s": 300,
        "oversubscribe": True,
        "problems": [
            {"name": "radio", "sizes": [32], "params": params},
            {"name": "radio", "sizes": [32], "params": {**params, "reference": str(sky), "weighting": "briggs"}},
        ],
        "denoiser": {"model": "auto"},  # the shipped radio DRUNet
        "solver": {"algorithm": "pgd", "iterations": 3, "step": None, "sigma": [0.03, 0.01]},
    }
    (tmp_path / "observed.yml").write_text(yaml.safe_dump(raw))
    lines: list[str] = []
    assert run_config(load_config(tmp_path / "observed.yml"), out=lines.append, live=False) == 0, "\n".join(lines)
    results = tmp_path / "results"
    rows = [r for r in read_rows(results) if r.get("status") == "ok" and r["rank"] == 0]
    scored = [r for r in rows if r["psnr"] is not None]
    unscored = [r for r in rows if r["psnr"] is None]
    assert len(scored) == 3 and len(unscored) == 3, rows  # an iteration each
    assert all(0 < r["measurement_residual"] < 1 for r in unscored)
    assert scored[-1]["psnr"] > 20
    summary = summarise(results)
    assert len(summary) == 2
    page = write_report(results).read_text()
    assert "data residual" in page
    for e in summary:
        folder = results / "reconstructions" / e["run_key"]
        with fits.open(folder / "reconstruction.fits") as hdus:
            assert hdus[0].header["BUNIT"] == "JY/PIXEL" and hdus[0].data.shape == (1, 1, 32, 32)
            assert np.isfinite(hdus[0].data).all() and hdus[0].data.max() > 0
        assert (folder / "dirty.fits").is_file() and (folder / "psf.fits").is_file()
    with_reference = next(e for e in summary if e["psnr"] is not None)
    reconstruction = fits.getdata(results / "reconstructions" / with_reference["run_key"] / "reconstruction.fits")
    truth = fits.getdata(sky).astype(np.float64)  # Jy/pixel both: the flux unit undone on the way out
    peak = truth.max()
    error = np.clip(reconstruction / peak, 0, 1) - truth / peak
    assert 10 * math.log10(1 / (error**2).mean()) == pytest.approx(scored[-1]["psnr"], abs=0.01)
