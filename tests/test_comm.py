"""Gathers of uneven items, sums over ranks and a module made the same everywhere, on real gloo groups."""

from __future__ import annotations

import pytest
import torch

from distinv.comm.gather import broadcast_module_state, exchange_layout, gather_items, sum_over_ranks

OWNERS = (0, 1, 1, 0, 2)  # item -> rank, for 3 ranks; fewer ranks take owner % world


def item(i: int) -> torch.Tensor:
    """Items of different shapes and dtypes, complex included."""
    g = torch.Generator().manual_seed(i)
    if i % 3 == 0:
        return torch.randn(2, 3 + i, generator=g)
    if i % 3 == 1:
        return torch.complex(torch.randn(4, generator=g), torch.randn(4, generator=g))
    return torch.randint(0, 100, (i, 2), generator=g, dtype=torch.int64)


def check_gathers(ctx, strategy):
    owners = tuple(o % ctx.world_size for o in OWNERS)
    mine = [i for i, o in enumerate(owners) if o == ctx.rank]
    local = [item(i) for i in mine]
    layout = exchange_layout(ctx, owners, mine, local) if strategy != "naive" else None
    gathered = gather_items(ctx, mine, local, len(owners), strategy, layout)
    return all(torch.equal(g, item(i)) for i, g in enumerate(gathered))


def check_sums(ctx):
    terms = [torch.full((2, 3), float(ctx.rank + 1))] if ctx.rank != 1 else []  # rank 1 has no term
    total = sum_over_ranks(ctx, terms, (2, 3), torch.float32, ctx.device)
    expected = sum(r + 1 for r in range(ctx.world_size) if r != 1)
    return torch.equal(total, torch.full((2, 3), float(expected)))


def check_module_state(ctx):
    torch.manual_seed(ctx.rank)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    net[1].running_mean += ctx.rank
    broadcast_module_state(ctx, net)
    return [t.sum().item() for t in [*net.parameters(), *net.buffers()]]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("strategy", ["concatenated", "broadcast", "naive"])
def test_every_gather_strategy_returns_every_item_on_every_rank(ranks, world_size, strategy):
    assert all(ranks(world_size).run(check_gathers, strategy))


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_rank_without_terms_adds_zeros_to_the_sum(ranks, world_size):
    assert all(ranks(world_size).run(check_sums))


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_module_is_made_rank_0s_on_every_rank(ranks, world_size):
    states = ranks(world_size).run(check_module_state)
    assert all(s == states[0] for s in states)
