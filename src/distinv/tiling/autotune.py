"""Automatic tiling: from a network's measured profile (:mod:`distinv.tiling.profiling`), the windows and the batch that
minimise predicted time within a memory budget.

Every candidate plan (owned patches from small to the whole signal, and the fewest-windows plans under growing
window limits) with every batch from 1 to a rank's window count. Predicted time per rank: the sum over its network
calls. Predicted memory per rank: its largest call, the batch's input copy, the window outputs it holds until the
gather, and two full-size buffers (the gathered pieces and the output). The fastest plan whose predicted memory
times a headroom (1.25 on GPU, 2 on CPU) fits the budget wins; ties go to less memory. Calls larger than twice
the largest probe are not considered: the model does not know how the time per pixel goes there.

Windows come from :class:`~distinv.tiling.geometry.TilePlan` and are aligned to the network's size multiple, so the
memory spikes of odd shapes (cuDNN picks other algorithms for widths not divisible by 8) cannot happen
inside the engine. The overlap stays the caller's: it buys accuracy, not speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from distinv.tiling.geometry import TilePlan, round_up
from distinv.tiling.profiling import NetworkProfile

MAX_WINDOWS_PER_RANK = 256
# A plan's predicted memory times this must fit the budget. On a GPU the caching allocator's peak is what torch
# allocates; on CPU the resident-set peak also depends on the allocator's history (glibc raises its mmap
# threshold after large frees, so later tensors come from the heap and stay resident): measured up to 1.96x the
# prediction there (benchmarks/README.md).
MEMORY_HEADROOM = 1.25
CPU_MEMORY_HEADROOM = 2.0


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
            f"{'x'.join(map(str, window))}, overlap {self.plan.overlap[0]}), batch {self.batch}: predicted "
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
        total, largest, held = 0.0, 0, 0
        for size, group in plan.windows_by_size(rank).items():
            count = len(group)
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
        for size, group in plan.windows_by_size(rank).items():
            most = max(most, samples * min(batch, len(group)) * math.prod(size))
    return most


def candidate_tilings(
    shape: Sequence[int], world_size: int, overlap: int | Sequence[int], size_multiple: int
) -> list[tuple[int | None, int | None, TilePlan]]:
    """``(patch_size, max_window_pixels, plan)`` for owned patches growing by sqrt(2) from the halo (or the
    size multiple) to the whole signal, and the fewest-windows plans under window limits growing by 2; one
    per distinct grid, at most ``MAX_WINDOWS_PER_RANK`` windows per rank."""
    shape = tuple(shape)
    out: dict[tuple[int, ...], tuple[int | None, int | None, TilePlan]] = {}
    cap = MAX_WINDOWS_PER_RANK * world_size

    def add(patch: int | None, limit: int | None) -> None:
        try:
            plan = TilePlan.build(shape, world_size, patch, overlap, size_multiple, limit)
        except ValueError:
            return
        if len(plan.windows) <= cap and plan.grid not in out:
            out[plan.grid] = (patch, limit, plan)

    multiple = size_multiple
    widest = overlap if isinstance(overlap, int) else max(overlap)
    step = max(multiple, round_up(max(widest, 16), multiple))
    k = 0
    while True:
        patch = round_up(round(step * 2 ** (k / 2)), multiple)
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
    overlap: int | Sequence[int] = 0,
    size_multiple: int = 1,
    patch_size: int | Sequence[int] | None | str = "auto",
    max_batch_size: int | None | str = "auto",
    max_window_pixels: int | None = None,
    itemsize: int = 4,
    headroom: float = MEMORY_HEADROOM,
) -> AutoPlan:
    """The fastest predicted (windows, batch) for a signal of ``img_size`` ``(B, C, *spatial)`` tiled over
    ``tiling_dims`` within ``budget_bytes`` per rank. A ``patch_size`` other than ``"auto"`` fixes the
    windows (``None``: the default fewest-windows plan); a ``max_batch_size`` other than ``"auto"`` fixes the batch
    (``None``: all of a rank's same-size windows at once); ``max_window_pixels`` applies to a fixed
    ``patch_size=None``; ``headroom``: the factor on predicted memory (``CPU_MEMORY_HEADROOM`` for CPU ranks).

    :raises ValueError: when no candidate fits the budget (naming the smallest memory any would need).
    """
    samples, channels = int(img_size[0]), int(img_size[1])
    shape = tuple(int(img_size[d]) for d in tiling_dims)
    if patch_size == "auto":
        tilings = candidate_tilings(shape, world_size, overlap, size_multiple)
    else:
        fixed = TilePlan.build(shape, world_size, patch_size, overlap, size_multiple, max_window_pixels)
        tilings = [(patch_size, max_window_pixels, fixed)]
    reach = 2 * profile.probes[-1].pixels
    best, smallest = None, None
    for patch, limit, plan in tilings:
        most = max(len(plan.windows_of(r)) for r in range(world_size)) or 1
        if max_batch_size == "auto":
            batches = sorted({min(2**i, most) for i in range(most.bit_length() + 1)})
        else:
            batches = [most if max_batch_size is None else min(int(max_batch_size), most)]
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
