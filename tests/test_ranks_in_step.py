"""Ranks never fall out of step: every collective is reached by every rank or by none, a failure on one rank is an
error on every rank (and the group stays usable), and placements are explicit, never guessed."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from deepinv.physics import StackedLinearPhysics

from distinv import DistributedContext, distribute
from distinv.comm.context import PeerRankError
from distinv.placements.measurements import LocalMeasurements
from harness import RankFailure
from operators import make_operator, operator_list, relative_error

IMG = (1, 16, 16)


def blur_stack(ctx, k: int, **kwargs):
    factory = lambda i, device, shared: make_operator("blur", i, IMG).to(device)  # noqa: E731
    dphys = distribute(factory, ctx, num_operators=k, type_object="linear_physics", **kwargs)
    return dphys, StackedLinearPhysics(operator_list("blur", k, IMG))


def outcome(fn) -> str:
    """What a call did on this rank: 'ok', or the exception's type name."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__
    return "ok"


# ---------------------------------------------------------------- checks (every rank)
def check_verbose_dagger_keeps_ranks_in_step(ctx):
    torch.manual_seed(0)
    dphys, ref = blur_stack(ctx, 3)
    x = torch.rand(1, *IMG)
    dphys.A_dagger(dphys.A(x), solver="CG", max_iter=5, verbose=True)
    return relative_error(dphys.A_adjoint_A(x), ref.A_adjoint_A(x))


def check_wrong_length_list_fails_everywhere_then_next_call_is_right(ctx):
    torch.manual_seed(0)
    dphys, ref = blur_stack(ctx, 3)
    x = torch.rand(1, *IMG)
    y = ref.A(x)
    failed = outcome(lambda: dphys.A_adjoint([y[0], y[1]]))
    return failed, relative_error(dphys.A_adjoint(y), ref.A_adjoint(y))


def check_local_measurements_of_one_operator_on_two_ranks(ctx):
    torch.manual_seed(0)
    dphys, ref = blur_stack(ctx, 1)
    x = torch.rand(1, *IMG)
    y_local = dphys.A(x, gather=False)
    first = dphys.A_adjoint(y_local)
    second = dphys.A_adjoint(y_local)
    expected = ref.A_adjoint(ref.A(x))
    return isinstance(y_local, LocalMeasurements), relative_error(first, expected), relative_error(second, expected)


def check_mixed_placements_fail_everywhere(ctx):
    torch.manual_seed(0)
    dphys, ref = blur_stack(ctx, 2)
    x = torch.rand(1, *IMG)
    y = ref.A(x) if ctx.rank == 0 else dphys.A(x, gather=False)
    failed = outcome(lambda: dphys.A_adjoint(y))
    return failed, relative_error(dphys.A_adjoint(ref.A(x)), ref.A_adjoint(ref.A(x)))


def check_factory_failing_on_its_owner_fails_every_rank(ctx):
    def factory(i, device, shared):
        if i == 1:
            raise RuntimeError("operator 1 cannot be built")
        return make_operator("blur", i, IMG)

    failed = outcome(lambda: distribute(factory, ctx, num_operators=2, type_object="linear_physics"))
    torch.manual_seed(0)
    dphys, ref = blur_stack(ctx, 2)
    x = torch.rand(1, *IMG)
    return failed, relative_error(dphys.A_adjoint_A(x), ref.A_adjoint_A(x))


def check_network_failing_on_one_rank_fails_every_rank(ctx):
    def network(x, sigma):
        if ctx.rank == ctx.world_size - 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated on one rank)")
        return x

    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32)
    failed = outcome(lambda: distribute(network, ctx, type_object="denoiser", overlap=0)(x, 0.1))
    ok = distribute(lambda x, sigma: 2 * x, ctx, type_object="denoiser", overlap=0)(x, 0.1)
    return failed, torch.equal(ok, 2 * x)


def check_peer_error_names_the_failing_rank(ctx):
    error = ValueError("bad input on the last rank") if ctx.rank == ctx.world_size - 1 else None
    try:
        ctx.agree("a step", error)
    except PeerRankError as exc:
        return "peer", str(exc)
    except ValueError as exc:
        return "own", str(exc)
    return "none", ""


def check_debug_mode_catches_a_shape_desync(ctx):
    t = torch.zeros(2 + ctx.rank)
    dist.all_reduce(t)


