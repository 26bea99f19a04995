"""The planner: knobs to a frozen layout, automatic plans from a profile, one cache key per image size."""

from __future__ import annotations

import pytest
import torch

from distinv.tiling.geometry import TilePlan
from distinv.tiling.planner import (
    TiledLayout,
    TilingKnobs,
    check_knobs,
    measured_profile,
    plan_fixed,
    plan_from_profile,
    tiling_dims_of,
)
from distinv.tiling.profiling import NetworkProfile, Probe


def profile() -> NetworkProfile:
    return NetworkProfile(tuple(Probe(4**k * 4096, 4**k * 4096 * 5e-6, 4**k * 4096 * 400) for k in range(4)))


def test_a_fixed_layout_is_the_tile_plan_of_the_knobs():
    knobs = TilingKnobs(patch_size=64, overlap=16, size_multiple=8, max_batch_size=2)
    layout = plan_fixed((1, 3, 200, 136), (2, 3), 3, knobs)
    assert layout.plan == TilePlan.build((200, 136), 3, 64, 16, 8)
    assert (layout.batch, layout.auto, layout.tiling_dims) == (2, None, (2, 3))


def test_a_layout_indexes_its_tiled_dims_and_knows_owned_shapes():
    layout = plan_fixed((2, 1, 8, 32, 48), (3, 4), 2, TilingKnobs(patch_size=16, overlap=0))
    window = layout.plan.windows[1]
    assert layout.index(window.owned_slices) == (slice(None), slice(None), slice(None), *window.owned_slices)
    assert layout.owned_shape(window) == (2, 1, 8, *window.owned_size)
    assert sum(torch.Size(layout.owned_shape(w)).numel() for w in layout.plan.windows) == 2 * 8 * 32 * 48


def test_an_automatic_layout_keeps_the_plan_it_chose():
    knobs = TilingKnobs(patch_size="auto", overlap=8, size_multiple=8, max_batch_size="auto")
    layout = plan_from_profile(profile(), (1, 3, 256, 256), (2, 3), 2, knobs, 10**10, torch.device("cpu"), 4)
    assert isinstance(layout, TiledLayout) and layout.auto is not None
    assert layout.plan is layout.auto.plan and layout.batch == layout.auto.batch


def test_profiles_are_cached_per_image_size_and_dtype():
    calls = []
    net = torch.nn.Conv2d(1, 1, 3, padding=1)

    def probe(x):
        calls.append(tuple(x.shape))
        return net(x)

    counts = []
    for size in (32, 32, 128):
        measured_profile(net, probe, (1, 1, size, size), (2, 3), 8, torch.device("cpu"), torch.float32, 10**9)
        counts.append(len(calls))
    assert counts[0] > 0 and counts[1] == counts[0]  # the same image size: measured once
    assert counts[2] > counts[1] and max(max(s[2:]) for s in calls) == 128  # a larger image: its own probes
    before = len(calls)
    measured_profile(net.double(), probe, (1, 1, 32, 32), (2, 3), 8, torch.device("cpu"), torch.float64, 10**9)
    assert len(calls) > before  # another dtype: measured again


@pytest.mark.parametrize(
    ("knobs", "named"),
    [
        (TilingKnobs(max_batch_size=0), "max_batch_size"),
        (TilingKnobs(max_batch_size="big"), "max_batch_size"),
        (TilingKnobs(patch_size="big"), "patch_size"),
        (TilingKnobs(overlap=-1), "overlap"),
        (TilingKnobs(patch_size=4, size_multiple=8), "patch_size"),
        (TilingKnobs(size_multiple=0), "size_multiple"),
    ],
)
def test_knobs_no_plan_can_take_are_named(knobs, named):
    with pytest.raises(ValueError, match=named):
        check_knobs(knobs)


def test_tiling_dims_are_normalised_and_checked():
    assert tiling_dims_of(5, None) == (2, 3, 4)
    assert tiling_dims_of(4, -1) == (3,)
    with pytest.raises(ValueError, match="tiling_dims"):
        tiling_dims_of(4, (1, 2))
