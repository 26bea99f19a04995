"""The context counts the bytes each rank sends and receives, against the sizes of known collectives: all-reduce
``2 (p-1)/p n`` each way, all-gather ``(p-1) n`` each way, broadcast ``n`` from the source to every other rank,
a halo exchange exactly the halo's pixels, a gather of measurements what the owners hold."""

from __future__ import annotations

import pytest
import torch

from distinv import distribute
from distinv.tiling.halo import exchange_windows


def moved(ctx, work) -> tuple[int, int]:
    """Bytes ``work()`` sent and received on this rank."""
    sent, received = ctx.bytes_sent, ctx.bytes_received
    work()
    return ctx.bytes_sent - sent, ctx.bytes_received - received


def check_collectives(ctx):
    return {
        "all_reduce": moved(ctx, lambda: ctx.all_reduce(torch.ones(1000))),  # 4000 bytes
        "all_reduce_complex": moved(ctx, lambda: ctx.all_reduce(torch.ones(10, dtype=torch.complex64))),  # 80
        "all_gather": moved(ctx, lambda: ctx.all_gather(torch.ones(100, dtype=torch.float64))),  # 800 per rank
        "broadcast": moved(ctx, lambda: ctx.broadcast(torch.ones(64, dtype=torch.int32), src=1)),  # 256
    }


def check_halo_exchange(ctx):
    """Two bands of 8 rows of a 1x1x16x16 image, a 2-row halo: each window lacks 2 rows of 16 float32 pixels."""
    denoiser = distribute(lambda x, sigma: x, ctx, type_object="denoiser", patch_size=(8, 16), overlap=(2, 0))
    x = torch.rand(1, 1, 16, 16)
    layout = denoiser.layout_for(x.shape)
    owned = {w.index: x[layout.index(w.owned_slices)] for w in layout.plan.windows_of(ctx.rank)}
    return moved(ctx, lambda: exchange_windows(ctx, layout, owned, next(iter(owned.values()))))


def check_gathered_measurements(ctx):
    """``A(x)`` of K=4 identity-like operators on a 1x1x8x8 image, gathered: each rank receives the others'."""
    from deepinv.physics import Denoising

    physics = distribute([Denoising() for _ in range(4)], ctx)
    x = torch.rand(1, 1, 8, 8)
    physics.A(x)  # learns the layout once (cached)
    return moved(ctx, lambda: physics.A(x))


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_collective_counts_the_bytes_a_ring_algorithm_moves(ranks, world_size):
    p = world_size
    for rank, counts in enumerate(ranks(world_size).run(check_collectives)):
        ring = 2 * (p - 1) * 4000 // p
        assert counts["all_reduce"] == (ring, ring)
        assert counts["all_reduce_complex"] == (2 * (p - 1) * 80 // p,) * 2
        assert counts["all_gather"] == ((p - 1) * 800,) * 2
        assert counts["broadcast"] == ((256, 0) if rank == 1 else (0, 256))


def test_a_halo_exchange_moves_exactly_the_halo(ranks):
    halo = 2 * 16 * 4
    assert ranks(2).run(check_halo_exchange) == [(halo, halo), (halo, halo)]


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_single_process_moves_nothing_and_a_gather_moves_the_measurements(ranks, world_size):
    per_rank = ranks(world_size).run(check_gathered_measurements)
    if world_size == 1:
        assert per_rank == [(0, 0)]
        return
    one = 8 * 8 * 4  # one measurement, float32
    for sent, received in per_rank:  # each rank holds 2 of 4; an all-gather of 2 per rank, plus the agreement
        assert sent >= 2 * one and received >= 2 * one
        assert sent - 2 * one < 64 and received - 2 * one < 64  # the agreement's few integers
