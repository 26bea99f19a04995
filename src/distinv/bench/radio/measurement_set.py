"""Measurement Sets (casacore tables, the format every radio telescope's pipeline writes) read in parts, with
python-casacore (``pip install -e '.[radio]'``).

:func:`open_measurement_set` makes the plan every rank holds: the selection (a field, spectral windows, a
channel range, a time range), the selected rows' numbers and times, the channels' frequencies, the phase centre,
the correlations making Stokes I and the longest baseline. For that it reads the subtables and five scalar columns
of the main table (``TIME``, ``FIELD_ID``, ``DATA_DESC_ID``, ``ANTENNA1``, ``ANTENNA2``: 24 bytes a row), never a
visibility; given the ranks' context, each rank reads those columns of its stripe of the rows only and the
stripes' selections are all-gathered. :func:`read_block` then reads the big columns (``UVW``, the data column,
``FLAG``, ``FLAG_ROW``, the weights) of some rows and a channel range only: runs of consecutive rows with
``getcolslice(start row, count)`` cut to the channels, or, for rows scattered in many runs (spectral windows
interleaved row by row), a reference table of the rows (``selectrows``). A rank reads only its operators' rows and
channels: no rank reads the whole set.

Conventions (the Measurement Set definition, v2): ``UVW`` in metres, the baseline antenna 2 minus antenna 1 (see
:mod:`distinv.bench.radio.geometry` for the measurement equation); ``DATA`` ``(rows, channels, correlations)``;
Stokes I is ``(XX + YY) / 2`` or ``(RR + LL) / 2`` (or the ``I`` correlation itself), flagged where either hand or
the row is, with the weight of the mean (``4 / (1 / w_a + 1 / w_b)``). The data weights come from
``WEIGHT_SPECTRUM`` when the set has it, else ``WEIGHT`` (per row and correlation), or ``1 / SIGMA^2`` when asked
(``weights="sigma"``); flagged visibilities get weight 0. Auto-correlations (``ANTENNA1 == ANTENNA2``: a dish's
total power at uv = 0, which imagers skip) are never selected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from distinv.comm.collectives import Collectives

DATA_COLUMNS = ("DATA", "CORRECTED_DATA", "MODEL_DATA")
WEIGHT_SOURCES = ("auto", "weight_spectrum", "weight", "sigma", "none")
# CORR_TYPE codes (casacore's Stokes enumeration): the parallel hands Stokes I is made of
PARALLEL_HANDS = ((9, 12), (5, 8))  # (XX, YY), (RR, LL)
CORRELATION_NAMES = {1: "I", 5: "RR", 6: "RL", 7: "LR", 8: "LL", 9: "XX", 10: "XY", 11: "YX", 12: "YY"}
MAX_RUNS = 16  # more runs of consecutive rows than this: read through a reference table of the rows


def tables():
    """python-casacore's table module, or an error saying how to install it."""
    try:
        import casacore.tables as ct
    except ImportError as exc:  # pragma: no cover - the radio extra is installed by make setup
        raise ImportError("Measurement Sets need python-casacore: pip install -e '.[radio]'") from exc
    return ct


@dataclass(frozen=True)
class MeasurementSet:
    """A selection of a Measurement Set, planned (no visibility read): what every rank holds.

    ``rows`` are the selected main-table rows (sorted), ``times`` their ``TIME`` (s, MJD), ``row_window`` the index
    into ``frequencies_hz`` of each row's spectral window; ``frequencies_hz`` is ``(S, C)``: the selected channels
    of each selected window.
    """

    path: str
    column: str
    weights: str  # where the data weights come from: weight_spectrum, weight, sigma or none
    field: int
    windows: tuple[int, ...]
    channels: tuple[int, int]  # of each window, [first, stop)
    rows: np.ndarray  # (R,) int64
    times: np.ndarray  # (R,) float64
    row_window: np.ndarray  # (R,) int64 into windows
    frequencies_hz: np.ndarray  # (S, C) float64
    phase_centre_rad: tuple[float, float]  # (ra, dec)
    hands: tuple[int, ...]  # correlation indices averaged into Stokes I
    num_correlations: int
    longest_baseline_m: float
    dish_diameter_m: float  # the smallest dish of the selected antennas (0 if the set gives none)

    @property
    def num_channels(self) -> int:
        return self.channels[1] - self.channels[0]

    @property
    def highest_frequency_hz(self) -> float:
        return float(self.frequencies_hz.max())

    @property
    def time_steps(self) -> np.ndarray:
        """The selection's distinct times, sorted (s, MJD)."""
        return np.unique(self.times)


