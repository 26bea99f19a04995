"""Automatic tiling: measure a network once, then choose the windows and the batch that minimise predicted time
within a memory budget.

1. **profile** (:func:`profile_network`): the network on aligned probe windows of growing size, each timed
   after a warm-up, with its peak memory read by :class:`~distinv.memory.PeakMemory`. A call's time and memory
   are modelled as functions of the pixels it processes (samples x batch x window pixels), whatever their
   shape: time per pixel is interpolated between probes in log-pixels (it falls while per-call overheads
   amortise and, on a CPU core, rises again once activations outgrow the caches); memory is interpolated
   linearly and extrapolated along the last two probes.
2. **choose** (:func:`choose_plan`): every candidate plan (owned patches from small to the whole signal, and
   the fewest-windows plans under growing window limits) with every batch from 1 to a rank's window count.
   Predicted time per rank: the sum over its network calls. Predicted memory per rank: its largest call, the
   batch's input copy, the window outputs it holds until the gather, and two full-size buffers (the gathered
   pieces and the output). The fastest plan whose predicted memory times a headroom (1.25 on GPU, 2 on CPU) fits
   the budget wins; ties go to less memory. Calls larger than
   twice the largest probe are not considered: the model does not know how the time per pixel goes there.

Windows come from :class:`~distinv.tiling.TilePlan` and are aligned to the network's size multiple, so the
memory spikes of odd shapes (cuDNN picks other algorithms for widths not divisible by 8) cannot happen
inside the engine. The halo stays the caller's ``overlap``: it buys accuracy, not speed.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .memory import PeakMemory
from .tiling import TilePlan, _round_up

# Probes stop at this many pixels per call (one CPU core: ~1.5 s for DRUNet 16..128), or earlier when a call
# exceeds the memory budget. A GPU probes further: its time per pixel keeps falling with size.
CPU_PROBE_PIXELS = 2**19
GPU_PROBE_PIXELS = 2**24
FIRST_PROBE_PIXELS = 2**12
MAX_WINDOWS_PER_RANK = 256
# A plan's predicted memory times this must fit the budget. On a GPU the caching allocator's peak is what torch
# allocates; on CPU the resident-set peak also depends on the allocator's history (glibc raises its mmap
# threshold after large frees, so later tensors come from the heap and stay resident): whole tiled calls measured
# up to 1.96x the prediction there (shipped DRUNet, 1024^2 at 2 ranks, after larger windows had run).
MEMORY_HEADROOM = 1.25
CPU_MEMORY_HEADROOM = 2.0


@dataclass(frozen=True)
class Probe:
    """One measured call: ``pixels`` processed (samples x spatial pixels), ``seconds`` per call, and
    ``peak_bytes`` above the level before the call."""

    pixels: int
    seconds: float
    peak_bytes: int


@dataclass(frozen=True)
class NetworkProfile:
    """A network's measured cost on one device and dtype, as functions of the pixels in one call."""

    probes: tuple[Probe, ...]

    def __post_init__(self):
        if not self.probes:
            raise ValueError("A NetworkProfile needs at least one probe.")

    def seconds(self, pixels: float) -> float:
        """Predicted seconds of one call on ``pixels`` pixels (a call is never cheaper than the smallest probe)."""
        p = self.probes
        if pixels <= p[0].pixels or len(p) == 1:
            return p[0].seconds * max(1.0, pixels / p[0].pixels)
        logs = [math.log(q.pixels) for q in p]
        per_pixel = [math.log(q.seconds / q.pixels) for q in p]
        x = math.log(pixels)
        i = min(len(p) - 2, max(0, _segment(logs, x)))
        slope = (per_pixel[i + 1] - per_pixel[i]) / (logs[i + 1] - logs[i])
        if x > logs[-1]:
            slope = max(slope, 0.0)  # beyond the probes, never assume the time per pixel keeps falling
        return pixels * math.exp(per_pixel[i] + slope * (x - logs[i]))

    def peak_bytes(self, pixels: float) -> float:
        """Predicted peak memory of one call on ``pixels`` pixels (linear between probes and beyond the last)."""
        p = self.probes
        levels = list(_running_max([q.peak_bytes for q in p]))
        if len(p) == 1:
            return levels[0] * max(1.0, pixels / p[0].pixels)
        if pixels <= p[0].pixels:
            return levels[0]
        i = min(len(p) - 2, max(0, _segment([q.pixels for q in p], pixels)))
        slope = max(0.0, (levels[i + 1] - levels[i]) / (p[i + 1].pixels - p[i].pixels))
        return levels[i] + slope * (pixels - p[i].pixels)

    def as_tensor(self) -> torch.Tensor:
        """``(n, 2)`` float64: seconds and peak bytes per probe (to reduce over ranks)."""
        return torch.tensor([[q.seconds, float(q.peak_bytes)] for q in self.probes], dtype=torch.float64)

    def with_values(self, values: torch.Tensor) -> NetworkProfile:
        """The same probes with ``values`` (as from :meth:`as_tensor`, e.g. the maximum over ranks)."""
        return NetworkProfile(
            tuple(Probe(q.pixels, float(v[0]), int(v[1])) for q, v in zip(self.probes, values.tolist(), strict=True))
        )


