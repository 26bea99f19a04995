"""The executor: windows cut, run in batches, owned regions kept and assembled, on its own."""

from __future__ import annotations

import pytest
import torch

from distinv.tiling.executor import assemble, cut_from, local_tiles, run_agreed, run_windows, window_call
from distinv.tiling.planner import TilingKnobs, plan_fixed


def layout_of(shape, world, batch=None, patch=8, overlap=4):
    return plan_fixed(shape, tuple(range(2, len(shape))), world, TilingKnobs(patch, overlap, 1, batch))


def test_owned_regions_of_all_ranks_partition_the_signal():
    shape = (2, 3, 24, 20)
    x = torch.rand(shape)
    out = torch.full(shape, float("nan"))
    identity = window_call(lambda w, sigma: w, 0.1, shape, (), {})
    for rank in range(3):
        layout = layout_of(shape, 3)
        tiles = local_tiles(layout, run_windows(rank, layout, cut_from(x, layout), identity))
        for index, piece in tiles.pieces:
            out[index] = piece
    assert torch.equal(out, x)


def test_same_size_windows_are_batched_up_to_the_batch_size():
    shape = (1, 1, 16, 16)
    seen = []
    call = window_call(lambda w, sigma: seen.append(w.shape[0]) or w, 0.1, shape, (), {})
    layout = layout_of(shape, 1, batch=3, overlap=0)  # 2x2 windows of 8x8
    run_windows(0, layout, cut_from(torch.rand(shape), layout), call)
    assert seen == [3, 1]


def test_sigma_reaches_each_window_as_a_number_per_sample_or_map():
    shape = (2, 1, 16, 16)
    layout = layout_of(shape, 1, batch=None)
    x = torch.ones(shape)
    per_sample = torch.tensor([1.0, 3.0])
    noise_map = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    for sigma, expected in [(0.5, x * 0.5), (per_sample, x * per_sample.view(2, 1, 1, 1)), (noise_map, noise_map)]:
        call = window_call(
            lambda w, s: w * (s.view(-1, 1, 1, 1) if getattr(s, "ndim", 0) == 1 else s), sigma, shape, (), {}
        )
        out = torch.empty(shape)
        for index, piece in local_tiles(layout, run_windows(0, layout, cut_from(x, layout), call)).pieces:
            out[index] = piece
        assert torch.equal(out, expected)
    assert window_call(lambda w: w, None, shape, (), {}).kind == "none"
    with pytest.raises(ValueError, match="sigma of shape"):
        window_call(lambda w, s: w, torch.ones(3), shape, (), {})


def test_a_processor_that_changes_the_shape_is_named():
    shape = (1, 1, 16, 16)
    layout = layout_of(shape, 1)
    call = window_call(lambda w, sigma: w[..., :-1], 0.1, shape, (), {})
    with pytest.raises(ValueError, match="keep the input's shape"):
        run_windows(0, layout, cut_from(torch.rand(shape), layout), call)


def check_assembled_output(ctx):
    shape = (1, 2, 30, 18)
    x = torch.arange(torch.Size(shape).numel(), dtype=torch.float64).reshape(shape)
    layout = layout_of(shape, ctx.world_size)
    half = window_call(lambda w, sigma: (w / 2).to(torch.float16), 0.1, shape, (), {})
    pieces, dtype = run_agreed(ctx, layout, cut_from(x, layout), half, x.dtype)
    out = assemble(ctx, layout, pieces, dtype)
    return out.dtype, torch.equal(out, (x / 2).to(torch.float16))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_assembly_gives_every_rank_the_whole_output_in_the_networks_dtype(ranks, world_size):
    assert ranks(world_size).run(check_assembled_output) == [(torch.float16, True)] * world_size