@dataclass
class VisibilityBlock:
    """Some rows' Stokes I visibilities in a channel range, as read: ``uvw_m`` ``(R, 3)`` float64 metres,
    ``frequencies_hz`` ``(R, C)`` float64, ``visibilities`` ``(R, C)`` complex64 (Jy), ``weights`` ``(R, C)``
    float64 (0 where flagged)."""

    uvw_m: torch.Tensor
    frequencies_hz: torch.Tensor
    visibilities: torch.Tensor
    weights: torch.Tensor

    def uv_wavelengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, v)`` of every visibility ``(R, C)``, in wavelengths."""
        from distinv.bench.uv_coverage import SPEED_OF_LIGHT

        per_metre = self.frequencies_hz / SPEED_OF_LIGHT
        return self.uvw_m[:, :1] * per_metre, self.uvw_m[:, 1:2] * per_metre


def _subtable(ct, path: str, name: str):
    return ct.table(f"{path}/{name}", ack=False)


def _as_tuple(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    values = (value,) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{name}={value!r}: give a window number or a list of them, e.g. {name}=0 or {name}=[0, 1].")
    return values


@dataclass(frozen=True)
class _Header:
    """What the plan takes from the main table's header and the subtables (the same on every rank)."""

    path: str
    column: str
    weights: str
    field: int
    windows: tuple[int, ...]
    channels: tuple[int, int]
    frequencies_hz: np.ndarray  # (S, C) the selected channels of each selected window
    window_of_description: dict[int, int]  # DATA_DESC_ID -> index into windows, for the selected windows
    phase_centre_rad: tuple[float, float]
    hands: tuple[int, ...]
    num_correlations: int
    antenna_positions_m: np.ndarray  # (A, 3) every antenna's
    dish_diameters_m: np.ndarray  # (A,)
    num_rows: int


