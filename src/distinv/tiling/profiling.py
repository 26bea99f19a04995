"""A network's measured cost: time and peak memory of one call as functions of the pixels it processes.

:func:`profile_network` runs the network on aligned probe windows of growing size (:func:`probe_shapes`), each
timed after a warm-up (:func:`~distinv.runtime.timing.timed_calls`), with its peak memory read by
:class:`~distinv.runtime.memory.PeakMemory`. A call's time and memory are modelled as functions of the pixels it
processes (samples x batch x window pixels), whatever their shape: time per pixel is interpolated between probes
in log-pixels (it falls while per-call overheads amortise and, on a CPU core, rises again once activations
outgrow the caches); memory is interpolated linearly and extrapolated along the last two probes.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from distinv.runtime.timing import timed_calls
from distinv.tiling.geometry import round_up

# Probes stop at this many pixels per call (a call of a second or two on one CPU core for the shipped DRUNet), or
# earlier when a call exceeds the memory budget. A GPU probes further: its time per pixel keeps falling with size.
CPU_PROBE_PIXELS = 2**19
GPU_PROBE_PIXELS = 2**24
FIRST_PROBE_PIXELS = 2**12


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


def probe_shapes(spatial: Sequence[int], size_multiple: int, max_pixels: int) -> list[tuple[int, ...]]:
    """Aligned windows of roughly 4x growing size for a signal of ``spatial`` sizes: each dim at most the
    signal's (rounded up to ``size_multiple``), pixels from about 4Ki up to ``max_pixels`` or the whole signal."""
    nd = len(spatial)
    caps = [round_up(s, size_multiple) for s in spatial]
    total = math.prod(caps)
    shapes: list[tuple[int, ...]] = []
    target = FIRST_PROBE_PIXELS
    while True:
        side = round_up(max(1, round(target ** (1 / nd))), size_multiple)
        shape = _fit(side, caps, target, size_multiple)
        if shape not in shapes:
            shapes.append(shape)
        target *= 4
        if math.prod(shape) >= total or target > max_pixels:
            return shapes


def _fit(side: int, caps: Sequence[int], target: int, size_multiple: int) -> tuple[int, ...]:
    """``side`` per dim clipped to ``caps``; the pixels a clipped dim gives up go to the dims that can grow."""
    shape = [min(side, c) for c in caps]
    for d in range(len(shape)):
        if math.prod(shape) >= target:
            break
        others = math.prod(shape) // shape[d]
        shape[d] = min(caps[d], max(shape[d], round_up(-(-target // others), size_multiple)))
    return tuple(shape)


def default_probe_shapes(
    spatial: Sequence[int], size_multiple: int, samples: int, device: torch.device | str
) -> list[tuple[int, ...]]:
    """:func:`probe_shapes` up to the device's probe limit (``CPU_PROBE_PIXELS`` or ``GPU_PROBE_PIXELS``)."""
    limit = GPU_PROBE_PIXELS if torch.device(device).type == "cuda" else CPU_PROBE_PIXELS
    return probe_shapes(spatial, size_multiple, max(1, limit // samples))


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
                times, peak = timed_calls(lambda x=x: run(x), device, repeats)
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


def cached_profiles(network: object) -> list[NetworkProfile]:
    """Every profile measured so far for ``network`` (e.g. to report them)."""
    try:
        return list(_PROFILES.get(network, {}).values())
    except TypeError:
        return []
