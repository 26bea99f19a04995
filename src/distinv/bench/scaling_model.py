"""A checkable model of one PnP (PGD) iteration: seconds and bytes per rank, replicated vs sharded iterates.

From what one rank's device does (:class:`Costs`: the network's measured profile, one operator's ``A^T A``, the
sharded physics per row, a link's bandwidth and latency) and what the problem is (:class:`Workload`), predict per
world size and engine (:func:`predict_iteration`):

- ``distinv`` (replicated iterates): ``ceil(K / p)`` operators' ``A^T A``, an image-sized all-reduce; the tiled
  denoiser's most loaded rank (its windows from the same :class:`~distinv.tiling.geometry.TilePlan` the engine builds,
  timed by :func:`~distinv.tiling.autotune.predict`), the all-gather of owned regions and one agreement;
- ``distinv-sharded``: the spatial physics on the largest band with its halo (or, for operators that do not
  decompose in space, the operator split with the iterate gathered), the halo rows; the denoiser's row-band plan,
  its halo rows and one agreement; two all-reduced norms;
- ``distinv-sharded/domain``: the same physics and norms on the domain-parallel denoiser's bands
  (:func:`~distinv.domain.denoiser.band_bounds`); the network on the largest band, nothing recomputed, and one
  exchange per convolution that reads its neighbours (``Workload.domain_layers``: its channels and resolution
  times its rows, to each of two neighbours), each ``latency + bytes / bandwidth``.

The flat overhead (``Costs.overhead_seconds``) is counted whole by the replicated engine; the sharded engines divide
its replicated-image part (``Costs.image_overhead_fraction``: updates of the iterate, norms, copies of the image)
by the ranks and keep the rest.

A collective costs ``latency + bytes / bandwidth`` (bytes as :mod:`distinv.comm.collectives` counts them: the ring
algorithm's); ranks beyond ``cores`` share them (compute seconds scale by ``p / cores``). What the model leaves
out, it says: waiting for slower ranks beyond the plan's imbalance, Python overheads per iteration, and memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distinv.comm.collectives import ring_all_gather_bytes, ring_all_reduce_bytes
from distinv.domain.denoiser import band_bounds
from distinv.sharded.denoiser import band_bounds_of, halo_rows, row_band_patch, row_band_plan
from distinv.tiling.autotune import predict
from distinv.tiling.geometry import TilePlan
from distinv.tiling.planner import TilingKnobs
from distinv.tiling.profiling import NetworkProfile

ENGINES = ("distinv", "distinv-sharded", "distinv-sharded/domain")


@dataclass(frozen=True)
class Costs:
    """What one rank's device does (measured here, or given for a device that is not).

    :ivar network: the denoiser's seconds per call against the pixels it processes.
    :ivar operator_seconds: one operator's ``A^T A`` on the whole signal.
    :ivar band_seconds_per_row: the sharded physics' ``A^T A`` (all K) per row of a band with its halo; 0 when the
        problem's operators do not decompose in space.
    :ivar bandwidth: bytes per second one rank sends (and receives) in a collective.
    :ivar latency: seconds of a collective or exchange of a few bytes.
    :ivar cores: compute slots the ranks share (``None``: one per rank).
    :ivar source: where the figures come from, for the printout.
    :ivar overhead_seconds: a flat per-iteration cost whatever the world size (Python, launches), when known.
    :ivar image_overhead_fraction: the part of ``overhead_seconds`` that is work on the whole image (the iterate's
        updates and norms), which sharded iterates divide by the ranks (0: all of it is fixed).
    """

    network: NetworkProfile
    operator_seconds: float
    band_seconds_per_row: float
    bandwidth: float
    latency: float
    cores: int | None = None
    source: str = "measured"
    overhead_seconds: float = 0.0
    image_overhead_fraction: float = 0.0


@dataclass(frozen=True)
class Workload:
    """One problem at one size: signal ``shape`` ``(B, C, *spatial)``, ``num_operators``, the rows above and below a
    band its sharded ``A^T A`` reads (``None``: the operators do not decompose in space), the tiling knobs."""

    shape: tuple[int, ...]
    num_operators: int
    physics_halo: tuple[int, int] | None
    knobs: TilingKnobs
    itemsize: int = 4
    domain_layers: tuple[tuple[int, int, int], ...] = ()  # per exchanging convolution: channels, divisor, rows
    alignment: int = 8  # the domain-parallel denoiser's bands start at multiples of it


@dataclass(frozen=True)
class Prediction:
    """One iteration on the slowest rank: compute seconds of the data step and the denoiser, seconds in
    communication, their total (with the costs' flat overhead); bytes the busiest rank sends."""

    engine: str
    world_size: int
    data_s: float
    denoiser_s: float
    comm_s: float
    total_s: float
    bytes_sent: int


def predict_iteration(costs: Costs, work: Workload, engine: str, world_size: int) -> Prediction:
    """The model's iteration for ``engine`` (one of :data:`ENGINES`) on ``world_size`` ranks (see the module).

    :raises ValueError: for an unknown engine, or a world size the sharded plan cannot cut.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {ENGINES}.")
    p = world_size
    share = max(1.0, p / costs.cores) if costs.cores else 1.0
    image = math.prod(work.shape) * work.itemsize
    row = image // work.shape[2]  # bytes of one row (an image row, or a volume's z-slice) over batch and channels
    collectives: list[int] = []  # bytes this rank sends in each collective or exchange of the iteration
    if engine == "distinv-sharded/domain":
        bounds = band_bounds(work.shape[2], p, work.alignment)
        pixels = work.shape[0] * max(b - a for a, b in zip(bounds, bounds[1:], strict=False)) * _width(work)
        denoiser = costs.network.seconds(pixels) * share
        if p > 1:
            neighbours = 2 if p > 2 else 1
            row_bytes = work.shape[0] * work.itemsize * _width(work)  # one row of one channel, every sample
            for channels, divisor, rows in work.domain_layers:
                collectives.append(neighbours * rows * channels * row_bytes // divisor)
    else:
        plan = _plan(work, p, sharded=engine == "distinv-sharded")
        denoiser = max(predict(costs.network, plan, 1, work.shape[0], work.shape[1], work.itemsize)[0]) * share
        bounds = band_bounds_of(plan) if engine == "distinv-sharded" else ()
        if p > 1:
            collectives.append(ring_all_gather_bytes(8, p))  # the denoiser's agreement
    overhead = costs.overhead_seconds
    if engine == "distinv":
        data = math.ceil(work.num_operators / p) * costs.operator_seconds * share
        if p > 1:
            owned = max(sum(w.owned_pixels for w in plan.windows_of(r)) for r in range(p))
            collectives += [ring_all_reduce_bytes(image, p), ring_all_gather_bytes(owned * row // _width(work), p)]
    else:
        overhead *= 1 - costs.image_overhead_fraction * (1 - 1 / p)
        tallest = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
        if work.physics_halo is not None:
            data = (tallest + sum(work.physics_halo)) * costs.band_seconds_per_row * share
            if p > 1:
                collectives.append(sum(work.physics_halo) * row)
        else:  # the operator split, the iterate gathered for it
            data = math.ceil(work.num_operators / p) * costs.operator_seconds * share
            if p > 1:
                collectives += [ring_all_gather_bytes(tallest * row, p), ring_all_reduce_bytes(image, p)]
        if p > 1 and engine == "distinv-sharded":
            above, below = halo_rows(plan, bounds)
            collectives += [max(a + b for a, b in zip(above, below, strict=True)) * row]
        if p > 1:
            collectives += [ring_all_reduce_bytes(8, p)] * 2  # the relative change's two norms
    comm = sum(costs.latency + sent / costs.bandwidth for sent in collectives)
    total = data + denoiser + comm + overhead
    return Prediction(engine, p, data, denoiser, comm, total, sum(collectives))


def _plan(work: Workload, world_size: int, sharded: bool) -> TilePlan:
    """The windows the engine would run (the replicated denoiser's plan, or its row-band plan)."""
    k = work.knobs
    spatial = work.shape[2:]
    overlap = k.overlap if isinstance(k.overlap, int) else k.overlap[0]
    patch = row_band_patch(k.patch_size, spatial, world_size, k.size_multiple, overlap) if sharded else k.patch_size
    plan = TilePlan.build(
        spatial,
        world_size,
        patch,
        k.overlap,
        k.size_multiple,
        k.max_window_pixels,
        rows_at_least=world_size if sharded else 1,
    )
    return row_band_plan(plan) if sharded else plan


def _width(work: Workload) -> int:
    """Pixels in one row (of the tiled dims after the first)."""
    return math.prod(work.shape[3:])


def format_predictions(costs: Costs, work: Workload, world_sizes: list[int], engines: list[str]) -> str:
    """A plain-text table of :func:`predict_iteration` per world size and engine, with the costs it used."""
    link = (
        "" if math.isnan(costs.bandwidth) else f"; link {costs.bandwidth / 1e9:.2f} GB/s, {costs.latency * 1e3:.2f} ms"
    )
    lines = [
        f"scaling model, {'x'.join(map(str, work.shape[1:]))}, K={work.num_operators}, costs: {costs.source}: "
        f"one operator's A^T A {costs.operator_seconds:.3g} s, sharded A^T A {costs.band_seconds_per_row:.3g} s/row"
        f"{link}",
        f"{'engine':<23} {'ranks':>5} {'data s':>8} {'denoiser s':>10} {'comm s':>8} {'total s':>8} {'MiB sent':>9}",
    ]
    for p in world_sizes:
        for engine in engines:
            r = predict_iteration(costs, work, engine, p)
            lines.append(
                f"{engine:<23} {p:>5} {r.data_s:>8.3f} {r.denoiser_s:>10.3f} {r.comm_s:>8.3f} {r.total_s:>8.3f} "
                f"{r.bytes_sent / 2**20:>9.2f}"
            )
    return "\n".join(lines)