def open_measurement_set(
    path: str | Path,
    data_column: str = "DATA",
    field: int = 0,
    spw: int | Sequence[int] = 0,
    channels: Sequence[int] | None = None,
    time_range_s: Sequence[float] | None = None,
    weights: str = "auto",
    ctx: Collectives | None = None,
) -> MeasurementSet:
    """Plan the selection of the Measurement Set at ``path``.

    :param data_column: the data column: ``DATA``, ``CORRECTED_DATA`` or ``MODEL_DATA``.
    :param field: the ``FIELD_ID`` imaged (its ``PHASE_DIR`` is the phase centre).
    :param spw: the spectral window(s) (``SPECTRAL_WINDOW`` rows); several must share their channel count and
        correlations.
    :param channels: ``[first, stop)`` of each window's channels; default all.
    :param time_range_s: ``[start, stop)`` in seconds from the selection's first integration; default all.
    :param weights: ``auto`` (``WEIGHT_SPECTRUM`` if the set has it, else ``WEIGHT``), ``weight_spectrum``,
        ``weight``, ``sigma`` (``1 / SIGMA^2``) or ``none`` (every visibility weight 1).
    :param ctx: the ranks sharing the plan (default: this process alone). Given, the call is a collective every
        rank makes: each rank reads the scalar columns of its stripe of ``1 / world_size`` of the main table's
        rows, and the stripes' selections are all-gathered (about 5 bytes a selected row), so every rank holds the
        same plan having read a part of the columns; an error on any rank before the gather is raised on all.
    :raises ValueError: naming the parameter, for a path that is not a Measurement Set, a missing column, a field,
        window or channel out of range, correlations without Stokes I, or a selection with no rows.
    """
    path = str(path)

    def read_part(rank: int, world: int) -> tuple[_Header, _Stripe]:
        ct = tables()
        header = _read_header(ct, path, data_column, field, spw, channels, weights)
        return header, _read_stripe(ct, header, rank * header.num_rows // world, (rank + 1) * header.num_rows // world)

    if ctx is None or not ctx.is_distributed:
        header, stripe = read_part(0, 1)
        stripes = [stripe]
    else:
        header, stripe = ctx.run_agreed(
            "reading the Measurement Set's plan", lambda: read_part(ctx.rank, ctx.world_size)
        )
        stripes = [None] * ctx.world_size
        ctx.all_gather_object(stripes, stripe)
    return _plan(header, stripes, time_range_s)


def _read_header(ct, path: str, data_column: str, field: int, spw, channels, weights: str) -> _Header:
    """The main table's columns and size and the subtables, checked against the selection."""
    if data_column not in DATA_COLUMNS:
        raise ValueError(f"data_column={data_column!r}: choose one of {DATA_COLUMNS}.")
    if weights not in WEIGHT_SOURCES:
        raise ValueError(f"weights={weights!r}: choose one of {WEIGHT_SOURCES}.")
    if not Path(path).is_dir() or not ct.tableexists(path):
        raise ValueError(f"ms={path!r}: not a Measurement Set (a casacore table directory).")
    windows = _as_tuple(spw, "spw")
    with ct.table(path, ack=False) as main:
        names = set(main.colnames())
        if data_column not in names:
            present = [c for c in DATA_COLUMNS if c in names]
            raise ValueError(f"data_column={data_column!r}: {path} has no such column; it has {present}.")
        weights = _weight_source(main, weights, names)
        num_rows = main.nrows()
    with _subtable(ct, path, "FIELD") as t:
        if not 0 <= field < t.nrows():
            raise ValueError(f"field={field}: {path} has {t.nrows()} field(s), numbered from 0.")
        ra, dec = (float(a) for a in t.getcol("PHASE_DIR")[field].reshape(-1, 2)[0])
    with _subtable(ct, path, "SPECTRAL_WINDOW") as t:
        if any(w >= t.nrows() for w in windows):
            raise ValueError(f"spw={list(windows)}: {path} has {t.nrows()} spectral window(s), numbered from 0.")
        frequencies = [np.asarray(t.getcell("CHAN_FREQ", w), dtype=np.float64) for w in windows]
    counts = {len(f) for f in frequencies}
    if len(counts) != 1:
        raise ValueError(f"spw={list(windows)}: the windows have {sorted(counts)} channels; choose windows alike.")
    first, stop = (0, counts.pop()) if channels is None else _channel_range(channels, len(frequencies[0]))
    with _subtable(ct, path, "DATA_DESCRIPTION") as t:
        descriptions = list(zip(t.getcol("SPECTRAL_WINDOW_ID"), t.getcol("POLARIZATION_ID"), strict=True))
    chosen = {d: windows.index(int(w)) for d, (w, _) in enumerate(descriptions) if int(w) in windows}
    described = {int(w) for w, _ in descriptions}
    missing = [w for w in windows if w not in described]
    if missing:
        raise ValueError(f"spw={list(windows)}: {path}'s DATA_DESCRIPTION has no row for window(s) {missing}.")
    with _subtable(ct, path, "POLARIZATION") as t:
        setups = {tuple(int(c) for c in t.getcell("CORR_TYPE", int(descriptions[d][1]))) for d in chosen}
    if len(setups) != 1:
        raise ValueError(f"spw={list(windows)}: the windows have different correlations {sorted(setups)}.")
    corr_types = setups.pop()
    with _subtable(ct, path, "ANTENNA") as t:
        positions = np.asarray(t.getcol("POSITION"), dtype=np.float64)
        dishes = np.asarray(t.getcol("DISH_DIAMETER"), dtype=np.float64)
    return _Header(
        path=path,
        column=data_column,
        weights=weights,
        field=field,
        windows=windows,
        channels=(first, stop),
        frequencies_hz=np.stack([f[first:stop] for f in frequencies]),
        window_of_description=chosen,
        phase_centre_rad=(ra, dec),
        hands=_stokes_i_hands(corr_types, path),
        num_correlations=len(corr_types),
        antenna_positions_m=positions,
        dish_diameters_m=dishes,
        num_rows=num_rows,
    )


@dataclass
class _Stripe:
    """The selected rows of main-table rows ``[start, start + count)``, packed for the all-gather (about 5 bytes a
    selected row): which rows (a bit each), their time step among the stripe's ``steps``, their window, and the
    antennas each step uses (a bit per antenna)."""

    start: int
    count: int
    selected: np.ndarray  # (ceil(count / 8),) uint8: np.packbits of the selection
    steps: np.ndarray  # (T,) float64: the selected rows' distinct TIME, sorted
    step_of_row: np.ndarray  # (R,) int32 into steps
    row_window: np.ndarray  # (R,) the smallest integer type: index into the header's windows
    antennas_of_step: np.ndarray  # (T, ceil(A / 8)) uint8: np.packbits of the antennas each step uses

    def rows(self) -> np.ndarray:
        return self.start + np.flatnonzero(np.unpackbits(self.selected, count=self.count)).astype(np.int64)


def _read_stripe(ct, header: _Header, start: int, stop: int) -> _Stripe:
    """The rows in ``[start, stop)`` of the main table in the field and windows selected (cross-correlations
    only), from the five scalar columns of those rows alone."""
    names = ("TIME", "FIELD_ID", "DATA_DESC_ID", "ANTENNA1", "ANTENNA2")
    if stop <= start:  # more ranks than rows
        scalars = {c: np.zeros(0, dtype=np.float64 if c == "TIME" else np.int32) for c in names}
    else:
        with ct.table(header.path, ack=False) as main:
            scalars = {c: main.getcol(c, startrow=start, nrow=stop - start) for c in names}
    descriptions = np.array(sorted(header.window_of_description), dtype=np.int64)
    window_index = np.array([header.window_of_description[d] for d in descriptions], dtype=np.int64)
    keep = (scalars["FIELD_ID"] == header.field) & np.isin(scalars["DATA_DESC_ID"], descriptions)
    keep &= scalars["ANTENNA1"] != scalars["ANTENNA2"]  # cross-correlations only
    antenna1, antenna2 = scalars["ANTENNA1"][keep], scalars["ANTENNA2"][keep]
    num_antennas = len(header.antenna_positions_m)
    pairs = np.concatenate([antenna1, antenna2])
    if pairs.size and not (0 <= pairs.min() and pairs.max() < num_antennas):
        raise ValueError(f"{header.path}: ANTENNA1/ANTENNA2 name antennas beyond its ANTENNA table's {num_antennas}.")
    steps, step_of_row = np.unique(scalars["TIME"][keep].astype(np.float64), return_inverse=True)
    used = np.zeros((len(steps), num_antennas), dtype=bool)
    used[step_of_row, antenna1] = used[step_of_row, antenna2] = True
    windows = window_index[np.searchsorted(descriptions, scalars["DATA_DESC_ID"][keep])]
    return _Stripe(
        start=start,
        count=max(stop - start, 0),
        selected=np.packbits(keep),
        steps=steps,
        step_of_row=step_of_row.astype(np.int32),
        row_window=windows.astype(np.min_scalar_type(max(len(header.windows) - 1, 0))),
        antennas_of_step=np.packbits(used, axis=1),
    )


def _plan(header: _Header, stripes: Sequence[_Stripe], time_range_s: Sequence[float] | None) -> MeasurementSet:
    """The plan from the header and every stripe's selected rows (the stripes in row order), cut to
    ``time_range_s``."""
    steps = [s.steps for s in stripes if s.steps.size]
    low, high = -np.inf, np.inf
    if time_range_s is not None:
        start, end = _time_range(time_range_s)
        first_time = min(float(s[0]) for s in steps) if steps else 0.0
        low, high = first_time + start, first_time + end
    rows, times, row_window, antennas = [], [], [], np.zeros(len(header.antenna_positions_m), dtype=bool)
    for stripe in stripes:
        step_kept = (stripe.steps >= low) & (stripe.steps < high)
        kept = step_kept[stripe.step_of_row]
        rows.append(stripe.rows()[kept])
        times.append(stripe.steps[stripe.step_of_row[kept]])
        row_window.append(stripe.row_window[kept].astype(np.int64))
        used = np.unpackbits(stripe.antennas_of_step[step_kept], axis=1, count=len(antennas)).astype(bool)
        antennas |= used.any(axis=0)
    rows = np.concatenate(rows)
    if rows.size == 0:
        raise ValueError(
            f"the selection (field={header.field}, spw={list(header.windows)}, time_range_s={time_range_s}) of "
            f"{header.path} has no rows."
        )
    positions, dishes = header.antenna_positions_m[antennas], header.dish_diameters_m[antennas]
    longest = float(np.sqrt(((positions[:, None] - positions[None]) ** 2).sum(-1)).max())
    return MeasurementSet(
        path=header.path,
        column=header.column,
        weights=header.weights,
        field=header.field,
        windows=header.windows,
        channels=header.channels,
        rows=rows,
        times=np.concatenate(times),
        row_window=np.concatenate(row_window),
        frequencies_hz=header.frequencies_hz,
        phase_centre_rad=header.phase_centre_rad,
        hands=header.hands,
        num_correlations=header.num_correlations,
        longest_baseline_m=longest,
        dish_diameter_m=float(dishes[dishes > 0].min()) if (dishes > 0).any() else 0.0,
    )


def _weight_source(main, weights: str, names: set[str]) -> str:
    has_spectrum = "WEIGHT_SPECTRUM" in names and main.nrows() > 0 and main.iscelldefined("WEIGHT_SPECTRUM", 0)
    if weights == "auto":
        return "weight_spectrum" if has_spectrum else "weight"
    if weights == "weight_spectrum" and not has_spectrum:
        raise ValueError("weights='weight_spectrum': the set has no WEIGHT_SPECTRUM; use weights='weight'.")
    if weights == "sigma" and "SIGMA" not in names:
        raise ValueError("weights='sigma': the set has no SIGMA column; use weights='weight' or 'auto'.")
    return weights


def _channel_range(channels: Sequence[int], count: int) -> tuple[int, int]:
    if (
        len(channels) != 2
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in channels)
        or not 0 <= channels[0] < channels[1] <= count
    ):
        raise ValueError(f"channels={list(channels)}: give [first, stop) within the window's {count} channels.")
    return int(channels[0]), int(channels[1])


