"""The planner: from a signal's shape, the world size and the tiling knobs to a frozen :class:`TiledLayout`.

Two ways to plan, one result:

- **fixed** (:func:`plan_fixed`): the knobs say the windows (``patch_size``, or ``None`` for the fewest, largest
  windows within ``max_window_pixels``) and the batch;
- **automatic** (:func:`plan_automatic`, for ``patch_size="auto"`` and/or ``max_batch_size="auto"``): the network's
  measured profile (:func:`measured_profile`, cached under one key: network, device, dtype, samples, channels
  and the probe windows, which follow from the image size), agreed over ranks (the largest costs, the smallest
  budget), then :func:`~distinv.tiling.autotune.choose_plan`. ``distribute()`` and ``distinv plan`` both plan here.

Every rank computes the same layout: the fixed plan is a pure function of its arguments, the automatic one of
values every rank agreed on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from distinv.comm.context import DistributedContext
from distinv.runtime.memory import default_memory_budget
from distinv.tiling.autotune import CPU_MEMORY_HEADROOM, MEMORY_HEADROOM, AutoPlan, choose_plan
from distinv.tiling.geometry import TilePlan, Window, validate_tiling
from distinv.tiling.profiling import NetworkProfile, cached_profile, default_probe_shapes, profile_network

Auto = Literal["auto"]
DEFAULT_OVERLAP = 32
# On a CPU core the fastest windows per pixel hold a few hundred thousand pixels (caches; figures in
# benchmarks/README.md), and smaller windows hold less memory; on a GPU the largest windows that fit are fastest.
CPU_MAX_WINDOW_PIXELS = 384 * 1024


@dataclass(frozen=True)
class TilingKnobs:
    """What the caller asked for (deepinv's keyword names).

    :ivar patch_size: owned pixels per window and tiled dim; ``None``: the fewest, largest windows; ``"auto"``.
    :ivar overlap: pixels each window reads beyond its owned region where it meets another (rounded up to
        ``size_multiple``).
    :ivar size_multiple: the network's size multiple (windows start and, inside the signal, end on it).
    :ivar max_batch_size: windows per network call; ``None``: all of a rank's same-size windows; ``"auto"``.
    :ivar max_window_pixels: the largest window for ``patch_size=None``; ``None``: no limit.
    :ivar memory_budget: bytes one call may add per rank, for ``"auto"``; ``None``: the device's default.
    """

    patch_size: int | tuple[int, ...] | None | Auto = None
    overlap: int | tuple[int, ...] = DEFAULT_OVERLAP
    size_multiple: int = 1
    max_batch_size: int | None | Auto = None
    max_window_pixels: int | None = None
    memory_budget: int | None = None

    @property
    def automatic(self) -> bool:
        return self.patch_size == "auto" or self.max_batch_size == "auto"


@dataclass(frozen=True)
class TiledLayout:
    """A signal of shape ``img_size`` ``(B, C, *spatial)`` cut on ``tiling_dims`` into the windows of ``plan``
    (owned regions partition the signal; each window has its rank), run ``batch`` windows per call (``None``:
    all of a rank's same-size windows at once). ``auto`` holds the predictions when planned automatically."""

    img_size: tuple[int, ...]
    tiling_dims: tuple[int, ...]
    plan: TilePlan
    batch: int | None
    auto: AutoPlan | None = None

    def index(self, slices: Sequence[slice]) -> tuple[slice, ...]:
        """A full indexing tuple that applies ``slices`` (one per tiled dim) to a ``(B, C, *spatial)`` tensor."""
        full = [slice(None)] * len(self.img_size)
        for d, s in zip(self.tiling_dims, slices, strict=True):
            full[d] = s
        return tuple(full)

    def network_calls(self, rank: int) -> int:
        """How many network calls ``rank``'s windows take (``batch`` same-size windows per call)."""
        groups = self.plan.windows_by_size(rank).values()
        return sum(-(-len(group) // (self.batch or len(group))) for group in groups)

    def owned_shape(self, window: Window) -> tuple[int, ...]:
        """The full shape of ``window``'s owned region, ``(B, C, ...)``."""
        shape = list(self.img_size)
        for d, s in zip(self.tiling_dims, window.owned_size, strict=True):
            shape[d] = s
        return tuple(shape)


def tiling_dims_of(ndim: int, tiling_dims: int | Sequence[int] | None) -> tuple[int, ...]:
    """The sorted, non-negative dims to cut of a ``ndim``-dim signal (default: every spatial dim).

    :raises ValueError: naming ``tiling_dims`` when it repeats a dim or names batch, channel or absent dims.
    """
    if tiling_dims is None:
        return tuple(range(2, ndim))
    dims = (tiling_dims,) if isinstance(tiling_dims, int) else tuple(tiling_dims)
    normalised = tuple(d + ndim if d < 0 else d for d in dims)
    if not dims or any(not 2 <= d < ndim for d in normalised) or len(set(normalised)) != len(normalised):
        raise ValueError(
            f"tiling_dims={tiling_dims} does not name distinct spatial dims of a {ndim}-dim input: use "
            f"dims among {tuple(range(2, ndim))} (batch and channel dims cannot be tiled)."
        )
    return tuple(sorted(normalised))


def plan_fixed(img_size: Sequence[int], tiling_dims: Sequence[int], world_size: int, knobs: TilingKnobs) -> TiledLayout:
    """The layout the knobs name (no measurement); ``knobs`` must not be automatic."""
    img_size, tiling_dims = tuple(img_size), tuple(tiling_dims)
    plan = TilePlan.build(
        [img_size[d] for d in tiling_dims],
        world_size,
        knobs.patch_size,
        knobs.overlap,
        knobs.size_multiple,
        knobs.max_window_pixels,
    )
    return TiledLayout(img_size, tiling_dims, plan, knobs.max_batch_size)


def plan_from_profile(
    profile: NetworkProfile,
    img_size: Sequence[int],
    tiling_dims: Sequence[int],
    world_size: int,
    knobs: TilingKnobs,
    budget_bytes: int,
    device: torch.device,
    itemsize: int,
) -> TiledLayout:
    """The automatic layout from a (measured or agreed) profile: :func:`~distinv.tiling.autotune.choose_plan`."""
    auto = choose_plan(
        profile,
        img_size,
        tiling_dims,
        world_size,
        budget_bytes,
        overlap=knobs.overlap,
        size_multiple=knobs.size_multiple,
        patch_size=knobs.patch_size,
        max_batch_size=knobs.max_batch_size,
        max_window_pixels=knobs.max_window_pixels,
        itemsize=itemsize,
        headroom=CPU_MEMORY_HEADROOM if device.type == "cpu" else MEMORY_HEADROOM,
    )
    return TiledLayout(tuple(img_size), tuple(tiling_dims), auto.plan, auto.batch, auto)


def measured_profile(
    network: object,
    probe: Callable[[torch.Tensor], torch.Tensor],
    img_size: Sequence[int],
    tiling_dims: Sequence[int],
    size_multiple: int,
    device: torch.device,
    dtype: torch.dtype,
    budget_bytes: int,
) -> tuple[NetworkProfile, list[tuple[int, ...]]]:
    """``network``'s profile on the probe windows of this signal (measured once per network and key), and the
    probe windows themselves."""
    samples, channels = int(img_size[0]), int(img_size[1])
    shapes = default_probe_shapes([img_size[d] for d in tiling_dims], size_multiple, samples, device)
    key = (str(device), dtype, samples, channels, tuple(tuple(s) for s in shapes))

    def measure() -> NetworkProfile:
        return profile_network(
            probe, channels, shapes, samples=samples, device=device, dtype=dtype, budget_bytes=budget_bytes
        )

    return cached_profile(network, key, measure), shapes


def plan_automatic(
    ctx: DistributedContext,
    network: object,
    probe: Callable[[torch.Tensor], torch.Tensor],
    img_size: Sequence[int],
    tiling_dims: Sequence[int],
    knobs: TilingKnobs,
    dtype: torch.dtype,
) -> TiledLayout:
    """Measure (every rank, the same probe windows), agree on the largest costs and the smallest budget (one
    all-reduce; a probe a rank could not run counts as infinitely costly), and choose: the same layout on every
    rank. A failure while measuring on any rank is an error on every rank."""
    device = ctx.device
    budget = knobs.memory_budget or default_memory_budget(device)
    profile, shapes = ctx.run_agreed(
        "profiling the network (automatic tiling)",
        lambda: measured_profile(network, probe, img_size, tiling_dims, knobs.size_multiple, device, dtype, budget),
    )
    count = len(shapes)
    values = torch.full((count + 1, 2), math.inf, dtype=torch.float64)
    values[: len(profile.probes)] = profile.as_tensor()
    values[count] = -float(budget)
    values = ctx.all_reduce(values.to(device), op=dist.ReduceOp.MAX).cpu()
    kept = [i for i in range(count) if math.isfinite(values[i, 0])]
    agreed = NetworkProfile(tuple(profile.probes[i] for i in kept)).with_values(values[kept])
    itemsize = torch.finfo(dtype).bits // 8
    return plan_from_profile(
        agreed, img_size, tiling_dims, ctx.world_size, knobs, int(-values[count, 1]), device, itemsize
    )


def size_multiple_of(processor: object) -> int:
    """The spatial size multiple a network needs: its ``size_multiple`` attribute if it has one (wrappers pass
    on their network's), 8 for DRUNet's three stride-2 stages, else 1."""
    from deepinv.models import DRUNet

    declared = getattr(processor, "size_multiple", None)
    if isinstance(declared, int):
        return declared
    return 8 if isinstance(processor, DRUNet) else 1


def network_dtype(processor: object) -> torch.dtype:
    """The dtype a network computes in: its first floating-point parameter's, else torch's default."""
    if isinstance(processor, torch.nn.Module):
        for p in processor.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.get_default_dtype()


def check_knobs(knobs: TilingKnobs) -> None:
    """Raise a ValueError naming the knob for values no plan can take (before any collective)."""
    batch = knobs.max_batch_size
    if batch is not None and batch != "auto" and (isinstance(batch, str) or isinstance(batch, bool) or batch < 1):
        raise ValueError(f"max_batch_size={batch!r}: it must be at least 1, None (no limit) or 'auto'.")
    if isinstance(knobs.patch_size, str) and knobs.patch_size != "auto":
        raise ValueError(f"patch_size={knobs.patch_size!r}: give pixels per window and dim, None or 'auto'.")
    validate_tiling(None if knobs.patch_size == "auto" else knobs.patch_size, knobs.overlap, knobs.size_multiple)
