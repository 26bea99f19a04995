"""The halo exchange's neighbour index and the exchange itself, against brute force and the full signal."""

from __future__ import annotations

import itertools

import pytest
import torch

from distinv.tiling.executor import cut_from, local_tiles, run_windows, window_call
from distinv.tiling.geometry import TilePlan
from distinv.tiling.halo import exchange_windows
from distinv.tiling.planner import TilingKnobs, plan_fixed


def meets(window, source) -> bool:
    return all(
        max(o, so) < min(o + s, so + ss)
        for o, s, so, ss in zip(window.origin, window.size, source.owned_origin, source.owned_size, strict=True)
    )


@pytest.mark.parametrize(
    ("shape", "world", "patch", "overlap", "multiple"),
    [((64, 64), 2, 16, 8, 8), ((100, 37), 3, 16, 12, 1), ((24, 40, 16), 4, 8, 8, 8), ((17, 300), 1, None, 5, 1)],
)
def test_sources_of_a_window_are_exactly_the_owned_regions_it_reads(shape, world, patch, overlap, multiple):
    plan = TilePlan.build(shape, world, patch, overlap, multiple)
    for window in plan.windows:
        brute = [s.index for s in plan.windows if meets(window, s)]
        assert [s.index for s in plan.sources_of(window)] == brute


def check_exchange_rebuilds_every_window(ctx, shape, patch, overlap):
    layout = plan_fixed(shape, tuple(range(2, len(shape))), ctx.world_size, TilingKnobs(patch, overlap))
    x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    identity = window_call(lambda w, sigma: w, 0.0, shape, (), {})
    tiles = local_tiles(layout, run_windows(ctx.rank, layout, cut_from(x, layout), identity))
    owned = dict(zip(tiles.windows, [p for _, p in tiles.pieces], strict=True))
    windows = exchange_windows(ctx, layout, owned, next(iter(owned.values()), None))
    return all(torch.equal(windows[w.index], x[layout.index(w.slices)]) for w in layout.plan.windows_of(ctx.rank))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_a_halo_exchange_gives_each_rank_its_windows_of_the_full_signal(ranks, world_size):
    for shape, patch, overlap in itertools.product([(1, 2, 40, 24), (1, 1, 12, 16, 20)], [8], [3, 8]):
        assert all(ranks(world_size).run(check_exchange_rebuilds_every_window, shape, patch, overlap))