def _time_range(time_range_s: Sequence[float]) -> tuple[float, float]:
    if len(time_range_s) != 2 or not all(isinstance(t, int | float) for t in time_range_s):
        raise ValueError(f"time_range_s={time_range_s!r}: give [start, stop) seconds from the first integration.")
    if not time_range_s[0] < time_range_s[1]:
        raise ValueError(f"time_range_s={list(time_range_s)}: the start must come before the stop.")
    return float(time_range_s[0]), float(time_range_s[1])


def _stokes_i_hands(corr_types: tuple[int, ...], path: str) -> tuple[int, ...]:
    if 1 in corr_types:
        return (corr_types.index(1),)
    for a, b in PARALLEL_HANDS:
        if a in corr_types and b in corr_types:
            return corr_types.index(a), corr_types.index(b)
    named = [CORRELATION_NAMES.get(c, str(c)) for c in corr_types]
    raise ValueError(f"{path}: correlations {named} do not make Stokes I (it needs XX and YY, RR and LL, or I).")


def _runs(rows: np.ndarray) -> list[np.ndarray]:
    """``rows`` (sorted) cut into runs of consecutive numbers."""
    return np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)


def _read(table, column: str, rows: np.ndarray, blc: Sequence[int] | None = None, trc: Sequence[int] | None = None):
    """Column ``column`` of ``rows`` (cut to cells ``[blc, trc]`` when given), as one array in ``rows``' order."""

    def get(t, start: int = 0, count: int = -1):
        if blc is None:
            return t.getcol(column, startrow=start, nrow=count)
        return t.getcolslice(column, blc, trc, startrow=start, nrow=count)

    runs = _runs(rows)
    if len(runs) <= MAX_RUNS:
        return np.concatenate([get(table, int(r[0]), len(r)) for r in runs])
    with table.selectrows(rows.tolist()) as subset:
        return get(subset)


