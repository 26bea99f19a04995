"""TilePlan: where the windows of a tiled denoiser lie, what each owns, and which rank runs it.

A signal's tiled dims (e.g. H, W, or D, H, W) are cut on a grid into **owned regions** that partition the
signal exactly. Each owned region grows by a **halo** on the sides where it meets another region (never past
the signal's border, where the network sees the true border as it would untiled) into a **window**: the
input the network runs on. Only the owned region of each window's output is kept.

Alignment: region boundaries and the halo are multiples of the network's size multiple ``m`` (8 for DRUNet,
whose 3 stride-2 stages need it), so every window starts on the network's grid; a window's size is a multiple
of ``m`` too, except where it ends at a border of a signal whose size is not (there the network pads as it
does for the whole signal). With a halo at least the receptive-field radius, the tiled output then equals the
untiled one.

All functions here are pure: every rank computes the same plan without talking.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from distinv.runtime.balance import assign_balanced_counts


@dataclass(frozen=True)
class Window:
    """One window: ``origin``/``size`` of the input it reads, ``owned_origin``/``owned_size`` of the output it
    keeps (all in pixels of the tiled dims, global coordinates), and the rank that runs it."""

    index: int
    origin: tuple[int, ...]
    size: tuple[int, ...]
    owned_origin: tuple[int, ...]
    owned_size: tuple[int, ...]
    rank: int

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + s) for o, s in zip(self.origin, self.size, strict=True))

    @property
    def owned_slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + s) for o, s in zip(self.owned_origin, self.owned_size, strict=True))

    @property
    def owned_in_window(self) -> tuple[slice, ...]:
        """Where the owned region lies inside the window's output."""
        return tuple(
            slice(oo - o, oo - o + s) for o, oo, s in zip(self.origin, self.owned_origin, self.owned_size, strict=True)
        )

    @property
    def pixels(self) -> int:
        return math.prod(self.size)

    @property
    def owned_pixels(self) -> int:
        return math.prod(self.owned_size)