def check_argument_errors_come_before_any_collective(ctx):
    """Rank 0 alone makes calls with bad arguments: if any of them reached a collective first, the next, valid
    calls would pair with it and fail or hang."""
    torch.manual_seed(0)
    dphys, ref = blur_stack(ctx, 2)
    x = torch.rand(1, *IMG)
    y = ref.A(x)
    errors = []
    if ctx.rank == 0:
        errors.append(outcome(lambda: dphys.A_dagger(y, solver="lsqr")))
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        errors.append(outcome(lambda: distribute(net, ctx, type_object="denoiser", patch_size=-8)))
        errors.append(outcome(lambda: distribute(net, ctx, type_object="denoiser", memory_budget="lots")))
    return errors, relative_error(dphys.A_adjoint_A(x), ref.A_adjoint_A(x))


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("world_size", [2])
def test_verbose_a_dagger_does_not_leave_a_collective_behind(ranks, world_size):
    assert max(ranks(world_size).run(check_verbose_dagger_keeps_ranks_in_step)) < 1e-5


@pytest.mark.parametrize("world_size", [2])
def test_a_wrong_length_measurement_list_is_refused_on_every_rank(ranks, world_size):
    for failed, error in ranks(world_size).run(check_wrong_length_list_fails_everywhere_then_next_call_is_right):
        assert failed == "ValueError"
        assert error < 1e-5


@pytest.mark.parametrize("world_size", [2])
def test_local_measurements_are_marked_and_reused_without_a_hang(ranks, world_size):
    for marked, first, second in ranks(world_size).run(check_local_measurements_of_one_operator_on_two_ranks):
        assert marked
        assert first < 1e-5 and second < 1e-5


@pytest.mark.parametrize("world_size", [2])
def test_ranks_passing_different_placements_fail_together(ranks, world_size):
    for failed, error in ranks(world_size).run(check_mixed_placements_fail_everywhere):
        assert failed == "ValueError"
        assert error < 1e-5


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_factory_raising_on_its_owner_is_an_error_on_every_rank(ranks, world_size):
    results = ranks(world_size).run(check_factory_failing_on_its_owner_fails_every_rank)
    owner = 1 % world_size
    for rank, (failed, error) in enumerate(results):
        assert failed == ("RuntimeError" if rank == owner else "PeerRankError")
        assert error < 1e-5


@pytest.mark.parametrize("world_size", [2])
def test_a_network_failing_on_one_rank_fails_every_rank_and_the_group_goes_on(ranks, world_size):
    results = ranks(world_size).run(check_network_failing_on_one_rank_fails_every_rank)
    assert [failed for failed, _ in results] == ["PeerRankError", "OutOfMemoryError"]
    assert all(ok for _, ok in results)


@pytest.mark.parametrize("world_size", [3])
def test_the_other_ranks_are_told_which_rank_failed_and_why(ranks, world_size):
    results = ranks(world_size).run(check_peer_error_names_the_failing_rank)
    assert results[-1][0] == "own"
    for kind, message in results[:-1]:
        assert kind == "peer"
        assert "rank(s) [2]" in message and "bad input on the last rank" in message


@pytest.mark.parametrize("world_size", [2])
def test_the_harness_runs_with_pytorchs_collective_checking(ranks, world_size):
    # PyTorch's check raises on a rank that sees the mismatch; the other rank may stay in the collective until the
    # harness gives up on it, so the failure is read from the ranks that answered
    with pytest.raises(RankFailure, match="(?i)mismatch|shape|size"):
        ranks(world_size).run(check_debug_mode_catches_a_shape_desync, timeout=60)


def test_debug_switch_turns_on_pytorchs_collective_checking(monkeypatch):
    from distinv.bench.launch import free_port

    calls = []
    monkeypatch.setattr(dist, "set_debug_level", lambda level: calls.append(level))
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with DistributedContext(device_mode="cpu", debug=True) as ctx:
        assert ctx.is_distributed
    assert calls == [dist.DebugLevel.DETAIL]


@pytest.mark.parametrize("world_size", [2])
def test_argument_errors_are_raised_before_any_collective(ranks, world_size):
    results = ranks(world_size).run(check_argument_errors_come_before_any_collective)
    assert results[0][0] == ["ValueError"] * 3 and results[1][0] == []
    assert all(error < 1e-5 for _, error in results)