def read_block(ms: MeasurementSet, rows: np.ndarray, channels: tuple[int, int] | None = None) -> VisibilityBlock:
    """The Stokes I visibilities of the selected rows ``rows`` (indices into ``ms.rows``, sorted) in channels
    ``channels`` (``[first, stop)`` of the selection's channels; default all), read from those rows and channels
    of the set alone.

    :raises ValueError: for a read the set refuses (a cell shape it does not have), naming the set.
    """
    ct = tables()
    first, stop = channels if channels is not None else (0, ms.num_channels)
    c0, c1 = ms.channels[0] + first, ms.channels[0] + stop
    numbers = ms.rows[rows]
    blc, trc = [c0, 0], [c1 - 1, ms.num_correlations - 1]
    with ct.table(ms.path, ack=False) as main:
        uvw = _read(main, "UVW", numbers)
        data = _read(main, ms.column, numbers, blc, trc)  # (R, C, correlations)
        flags = _read(main, "FLAG", numbers, blc, trc) | _read(main, "FLAG_ROW", numbers)[:, None, None]
        weights = _data_weights(main, ms, numbers, blc, trc, data.shape)
    hands = list(ms.hands)
    visibilities = data[..., hands].mean(axis=-1).astype(np.complex64)
    hand_weights = weights[..., hands]
    with np.errstate(divide="ignore"):
        stokes_weight = len(hands) ** 2 / (1.0 / hand_weights).sum(axis=-1)  # the variance of the hands' mean
    flagged = flags[..., hands].any(axis=-1) | ~np.isfinite(visibilities) | ~(hand_weights > 0).all(axis=-1)
    stokes_weight = np.where(flagged, 0.0, stokes_weight)
    frequencies = ms.frequencies_hz[ms.row_window[rows]][:, first:stop]
    return VisibilityBlock(
        uvw_m=torch.from_numpy(np.asarray(uvw, dtype=np.float64)),
        frequencies_hz=torch.from_numpy(np.ascontiguousarray(frequencies)),
        visibilities=torch.from_numpy(np.where(flagged, 0, visibilities).astype(np.complex64)),
        weights=torch.from_numpy(stokes_weight.astype(np.float64)),
    )


