"""What NCCL needs of the engine, checked on real gloo groups: two ranks on one GPU refused on every rank, every
tensor of a collective on the rank's device (debug mode), a rank with no windows at a group's first halo
exchange, a factory's shared object placed on each rank's own device, deepinv's context on this rank's device."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from deepinv.optim.data_fidelity import L2

from distinv import DistributedDataFidelity, LaunchError, distribute
from distinv.bench.engines import deepinv_context
from distinv.comm.context import refuse_shared_gpus
from distinv.comm.halo import Transfer, exchange


def check_shared_gpus_refused(ctx, identities):
    try:
        refuse_shared_gpus(identities[ctx.rank], ctx.timeout)
    except LaunchError as error:
        return str(error)
    return None


def test_two_ranks_on_one_gpu_are_refused_on_every_rank_naming_the_ranks_and_the_gpu(ranks):
    # both processes see their GPU as cuda:0 (CUDA_VISIBLE_DEVICES=0 and two torchrun processes): same UUID
    fake = [("node1", "GPU-aaaa"), ("node1", "GPU-aaaa"), ("node1", "GPU-bbbb")]
    messages = ranks(3).run(check_shared_gpus_refused, fake)
    assert all(m is not None and "ranks [0, 1] on GPU GPU-aaaa of node1" in m for m in messages)
    assert all("one rank per GPU" in m for m in messages)


def test_ranks_on_distinct_gpus_or_on_other_hosts_pass_the_shared_gpu_check(ranks):
    fake = [("node1", "GPU-aaaa"), ("node2", "GPU-aaaa"), ("node1", "GPU-bbbb")]
    assert ranks(3).run(check_shared_gpus_refused, fake) == [None, None, None]


def check_off_device_tensor_refused(ctx):
    device, debug = ctx.device, ctx.debug
    ctx.device, ctx.debug = torch.device("meta"), True  # as a GPU rank whose tensor stayed on the host
    try:
        for collective in (ctx.all_reduce, ctx.broadcast, ctx.all_gather):
            with pytest.raises(RuntimeError, match=r"a tensor on cpu was handed to a collective.*move it to ctx"):
                collective(torch.ones(3))
    finally:
        ctx.device, ctx.debug = device, debug
    return float(ctx.all_reduce(torch.ones(1)))  # the ranks are still in step


def test_in_debug_mode_a_tensor_off_the_ranks_device_is_refused_before_its_collective(ranks):
    assert ranks(2).run(check_off_device_tensor_refused) == [2.0, 2.0]


def check_first_exchange_without_rank(ctx):
    group = ctx._point_to_point_group()  # a new group, as a context makes it: this is its first exchange
    p2p, ctx.p2p_group = ctx.p2p_group, group
    try:
        pieces = {0: torch.full((4,), 10.0), 1: torch.full((4,), 11.0)}
        transfers = [Transfer(0, 1, 0), Transfer(1, 0, 1)]  # rank 2 has no windows: it takes part in none
        got = {}
        mine = [t for t in transfers if ctx.rank in (t.source, t.target)]
        exchange(ctx, mine, lambda i: pieces[mine[i].source], lambda i: torch.empty(4), got.__setitem__)
        return [float(v[0]) for v in got.values()]
    finally:
        ctx.p2p_group = p2p
        dist.destroy_process_group(group)


def test_a_rank_with_no_windows_at_a_groups_first_halo_exchange_leaves_no_peer_waiting(ranks):
    assert ranks(3).run(check_first_exchange_without_rank) == [[11.0], [10.0], []]


def check_shared_object_arrives(ctx):
    mine = {"kernel": torch.arange(4.0) * (ctx.rank + 1), "name": f"rank {ctx.rank}", "sizes": (3, 5)}
    got = ctx.broadcast_shared(mine, src=0)
    return got["kernel"].tolist(), got["name"], got["sizes"], got["kernel"].device.type, got is mine


def test_a_factorys_shared_object_arrives_from_rank_0_on_every_rank_and_rank_0_keeps_its_own(ranks):
    results = ranks(2).run(check_shared_object_arrives)
    assert [r[:4] for r in results] == [([0.0, 1.0, 2.0, 3.0], "rank 0", (3, 5), "cpu")] * 2
    assert [r[4] for r in results] == [True, False]


def check_one_fidelity_for_k_operators(ctx):
    fidelity = distribute(L2(), ctx, num_operators=3)
    return isinstance(fidelity, DistributedDataFidelity) and fidelity.single is not None


def test_one_data_fidelity_with_num_operators_is_that_fidelity_for_every_operator_not_a_factory(ranks):
    assert ranks(2).run(check_one_fidelity_for_k_operators) == [True, True]


def test_deepinvs_context_takes_this_ranks_local_rank_and_device_and_leaves_the_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)  # submitit and srun set none
    theirs = deepinv_context(torch.device("cpu"), local_rank=3)
    assert theirs.local_rank == 3 and theirs.device == torch.device("cpu")
    assert "LOCAL_RANK" not in os.environ
