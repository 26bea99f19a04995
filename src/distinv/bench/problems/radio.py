"""Radio interferometric imaging: a synthetic sky (or a FITS sky model, ``sky: path``) seen by a core-plus-spiral-arms
array over an earth rotation and several frequency channels; the visibilities split into K blocks by time or by
channel, one weighted NUFFT operator each, with complex Gaussian noise. With ``ms: path``, an observation's
visibilities instead (:mod:`distinv.bench.problems.radio_observed`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from distinv.bench.config import in_range, number_hint
from distinv.bench.nufft import BACKENDS, radio_operator
from distinv.bench.problems.base import Problem, check_number, check_seed, check_size, weighted_sum_of_terms
from distinv.bench.radio.weighting import check_weighting, imaging_weights, weight_grid
from distinv.bench.uv_coverage import SPEED_OF_LIGHT, antenna_layout, baselines, earth_rotation_uv
from distinv.images import radio_sky

if TYPE_CHECKING:
    from distinv.comm.collectives import Collectives

MIN_SIZE = 16
SPLITS = ("time", "channel")
DEFAULT_SIZE = 128  # pixels per side of a synthetic sky when neither size nor a FITS sky gives it
DEFAULT_NOISE = 1e-3  # per visibility, in the operators' units, of a simulated observation
# the keys that select an observation's visibilities (open_measurement_set's), and their defaults
SELECTION = {"data_column": "DATA", "field": 0, "spw": 0, "channels": None, "time_range_s": None, "weights": "auto"}
# the keys that describe a synthetic observation: an observation's own array and schedule replace them
SYNTHETIC = {
    "num_antennas": 32, "num_times": 32, "num_channels": 4, "duration_hours": 8.0, "frequency_hz": 1.4e9,
    "bandwidth_hz": 0.2e9, "latitude_deg": -30.7, "declination_deg": -40.0, "dynamic_range": 1e3,
}  # fmt: skip


def block_bounds(length: int, num_blocks: int) -> list[tuple[int, int]]:
    """``num_blocks`` contiguous ranges covering ``range(length)``, sizes differing by at most one."""
    edges = [round(k * length / num_blocks) for k in range(num_blocks + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _centred(count: int) -> torch.Tensor:
    """``count`` evenly spaced offsets spanning [-0.5, 0.5] (float64), or ``[0]`` for one."""
    return torch.linspace(-0.5, 0.5, count, dtype=torch.float64) if count > 1 else torch.zeros(1, dtype=torch.float64)


def _nufft(index: int, device: torch.device, shared: dict):
    start, stop = shared["blocks"][index]
    axis = 0 if shared["split"] == "time" else 1  # of the (T, C, B) visibility grid
    omega = shared["omega"].narrow(axis + 1, start, stop - start).reshape(2, -1)
    if shared["weight"] is None:  # natural weighting: every visibility counts the same, no multiply
        return radio_operator(shared["size_hw"], omega, None, backend=shared["backend"], device=device)
    # The operator is sqrt(w) * NUFFT, so A^T y is the w-weighted dirty image and ||A x - y||^2 the w-weighted
    # misfit; the measured visibilities carry the same factor on their noise.
    root_w = shared["weight"].narrow(axis, start, stop - start).reshape(-1).sqrt()
    op = radio_operator(shared["size_hw"], omega, root_w, backend=shared["backend"], device=device)
    op.noise_scale = root_w.to(device)
    return op


def dirty_image(problem: Problem, physics, y_local) -> torch.Tensor:
    """The dirty image ``g = A^T y`` scaled by ``alpha = ||g||^2 / ||A g||^2``, the scale that best fits the data
    along ``g`` (one steepest-descent step from zero). Unscaled, the dirty image is in flux per beam: extended
    emission shows tens of times brighter than in the sky's flux per pixel."""
    like = problem.ground_truth.to(physics.ctx.device)
    terms = [op.A_adjoint(y) for op, y in zip(physics.local_physics, y_local, strict=True)]
    g = weighted_sum_of_terms(physics, terms, like)
    residual_norms = torch.zeros((), dtype=torch.float64, device=like.device)
    for op in physics.local_physics:
        residual_norms += op.A(g).abs().pow(2).sum().double()
    alpha = g.double().pow(2).sum() / physics.ctx.all_reduce(residual_norms)
    return g * alpha.to(g.dtype)


def signal_shape(size: int | None, **params: Any) -> tuple[int, ...]:
    """The sky's shape ``(1, 1, N, N)`` without building it: ``size``; a FITS sky's or an observation's own (read
    from the FITS header, or the set's plan) when ``sky`` or ``ms`` is given."""
    if params.get("ms"):
        from distinv.bench.problems.radio_observed import signal_shape as observed_shape

        selection = {k: params.get(k, v) for k, v in SELECTION.items()}
        return observed_shape(size, params["ms"], params.get("cell_arcsec"), params.get("uv_extent", 0.5),
                              params.get("reference"), selection)  # fmt: skip
    if params.get("sky"):
        return tuple(_fits_sky(params["sky"], size)[0].shape)
    return (1, 1, size, size)