def _data_weights(main, ms: MeasurementSet, numbers: np.ndarray, blc, trc, shape) -> np.ndarray:
    """Weights ``(R, C, correlations)`` float64 from the source the plan chose."""
    if ms.weights == "weight_spectrum":
        return _read(main, "WEIGHT_SPECTRUM", numbers, blc, trc).astype(np.float64)
    if ms.weights == "none":
        return np.ones(shape, dtype=np.float64)
    if ms.weights == "weight":
        per_row = _read(main, "WEIGHT", numbers).astype(np.float64)
    else:
        sigma = _read(main, "SIGMA", numbers).astype(np.float64)
        with np.errstate(divide="ignore"):
            per_row = np.where(sigma > 0, 1.0 / sigma**2, 0.0)
    return np.broadcast_to(per_row[:, None, :], shape)


def block_rows(ms: MeasurementSet, split: str, index: int, bounds: Sequence[tuple[int, int]]):
    """Block ``index``'s rows (indices into ``ms.rows``) and channels: ``split="time"``, the rows of the
    ``bounds[index]`` range of the selection's time steps, every channel; ``"channel"``, every row, the
    ``bounds[index]`` range of channels.

    :return: ``(rows (R,) int64, (first, stop) channels)``.
    """
    start, stop = bounds[index]
    if split == "channel":
        return np.arange(len(ms.rows), dtype=np.int64), (start, stop)
    steps = ms.time_steps
    low, high = steps[start], steps[stop - 1]
    return np.flatnonzero((ms.times >= low) & (ms.times <= high)).astype(np.int64), (0, ms.num_channels)


def w_max_wavelengths(ms: MeasurementSet) -> float:
    """An upper bound on ``|w|`` in wavelengths: the longest baseline at the highest frequency."""
    from distinv.bench.uv_coverage import SPEED_OF_LIGHT

    return ms.longest_baseline_m * ms.highest_frequency_hz / SPEED_OF_LIGHT


def primary_beam_rad(ms: MeasurementSet) -> float:
    """The primary beam's full width at half maximum at the lowest frequency, ``1.13 lambda / D`` (a uniformly
    illuminated dish; tapered ones are a little wider), radians; ``nan`` without dish diameters."""
    from distinv.bench.uv_coverage import SPEED_OF_LIGHT

    if ms.dish_diameter_m <= 0:
        return math.nan
    return 1.13 * SPEED_OF_LIGHT / float(ms.frequencies_hz.min()) / ms.dish_diameter_m