def _running_max(values: Sequence[int]) -> list[int]:
    """Running maximum: memory never falls as calls grow (a small probe's reading can be noise)."""
    out, top = [], 0
    for v in values:
        top = max(top, v)
        out.append(top)
    return out


def _segment(xs: Sequence[float], x: float) -> int:
    """Index ``i`` of the segment ``xs[i] <= x < xs[i + 1]`` (-1 before the first, len - 1 after the last)."""
    return sum(1 for v in xs if v <= x) - 1


def probe_shapes(spatial: Sequence[int], multiple: int, max_pixels: int) -> list[tuple[int, ...]]:
    """Aligned windows of roughly 4x growing size for a signal of ``spatial`` sizes: each dim at most the
    signal's (rounded up to ``multiple``), pixels from about 4Ki up to ``max_pixels`` or the whole signal."""
    nd = len(spatial)
    caps = [_round_up(s, multiple) for s in spatial]
    total = math.prod(caps)
    shapes: list[tuple[int, ...]] = []
    target = FIRST_PROBE_PIXELS
    while True:
        side = _round_up(max(1, round(target ** (1 / nd))), multiple)
        shape = _fit(side, caps, target, multiple)
        if shape not in shapes:
            shapes.append(shape)
        target *= 4
        if math.prod(shape) >= total or target > max_pixels:
            return shapes


