"""Radio interferometric imaging: a synthetic sky seen by a core-plus-spiral-arms array over an earth rotation
and several frequency channels; the visibilities split into K blocks by time or by channel, one weighted NUFFT
operator each, with complex Gaussian noise."""

from __future__ import annotations

import math
from typing import Any

import torch

from distinv.bench.config import in_range, number_hint
from distinv.bench.nufft import BACKENDS, radio_operator
from distinv.bench.problems.base import Problem, check_number, check_seed, check_size, weighted_sum_of_terms
from distinv.bench.uv_coverage import SPEED_OF_LIGHT, antenna_layout, baselines, earth_rotation_uv, uniform_weights
from distinv.images import radio_sky

MIN_SIZE = 16
SPLITS = ("time", "channel")
WEIGHTINGS = ("natural", "uniform")


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


def signal_shape(size: int, **params: Any) -> tuple[int, ...]:
    """The sky's shape ``(1, 1, size, size)``, without building it (``params``: the problem's other parameters,
    which do not change it)."""
    return (1, 1, size, size)


def build(
    size: int = 128,
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
    noise_sigma: float = 1e-3,
    backend: str = "auto",
    seed: int = 0,
    check_only: bool = False,
) -> Problem | None:
    """Visibilities: ``num_antennas (num_antennas - 1) / 2`` baselines x ``num_times`` x ``num_channels``.

    :param split: ``"time"`` (K contiguous time ranges) or ``"channel"`` (K contiguous channel ranges).
    :param weighting: ``"natural"`` (every visibility counts the same) or ``"uniform"`` (by uv density).
    :param duration_hours: the hour angles span ``[-duration/2, duration/2]`` around transit.
    :param frequency_hz, bandwidth_hz: channels evenly spread over ``frequency +- bandwidth/2``.
    :param uv_extent: the longest baseline reaches ``uv_extent * pi`` radians per pixel (1: the pixel size is
        the Nyquist limit of the longest baseline; 0.5: two pixels per finest fringe).
    :param noise_sigma: standard deviation of the complex noise per visibility, in the operator's units.
    :param backend: the NUFFT: ``"auto"``, ``"finufft"`` (CPU) or ``"torchkbnufft"`` (deepinv's operator).
    """
    check_size("radio", size, MIN_SIZE)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {SPLITS}.")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}: choose one of {WEIGHTINGS}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {BACKENDS}.")
    check_number("num_operators", num_operators, 1, whole=True)
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
    if not in_range(uv_extent, 0, 1, above=True):
        raise ValueError(
            f"uv_extent={uv_extent!r}: give a number in (0, 1] (1 is the Nyquist limit){number_hint(uv_extent)}."
        )
    if bandwidth_hz >= 2 * frequency_hz:
        raise ValueError(f"bandwidth_hz={bandwidth_hz}: it must be below 2 * frequency_hz={2 * frequency_hz}.")
    num_blocks = num_times if split == "time" else num_channels
    if num_operators > num_blocks:
        raise ValueError(
            f"num_operators={num_operators} is larger than num_{split}s={num_blocks}: splitting by {split}, every "
            f"operator needs at least one {split} step; lower num_operators or raise num_{split}s."
        )
    if check_only:
        return None

    hour_angles = _centred(num_times) * duration_hours * (math.pi / 12)
    wavelengths = SPEED_OF_LIGHT / (frequency_hz + bandwidth_hz * _centred(num_channels))
    layout = antenna_layout(num_antennas, seed=seed)
    uv = earth_rotation_uv(baselines(layout), hour_angles, wavelengths, latitude_deg, declination_deg)
    omega = uv / uv.abs().max() * (math.pi * uv_extent)  # (2, T, C, B): (u, v) in radians per pixel
    omega = torch.stack([omega[1], omega[0]]).float()  # rows follow v (north), columns u (east)
    weight = None  # natural
    if weighting == "uniform":
        weight = uniform_weights(omega.reshape(2, -1), (2 * size, 2 * size)).reshape(omega.shape[1:])

    blocks = block_bounds(num_blocks, num_operators)
    per_step = omega[0].numel() // num_blocks
    return Problem(
        name="radio",
        ground_truth=radio_sky(size, dynamic_range=dynamic_range, seed=seed),
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
