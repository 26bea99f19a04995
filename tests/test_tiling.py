"""Properties of TilePlan (hypothesis): exact partition, alignment, halos only where windows meet, balance."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distinv.runtime.balance import assign_balanced_counts
from distinv.tiling.geometry import TilePlan

shapes = st.lists(st.integers(1, 70), min_size=1, max_size=3).map(tuple)


@st.composite
def plans(draw):
    shape = draw(shapes)
    multiple = draw(st.sampled_from([1, 2, 8]))
    world = draw(st.integers(1, 5))
    halo = draw(st.integers(0, 12))
    auto = draw(st.booleans())
    patch = None if auto else draw(st.integers(max(multiple, -(-halo // multiple) * multiple), 40))
    return TilePlan.build(shape, world, patch, halo, multiple), halo, multiple


@settings(max_examples=200, deadline=None)
@given(plans())
def test_owned_regions_partition_the_signal_exactly(case):
    plan, _, _ = case
    count = np.zeros(plan.shape, dtype=np.int32)
    for w in plan.windows:
        count[w.owned_slices] += 1
    assert (count == 1).all()


@settings(max_examples=200, deadline=None)
@given(plans())
def test_windows_are_aligned_and_contain_their_owned_region(case):
    plan, _, multiple = case
    for w in plan.windows:
        for d, length in enumerate(plan.shape):
            assert w.origin[d] % multiple == 0
            end = w.origin[d] + w.size[d]
            assert w.size[d] % multiple == 0 or end == length
            assert w.origin[d] <= w.owned_origin[d] and w.owned_origin[d] + w.owned_size[d] <= end


@settings(max_examples=200, deadline=None)
@given(plans())
def test_halos_only_where_windows_meet(case):
    plan, halo, multiple = case
    h = -(-halo // multiple) * multiple
    for w in plan.windows:
        for d, length in enumerate(plan.shape):
            before = w.owned_origin[d] - w.origin[d]
            after = w.origin[d] + w.size[d] - (w.owned_origin[d] + w.owned_size[d])
            assert before == min(h, w.owned_origin[d])  # none at the signal's start
            assert after == min(h, length - w.owned_origin[d] - w.owned_size[d])  # none at its end


@settings(max_examples=200, deadline=None)
@given(plans())
def test_window_counts_per_rank_differ_by_at_most_one(case):
    plan, _, _ = case
    counts = [len(plan.windows_of(r)) for r in range(plan.world_size)]
    assert max(counts) - min(counts) <= 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=2, max_size=3).map(tuple), st.integers(1, 8))
def test_default_plan_gives_every_rank_the_same_number_of_windows(shape, world):
    plan = TilePlan.build(shape, world, None, 16, 8)
    blocks = [-(-s // 8) for s in shape]  # aligned blocks per axis: a grid can cut each axis at most this often
    # cuts per axis up to `world` suffice: gcd(g_i, world) keeps a product divisible by world
    grids = itertools.product(*(range(1, min(b, world) + 1) for b in blocks))
    if any(math.prod(g) % world == 0 for g in grids):  # e.g. not 5 ranks over a 2 x 3 block image
        assert len(plan.windows) % world == 0
        assert len({len(plan.windows_of(r)) for r in range(world)}) == 1


def test_default_plan_uses_one_slab_per_rank_when_memory_allows():
    plan = TilePlan.build((1024, 1024), 2, None, 32, 8)
    assert plan.grid == (2, 1)
    assert [w.size for w in plan.windows] == [(544, 1024), (544, 1024)]
    assert plan.summary()["overhead"] == pytest.approx(1.0625)


def test_a_memory_budget_gives_more_smaller_windows():
    plan = TilePlan.build((1024, 1024), 2, None, 32, 8, max_window_pixels=300_000)
    assert max(w.pixels for w in plan.windows) <= 300_000
    assert len(plan.windows) % 2 == 0 and len(plan.windows) > 2


def test_snake_assignment_spreads_cost():
    ranks = assign_balanced_counts([9, 8, 7, 6, 5, 4], 3)
    loads = [sum(c for c, r in zip([9, 8, 7, 6, 5, 4], ranks, strict=True) if r == k) for k in range(3)]
    assert loads == [13, 13, 13]