def _fit(side: int, caps: Sequence[int], target: int, multiple: int) -> tuple[int, ...]:
    """``side`` per dim clipped to ``caps``; the pixels a clipped dim gives up go to the dims that can grow."""
    shape = [min(side, c) for c in caps]
    for d in range(len(shape)):
        if math.prod(shape) >= target:
            break
        others = math.prod(shape) // shape[d]
        shape[d] = min(caps[d], max(shape[d], _round_up(-(-target // others), multiple)))
    return tuple(shape)


def default_probe_shapes(
    spatial: Sequence[int], multiple: int, samples: int, device: torch.device | str
) -> list[tuple[int, ...]]:
    """:func:`probe_shapes` up to the device's probe limit (``CPU_PROBE_PIXELS`` or ``GPU_PROBE_PIXELS``)."""
    limit = GPU_PROBE_PIXELS if torch.device(device).type == "cuda" else CPU_PROBE_PIXELS
    return probe_shapes(spatial, multiple, max(1, limit // samples))


def profile_network(
    run: Callable[[torch.Tensor], torch.Tensor],
    channels: int,
    shapes: Sequence[Sequence[int]],
    *,
    samples: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    budget_bytes: int | None = None,
    repeats: int = 3,
) -> NetworkProfile:
    """Measure ``run(x)`` (``x`` of shape ``(samples, channels, *window)``) on each window of ``shapes``
    (smallest first, e.g. :func:`default_probe_shapes`): the fastest of ``repeats`` timed calls after a
    warm-up, and the peak memory of the first. Stops early once a call needs more than ``budget_bytes`` or
    runs out of GPU memory; the profile then has fewer probes than ``shapes``.
    """
    device = torch.device(device)
    probes: list[Probe] = []
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.rand((samples, channels, *shape), generator=generator, dtype=dtype).to(device)
        try:
            with torch.no_grad():
                run(x)  # warm-up: lazy initialisation, algorithm choice
                times = []
                for i in range(max(1, repeats)):
                    with PeakMemory(device) as memory:
                        start = time.perf_counter()
                        run(x)
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        times.append(time.perf_counter() - start)
                    if i == 0:
                        peak = memory.peak_bytes
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        probes.append(Probe(samples * math.prod(shape), min(times), peak))
        if budget_bytes is not None and peak > budget_bytes:
            break
    if not probes:
        raise RuntimeError(f"The network ran out of memory on its smallest probe window {tuple(shapes[0])}.")
    return NetworkProfile(tuple(probes))


_PROFILES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_profile(network: object, key: tuple, measure: Callable[[], NetworkProfile]) -> NetworkProfile:
    """``measure()`` once per network (held weakly) and ``key`` (device, dtype, channels, ...)."""
    try:
        per_network = _PROFILES.setdefault(network, {})
    except TypeError:  # not weak-referenceable: measure every time
        return measure()
    if key not in per_network:
        per_network[key] = measure()
    return per_network[key]


@dataclass(frozen=True)
class AutoPlan:
    """The chosen tiling: rebuild its windows with ``TilePlan.build(shape, world, patch_size,
    halo, multiple, max_window_pixels)``; ``batch`` windows per call; predictions per rank."""

    patch_size: int | None
    max_window_pixels: int | None
    plan: TilePlan
    batch: int
    seconds_per_rank: tuple[float, ...]
    bytes_per_rank: tuple[int, ...]
    budget_bytes: int

    def describe(self) -> str:
        window = max(self.plan.windows, key=lambda w: w.pixels).size
        return (
            f"{len(self.plan.windows)} windows (grid {'x'.join(map(str, self.plan.grid))}, largest "
            f"{'x'.join(map(str, window))}, halo {self.plan.halo[0]}), batch {self.batch}: predicted "
            f"{max(self.seconds_per_rank):.3g} s and {max(self.bytes_per_rank) / 2**20:.0f} MiB per rank "
            f"(budget {self.budget_bytes / 2**20:.0f} MiB)"
        )


def predict(
    profile: NetworkProfile, plan: TilePlan, batch: int, samples: int, channels: int, itemsize: int = 4
) -> tuple[list[float], list[int]]:
    """Predicted seconds and peak bytes of one tiled call, per rank (see the module's docstring)."""
    image = samples * channels * math.prod(plan.shape) * itemsize
    seconds, memory = [], []
    for rank in range(plan.world_size):
        by_size: dict[tuple[int, ...], int] = {}
        for w in plan.windows_of(rank):
            by_size[w.size] = by_size.get(w.size, 0) + 1
        total, largest, held = 0.0, 0, 0
        for size, count in by_size.items():
            pixels = samples * math.prod(size)
            full, rest = divmod(count, batch)
            total += full * profile.seconds(batch * pixels) + (profile.seconds(rest * pixels) if rest else 0.0)
            largest = max(largest, min(batch, count) * pixels)
            held += count * pixels * channels * itemsize
        copy = largest * channels * itemsize if batch > 1 else 0
        seconds.append(total)
        memory.append(int(profile.peak_bytes(largest) + copy + held + 2 * image) if largest else 2 * image)
    return seconds, memory


def largest_call(plan: TilePlan, batch: int, samples: int = 1) -> int:
    """Pixels in the largest network call of any rank: ``samples`` x windows in one batch x window pixels."""
    most = 0
    for rank in range(plan.world_size):
        by_size: dict[tuple[int, ...], int] = {}
        for w in plan.windows_of(rank):
            by_size[w.size] = by_size.get(w.size, 0) + 1
        for size, count in by_size.items():
            most = max(most, samples * min(batch, count) * math.prod(size))
    return most


def candidate_tilings(
    shape: Sequence[int], world_size: int, halo: int | Sequence[int], multiple: int
) -> list[tuple[int | None, int | None, TilePlan]]:
    """``(patch_size, max_window_pixels, plan)`` for owned patches growing by sqrt(2) from the halo (or the
    size multiple) to the whole signal, and the fewest-windows plans under window limits growing by 2; one
    per distinct grid, at most ``MAX_WINDOWS_PER_RANK`` windows per rank."""
    shape = tuple(shape)
    out: dict[tuple[int, ...], tuple[int | None, int | None, TilePlan]] = {}
    cap = MAX_WINDOWS_PER_RANK * world_size

    def add(patch: int | None, limit: int | None) -> None:
        try:
            plan = TilePlan.build(shape, world_size, patch, halo, multiple, limit)
        except ValueError:
            return
        if len(plan.windows) <= cap and plan.grid not in out:
            out[plan.grid] = (patch, limit, plan)

    widest_halo = halo if isinstance(halo, int) else max(halo)
    step = max(multiple, _round_up(max(widest_halo, 16), multiple))
    k = 0
    while True:
        patch = _round_up(round(step * 2 ** (k / 2)), multiple)
        if math.prod(-(-s // patch) for s in shape) <= cap:
            add(patch, None)
        if patch >= max(shape):
            break
        k += 1
    add(None, None)
    limit = 2**12
    while limit < 4 * math.prod(shape):
        add(None, limit)
        limit *= 2
    return list(out.values())


def choose_plan(
    profile: NetworkProfile,
    img_size: Sequence[int],
    tiling_dims: Sequence[int],
    world_size: int,
    budget_bytes: int,
    *,
    halo: int | Sequence[int] = 0,
    multiple: int = 1,
    patch_size: int | Sequence[int] | None | str = "auto",
    batch: int | None | str = "auto",
    max_window_pixels: int | None = None,
    itemsize: int = 4,
    headroom: float = MEMORY_HEADROOM,
) -> AutoPlan:
    """The fastest predicted (windows, batch) for a signal of ``img_size`` ``(B, C, *spatial)`` tiled over
    ``tiling_dims`` within ``budget_bytes`` per rank. A ``patch_size`` other than ``"auto"`` fixes the
    windows (``None``: the default fewest-windows plan); a ``batch`` other than ``"auto"`` fixes the batch
    (``None``: all of a rank's same-size windows at once); ``max_window_pixels`` applies to a fixed
    ``patch_size=None``; ``headroom``: the factor on predicted memory (``CPU_MEMORY_HEADROOM`` for CPU ranks).

    :raises ValueError: when no candidate fits the budget (naming the smallest memory any would need).
    """
    samples, channels = int(img_size[0]), int(img_size[1])
    shape = tuple(int(img_size[d]) for d in tiling_dims)
    if patch_size == "auto":
        tilings = candidate_tilings(shape, world_size, halo, multiple)
    else:
        fixed = TilePlan.build(shape, world_size, patch_size, halo, multiple, max_window_pixels)
        tilings = [(patch_size, max_window_pixels, fixed)]
    reach = 2 * profile.probes[-1].pixels
    best, smallest = None, None
    for patch, limit, plan in tilings:
        most = max(len(plan.windows_of(r)) for r in range(world_size)) or 1
        if batch == "auto":
            batches = sorted({min(2**i, most) for i in range(most.bit_length() + 1)})
        else:
            batches = [most if batch is None else min(int(batch), most)]
        for b in batches:
            if patch_size == "auto" and largest_call(plan, b, samples) > reach:
                continue
            seconds, memory = predict(profile, plan, b, samples, channels, itemsize)
            needed = int(max(memory) * headroom)
            smallest = needed if smallest is None else min(smallest, needed)
            if max(memory) * headroom > budget_bytes:
                continue
            key = (max(seconds), max(memory))
            if best is None or key < best[0]:
                best = (key, AutoPlan(patch, limit, plan, b, tuple(seconds), tuple(memory), budget_bytes))
    if best is None and smallest is None:
        raise ValueError(
            f"No tiling of a {tuple(img_size)} signal over {world_size} ranks is within twice the largest window the "
            f"network was measured on ({profile.probes[-1].pixels} pixels): give patch_size and max_batch_size "
            "yourself."
        )
    if best is None:
        raise ValueError(
            f"No tiling of a {tuple(img_size)} signal over {world_size} ranks fits memory_budget={budget_bytes} "
            f"bytes: the smallest needs about {smallest} bytes per rank. Raise memory_budget, add ranks, or give "
            "patch_size and max_batch_size yourself."
        )
    return best[1]