@dataclass(frozen=True)
class TilePlan:
    """Windows over a signal of ``shape`` (tiled dims only) for ``world_size`` ranks; build with :meth:`build`."""

    shape: tuple[int, ...]
    overlap: tuple[int, ...]
    size_multiple: int
    world_size: int
    grid: tuple[int, ...]
    windows: tuple[Window, ...]

    @classmethod
    def build(
        cls,
        shape: Sequence[int],
        world_size: int,
        patch_size: int | Sequence[int] | None = None,
        overlap: int | Sequence[int] = 0,
        size_multiple: int = 1,
        max_window_pixels: int | None = None,
        rows_at_least: int = 1,
    ) -> TilePlan:
        """Plan the windows.

        :param shape: sizes of the tiled dims, e.g. ``(H, W)`` or ``(D, H, W)``.
        :param world_size: number of ranks.
        :param patch_size: target size of an owned region per dim (deepinv's ``patch_size``); ``None`` picks
            the fewest, largest windows: a multiple of ``world_size`` (so every rank runs the same number),
            the split that processes the fewest halo pixels, within ``max_window_pixels``.
        :param overlap: pixels added on each interior side (the halo), rounded up to ``size_multiple``.
        :param size_multiple: the network's size multiple (1: any size).
        :param max_window_pixels: the largest window (pixels of the tiled dims) that fits in memory; ``None``:
            no limit.
        :param rows_at_least: the fewest segments along the first tiled dim (a plan whose rows are dealt to ranks
            in contiguous bands needs one per rank).
        :raises ValueError: naming the argument, when no plan meets them.
        """
        shape = tuple(int(s) for s in shape)
        nd = len(shape)
        if nd == 0 or any(s < 1 for s in shape):
            raise ValueError(f"shape={shape}: give the sizes (>= 1) of the tiled dims.")
        if world_size < 1:
            raise ValueError(f"world_size={world_size}: it must be at least 1.")
        validate_tiling(patch_size, overlap, size_multiple)
        halos = tuple(round_up(h, size_multiple) for h in _per_dim(overlap, nd, "overlap"))
        if patch_size is not None:
            patches = _per_dim(patch_size, nd, "patch_size")
            grid = tuple(
                min(_units(s, size_multiple), max(1, math.ceil(s / p))) for s, p in zip(shape, patches, strict=True)
            )
            if grid[0] < rows_at_least:
                raise ValueError(
                    f"patch_size={patch_size} cuts {shape[0]} rows into {grid[0]} windows, fewer than the "
                    f"{rows_at_least} bands asked for: use a patch of at most {shape[0] // rows_at_least} pixels."
                )
        else:
            grid = _best_grid(shape, halos, size_multiple, world_size, max_window_pixels, rows_at_least)
        return cls._from_grid(shape, halos, size_multiple, world_size, grid)

    @classmethod
    def _from_grid(cls, shape, halos, multiple, world_size, grid) -> TilePlan:
        per_dim = [_segments(s, n, h, multiple) for s, n, h in zip(shape, grid, halos, strict=True)]
        boxes = list(itertools.product(*per_dim))
        costs = [math.prod(w[1] for w in box) for box in boxes]
        ranks = assign_balanced_counts(costs, world_size)
        windows = tuple(
            Window(
                index=i,
                origin=tuple(seg[0] for seg in box),
                size=tuple(seg[1] for seg in box),
                owned_origin=tuple(seg[2] for seg in box),
                owned_size=tuple(seg[3] for seg in box),
                rank=ranks[i],
            )
            for i, box in enumerate(boxes)
        )
        return cls(shape, halos, multiple, world_size, tuple(grid), windows)

    def windows_of(self, rank: int) -> list[Window]:
        """The windows ``rank`` runs, in index order."""
        return [w for w in self.windows if w.rank == rank]

    def windows_by_size(self, rank: int) -> dict[tuple[int, ...], list[Window]]:
        """``rank``'s windows grouped by size (the windows one network call can batch), in index order."""
        groups: dict[tuple[int, ...], list[Window]] = {}
        for w in self.windows_of(rank):
            groups.setdefault(w.size, []).append(w)
        return groups

    def sources_of(self, target: Window) -> list[Window]:
        """The windows whose owned regions ``target``'s window reads (itself included), in index order: per dim,
        the owned segments its interval meets (found by bisection), so the cost grows with the neighbours, not
        with the number of windows."""
        per_dim = []
        for d, (origin, size) in enumerate(zip(target.origin, target.size, strict=True)):
            starts = self._owned_starts(d)
            first = bisect.bisect_right(starts, origin) - 1
            last = bisect.bisect_left(starts, origin + size) - 1
            per_dim.append(range(max(first, 0), last + 1))
        return [self.windows[_ravel(cell, self.grid)] for cell in itertools.product(*per_dim)]

    def _owned_starts(self, dim: int) -> list[int]:
        """The owned segments' first pixels along tiled dim ``dim``, in grid order."""
        stride = math.prod(self.grid[dim + 1 :])
        return [self.windows[j * stride].owned_origin[dim] for j in range(self.grid[dim])]

    def summary(self, batch: int = 1, channels: int = 1, itemsize: int = 4) -> dict:
        """Per rank: windows, pixels processed and owned; the predicted imbalance (most loaded rank's
        processed pixels over the mean) and the bytes each rank receives in the output all-gather."""
        processed = [sum(w.pixels for w in self.windows_of(r)) for r in range(self.world_size)]
        owned = [sum(w.owned_pixels for w in self.windows_of(r)) for r in range(self.world_size)]
        per_pixel = batch * channels * itemsize
        widest = max(owned) * per_pixel
        mean = sum(processed) / self.world_size
        return {
            "grid": self.grid,
            "overlap": self.overlap,
            "windows_per_rank": [len(self.windows_of(r)) for r in range(self.world_size)],
            "pixels_processed_per_rank": processed,
            "pixels_owned_per_rank": owned,
            "overhead": sum(processed) / math.prod(self.shape),
            "predicted_imbalance": max(processed) / mean if mean else 1.0,
            "bytes_received_per_rank": (self.world_size - 1) * widest,
        }