def _fits_sky(path: str, size: int | None):
    """A FITS sky model over its peak, and its geometry; ``size``, if given, must be its side.

    :raises ValueError: for a file that is not one square sky image of positive peak, or another size.
    """
    from distinv.bench.radio.fits_images import read_fits_image

    image, geometry, _ = read_fits_image(path)
    height, width = geometry.shape
    if height != width or height < MIN_SIZE or size is not None and size != height:
        raise ValueError(
            f"sky={path!r}: a {height}x{width} image; give a square sky of at least {MIN_SIZE} pixels, and "
            f"size={height} or no size (the sky sets it)."
        )
    peak = float(image.max())
    if not peak > 0:
        raise ValueError(f"sky={path!r}: its peak is {peak}; give a sky with positive flux.")
    return image.clamp(min=0) / peak, geometry


def build(
    size: int | None = None,
    num_operators: int = 4,
    split: str = "time",
    weighting: str = "natural",
    num_antennas: int = 32,
    num_times: int = 32,
    num_channels: int = 4,
    duration_hours: float = 8.0,
    frequency_hz: float = 1.4e9,
    bandwidth_hz: float = 0.2e9,
    latitude_deg: float = -30.7,
    declination_deg: float = -40.0,
    uv_extent: float = 0.5,
    dynamic_range: float = 1e3,
    noise_sigma: float | None = None,
    backend: str = "auto",
    seed: int = 0,
    robust: float = 0.0,
    sky: str | None = None,
    ms: str | None = None,
    data_column: str = "DATA",
    field: int = 0,
    spw: int | list[int] = 0,
    channels: list[int] | None = None,
    time_range_s: list[float] | None = None,
    weights: str = "auto",
    cell_arcsec: float | None = None,
    reference: str | None = None,
    check_only: bool = False,
    ctx: Collectives | None = None,
) -> Problem | None:
    """Visibilities: ``num_antennas (num_antennas - 1) / 2`` baselines x ``num_times`` x ``num_channels``.

    :param size: the image's pixels per side (default: a FITS sky's or a Measurement Set's own, else 128).

    :param split: ``"time"`` (K contiguous time ranges) or ``"channel"`` (K contiguous channel ranges).
    :param weighting: ``"natural"``, ``"uniform"`` or ``"briggs"`` with ``robust`` in [-2, 2]
        (:mod:`distinv.bench.radio.weighting`, on the image's uv cells).
    :param sky: a FITS sky model (:func:`~distinv.bench.radio.fits_images.read_fits_image`) as the ground truth
        instead of a synthetic sky: its size, cells and centre (the declination observed) are the image's, and
        the array is scaled so its longest baseline reaches ``uv_extent`` of the cells' Nyquist limit.
    :param ms: a Measurement Set: its visibilities instead of a simulation (:func:`~distinv.bench.problems.
        radio_observed.build_observed`; ``data_column``, ``field``, ``spw``, ``channels``, ``time_range_s`` and
        ``weights`` select them, ``cell_arcsec`` and ``size`` set the image (default: from the set), ``reference``
        is a FITS image to score against; the synthetic array's keys do not apply, and ``noise_sigma`` defaults
        to the noise the data weights imply).
    :param ctx: the ranks building the problem together (with ``ms``: each reads a stripe of the set's plan
        columns, :func:`~distinv.bench.radio.measurement_set.open_measurement_set`); default this process alone.
    :param duration_hours: the hour angles span ``[-duration/2, duration/2]`` around transit.
    :param frequency_hz, bandwidth_hz: channels evenly spread over ``frequency +- bandwidth/2``.
    :param uv_extent: the longest baseline reaches ``uv_extent * pi`` radians per pixel (1: the pixel size is
        the Nyquist limit of the longest baseline; 0.5: two pixels per finest fringe).
    :param noise_sigma: standard deviation of the complex noise per visibility, in the operator's units (default
        1e-3).
    :param backend: the NUFFT: ``"auto"``, ``"finufft"`` (CPU) or ``"torchkbnufft"`` (deepinv's operator).
    """
    if size is not None:
        check_size("radio", size, MIN_SIZE)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {SPLITS}.")
    check_weighting(weighting, robust)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {BACKENDS}.")
    check_number("num_operators", num_operators, 1, whole=True)
    if not in_range(uv_extent, 0, 1, above=True):
        raise ValueError(
            f"uv_extent={uv_extent!r}: give a number in (0, 1] (1 is the Nyquist limit){number_hint(uv_extent)}."
        )
    given = dict(locals())
    if ms is not None:
        return _observed(given)
    _refuse_observation_keys(given)
    noise_sigma = DEFAULT_NOISE if noise_sigma is None else noise_sigma
    if size is None and sky is None:
        size = DEFAULT_SIZE
    check_number("num_antennas", num_antennas, 2, whole=True)
    check_number("num_times", num_times, 1, whole=True)
    check_number("num_channels", num_channels, 1, whole=True)
    check_number("duration_hours", duration_hours, 0, above=True)
    check_number("frequency_hz", frequency_hz, 0, above=True)
    check_number("bandwidth_hz", bandwidth_hz, 0)
    check_number("latitude_deg", latitude_deg, -90, 90)
    check_number("declination_deg", declination_deg, -90, 90)
    check_number("dynamic_range", dynamic_range, 1)
    check_number("noise_sigma", noise_sigma, 0)
    check_seed(seed)
    if bandwidth_hz >= 2 * frequency_hz:
        raise ValueError(f"bandwidth_hz={bandwidth_hz}: it must be below 2 * frequency_hz={2 * frequency_hz}.")
    num_blocks = num_times if split == "time" else num_channels
    if num_operators > num_blocks:
        raise ValueError(
            f"num_operators={num_operators} is larger than num_{split}s={num_blocks}: splitting by {split}, every "
            f"operator needs at least one {split} step; lower num_operators or raise num_{split}s."
        )
    truth, geometry = (None, None) if sky is None else _fits_sky(sky, size)
    if check_only:
        return None
    if geometry is not None:
        size = geometry.shape[0]
        declination_deg = math.degrees(geometry.dec_rad)

    hour_angles = _centred(num_times) * duration_hours * (math.pi / 12)
    wavelengths = SPEED_OF_LIGHT / (frequency_hz + bandwidth_hz * _centred(num_channels))
    layout = antenna_layout(num_antennas, seed=seed)
    uv = earth_rotation_uv(baselines(layout), hour_angles, wavelengths, latitude_deg, declination_deg)
    if geometry is None:
        omega = uv / uv.abs().max() * (math.pi * uv_extent)  # (2, T, C, B): (u, v) in radians per pixel
        omega = torch.stack([omega[1], omega[0]]).float()  # rows follow v (north), columns u (east)
    else:  # the sky's own cells: l east, columns west (geometry.omega); the array scaled to them
        scaled = uv / uv.abs().max() * (uv_extent / (2 * geometry.cell_rad))
        omega = geometry.omega(scaled[0].reshape(-1), scaled[1].reshape(-1)).reshape(2, *uv.shape[1:])
    weight = None  # natural
    if weighting != "natural":  # every visibility is on every rank here: the grid needs no sum over ranks
        samples = omega.reshape(2, -1)
        ones = torch.ones(samples.shape[1], dtype=torch.float64)
        w = imaging_weights(weighting, samples, ones, weight_grid(samples, ones, size), robust)
        weight = (w / w.mean()).float().reshape(omega.shape[1:])

    blocks = block_bounds(num_blocks, num_operators)
    per_step = omega[0].numel() // num_blocks
    return Problem(
        name="radio",
        ground_truth=radio_sky(size, dynamic_range=dynamic_range, seed=seed) if truth is None else truth,
        num_operators=num_operators,
        factory=_nufft,
        shared={
            "size_hw": (size, size),
            "omega": omega,
            "weight": weight,
            "split": split,
            "blocks": blocks,
            "backend": backend,
        },
        noise_sigma=noise_sigma,
        seed=seed,
        init_name="dirty image, scaled to fit the data",
        init=dirty_image,
        operator_costs=[float((stop - start) * per_step) for start, stop in blocks],
        info={"visibilities": omega[0].numel(), "baselines": num_antennas * (num_antennas - 1) // 2},
    )


def _refuse_observation_keys(given: dict) -> None:
    """:raises ValueError: for a key that selects an observation (or images one) given without ``ms``."""
    for key, default in {**SELECTION, "cell_arcsec": None, "reference": None}.items():
        if given[key] != default:
            raise ValueError(f"{key}={given[key]!r} selects or images a Measurement Set: give ms=PATH with it.")


def _observed(given: dict) -> Problem | None:
    """The problem of the Measurement Set ``given["ms"]``; the synthetic array's keys refused."""
    from distinv.bench.problems.radio_observed import build_observed

    for key, default in {**SYNTHETIC, "sky": None}.items():
        if given[key] != default:
            raise ValueError(
                f"{key}={given[key]!r}: the Measurement Set gives the array, schedule and sky; leave {key} out."
            )
    noise = given["noise_sigma"]
    return build_observed(
        given["ms"],
        given["size"],
        given["num_operators"],
        given["split"],
        given["weighting"],
        given["robust"],
        given["backend"],
        noise,  # None: the noise the set's weights imply
        given["seed"],
        given["uv_extent"],
        {key: given[key] for key in SELECTION},
        cell_arcsec=given["cell_arcsec"],
        reference=given["reference"],
        check_only=given["check_only"],
        ctx=given["ctx"],
    )