def validate_tiling(patch_size: int | Sequence[int] | None, overlap: int | Sequence[int], size_multiple: int) -> None:
    """Raise a ValueError naming the argument if patch, overlap or size multiple cannot make a plan."""
    multiple, halo = size_multiple, overlap
    if multiple < 1:
        raise ValueError(f"size_multiple={multiple}: the network's size multiple must be at least 1.")
    halos = [halo] if isinstance(halo, int) else list(halo)
    if any(h < 0 for h in halos):
        raise ValueError(f"overlap={halo}: the halo cannot be negative.")
    if patch_size is None:
        return
    patches = [patch_size] if isinstance(patch_size, int) else list(patch_size)
    for p in patches:
        if p < multiple:
            raise ValueError(
                f"patch_size={patch_size} is smaller than the network's size multiple {multiple}: use a patch of "
                f"at least {multiple} pixels."
            )
        for h in halos:
            if round_up(h, multiple) > p:
                raise ValueError(
                    f"overlap={halo} (rounded up to a multiple of {multiple}) is larger than patch_size="
                    f"{patch_size}: windows would be mostly halo. Use a larger patch or a smaller overlap."
                )


def _per_dim(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * nd
    value = tuple(int(v) for v in value)
    if len(value) != nd:
        raise ValueError(f"{name}={value} has {len(value)} entries for {nd} tiled dims.")
    return value


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``value``."""
    return -(-value // multiple) * multiple


def _ravel(cell: Sequence[int], grid: Sequence[int]) -> int:
    """The window index of grid cell ``cell`` (windows are numbered in row-major grid order)."""
    index = 0
    for c, n in zip(cell, grid, strict=True):
        index = index * n + c
    return index


def _units(length: int, multiple: int) -> int:
    """How many aligned blocks (the last may be partial) a dim has: the most segments it can be cut into."""
    return -(-length // multiple)


def _segments(length: int, n: int, halo: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Cut one dim into ``n`` owned segments with aligned boundaries, as evenly as the alignment allows;
    returns (window origin, window size, owned origin, owned size) per segment."""
    units = _units(length, multiple)
    bounds = [min(length, (j * units // n) * multiple) for j in range(n + 1)]
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        w0 = max(0, start - halo)
        w1 = min(length, stop + halo)
        out.append((w0, w1 - w0, start, stop - start))
    return out


def _best_grid(shape, halos, multiple, world_size, max_window_pixels, rows_at_least=1) -> tuple[int, ...]:
    """The grid with a multiple of ``world_size`` windows that processes the fewest pixels (fewest windows
    first: larger windows waste less on halos), each window within ``max_window_pixels``, with at least
    ``rows_at_least`` segments along the first dim."""
    limits = [_units(s, multiple) for s in shape]
    if rows_at_least > limits[0]:
        raise ValueError(
            f"{shape[0]} rows at size multiple {multiple} cannot be cut into {rows_at_least} bands: use fewer ranks."
        )
    most = math.prod(limits)
    per_rank = 1
    while world_size * per_rank <= most:
        best = None
        for grid in _factorizations(world_size * per_rank, len(shape), limits):
            if grid[0] < rows_at_least:
                continue
            segments = [_segments(s, n, h, multiple) for s, n, h in zip(shape, grid, halos, strict=True)]
            largest = math.prod(max(seg[1] for seg in segs) for segs in segments)
            if max_window_pixels is not None and largest > max_window_pixels:
                continue
            processed = math.prod(sum(seg[1] for seg in segs) for segs in segments)
            key = (processed, [-g for g in grid])  # then prefer cutting outer dims: contiguous slabs
            if best is None or key < best[0]:
                best = (key, grid)
        if best is not None:
            return best[1]
        per_rank += 1
    # No grid of a multiple of world_size windows fits (a small signal on many ranks, or an awkward world size):
    # one window per aligned block, the smallest windows there are; the ranks own unequal shares, some none.
    finest = [_segments(s, n, h, multiple) for s, n, h in zip(shape, limits, halos, strict=True)]  # rows: limits[0]
    if max_window_pixels is None or math.prod(max(seg[1] for seg in segs) for segs in finest) <= max_window_pixels:
        return tuple(limits)
    raise ValueError(
        f"No window of a {shape} signal fits max_window_pixels={max_window_pixels} at size multiple {multiple}: "
        "raise max_window_pixels or give patch_size."
    )


def _factorizations(n: int, parts: int, limits: Sequence[int]):
    """Ordered tuples of ``parts`` positive ints with product ``n``, each within its limit."""
    if parts == 1:
        if n <= limits[0]:
            yield (n,)
        return
    for first in range(1, min(n, limits[0]) + 1):
        if n % first == 0:
            for rest in _factorizations(n // first, parts - 1, limits[1:]):
                yield (first, *rest)
