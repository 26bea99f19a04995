"""Automatic tiling: the cost model, the choice within a memory budget, and the same plan on every rank."""

from __future__ import annotations

import math

import pytest
import torch
from deepinv.models import DnCNN

from distinv import distribute
from distinv.runtime.memory import PeakMemory, parse_bytes
from distinv.tiling.autotune import choose_plan, predict
from distinv.tiling.geometry import TilePlan
from distinv.tiling.profiling import NetworkProfile, Probe, cached_profile, probe_shapes, profile_network

MiB = 2**20


def cpu_like_profile() -> NetworkProfile:
    """Per call: 20 ms overhead, then 5 us per pixel, 8 us past 2^18 pixels (caches); 200 bytes per pixel."""

    def seconds(p: int) -> float:
        return 0.02 + p * (5e-6 if p <= 2**18 else 8e-6)

    return NetworkProfile(tuple(Probe(p, seconds(p), 200 * p + MiB) for p in (2**12, 2**14, 2**16, 2**18, 2**20)))


# ---------------------------------------------------------------- model
def test_profile_interpolates_between_probes_and_never_undercuts_the_smallest_call():
    profile = cpu_like_profile()
    for probe in profile.probes:
        assert profile.seconds(probe.pixels) == pytest.approx(probe.seconds)
        assert profile.peak_bytes(probe.pixels) == pytest.approx(probe.peak_bytes)
    assert profile.seconds(10) == pytest.approx(profile.probes[0].seconds)
    assert profile.probes[1].seconds < profile.seconds(2**15) < profile.probes[2].seconds
    # beyond the last probe: time per pixel does not fall, memory grows along the last segment
    assert profile.seconds(2**21) >= 2 * profile.seconds(2**20) * 0.999
    assert profile.peak_bytes(2**21) == pytest.approx(200 * 2**21 + MiB)


def test_probe_windows_are_aligned_grow_and_stay_inside_the_signal():
    shapes = probe_shapes((1000, 700), size_multiple=8, max_pixels=2**19)
    assert all(s % 8 == 0 for shape in shapes for s in shape)
    assert all(shape[0] <= 1000 and shape[1] <= 704 for shape in shapes)
    pixels = [math.prod(s) for s in shapes]
    assert pixels == sorted(pixels) and pixels[-1] <= 2**19
    # a thin signal: the long dim takes the pixels the short one cannot
    assert probe_shapes((64, 2048), 8, 2**19)[-1] == (64, 2048)


def test_predicted_time_sums_each_ranks_calls_and_memory_counts_its_largest_call():
    profile = cpu_like_profile()
    plan = TilePlan.build((512, 512), world_size=2, patch_size=128, overlap=16, size_multiple=8)
    seconds, memory = predict(profile, plan, batch=2, samples=1, channels=3)
    for rank in range(2):
        windows = plan.windows_of(rank)
        assert seconds[rank] >= len(windows) / 2 * profile.seconds(min(w.pixels for w in windows) * 2) * 0.999
        largest = 2 * max(w.pixels for w in windows)
        assert memory[rank] >= profile.peak_bytes(largest) + 2 * 3 * 512 * 512 * 4


# ---------------------------------------------------------------- choice
def test_choice_is_the_fastest_candidate_within_the_budget():
    profile, size = cpu_like_profile(), (1, 3, 1024, 1024)
    roomy = choose_plan(profile, size, (2, 3), 2, 10**12, overlap=32, size_multiple=8, headroom=1.0)
    # the CPU-like model punishes calls beyond 2^18 pixels and per-call overheads: mid-size windows win
    largest = max(w.pixels for w in roomy.plan.windows) * roomy.batch
    assert 2**15 < largest <= 2**18 + 2**16
    tight_budget = int(max(roomy.bytes_per_rank) * 0.6)
    tight = choose_plan(profile, size, (2, 3), 2, tight_budget, overlap=32, size_multiple=8, headroom=1.0)
    assert max(tight.bytes_per_rank) <= tight_budget
    kept = choose_plan(profile, size, (2, 3), 2, 2 * tight_budget, overlap=32, size_multiple=8, headroom=2.0)
    assert max(kept.bytes_per_rank) * 2.0 <= 2 * tight_budget
    assert max(tight.seconds_per_rank) >= max(roomy.seconds_per_rank)


def test_fixed_patch_tunes_only_the_batch():
    profile = NetworkProfile(tuple(Probe(p, 0.1 + 1e-7 * p, 100 * p) for p in (2**12, 2**16, 2**20)))  # GPU-like
    auto = choose_plan(profile, (1, 1, 512, 512), (2, 3), 1, 10**12, patch_size=64, max_batch_size="auto")
    assert auto.patch_size == 64 and len(auto.plan.windows) == 64
    assert auto.batch == 64  # overhead-bound calls: the whole batch at once


def test_a_budget_nothing_fits_is_a_clear_error():
    with pytest.raises(ValueError, match="memory_budget=1000 bytes.*Raise memory_budget"):
        choose_plan(cpu_like_profile(), (1, 3, 256, 256), (2, 3), 2, 1000, overlap=8, size_multiple=8)


def test_memory_budget_strings_are_parsed_and_bad_ones_named():
    assert parse_bytes("512MB") == 512 * 10**6 and parse_bytes("1.5GiB") == 3 * 2**29
    with pytest.raises(ValueError, match="memory_budget='lots'"):
        parse_bytes("lots")


# ---------------------------------------------------------------- measuring
def test_profile_of_a_real_network_grows_with_pixels_and_is_cached():
    net = DnCNN(in_channels=1, out_channels=1, depth=5, nf=16, pretrained=None)
    shapes = probe_shapes((256, 256), 1, 2**16)
    measured = []

    def measure():
        measured.append(1)
        return profile_network(lambda x: net(x, 0.1), 1, shapes)

    profile = cached_profile(net, ("cpu",), measure)
    assert cached_profile(net, ("cpu",), measure) is profile and len(measured) == 1
    assert [p.pixels for p in profile.probes] == [math.prod(s) for s in shapes]
    assert all(p.seconds > 0 for p in profile.probes)  # timings are noisy here: benchmarks compare them
    assert profile.probes[-1].peak_bytes > 16 * profile.probes[-1].pixels * 4  # at least one feature map


def check_auto_plan(ctx, budget):
    torch.manual_seed(0)
    net = DnCNN(in_channels=3, out_channels=3, depth=5, nf=16, pretrained=None)
    x = torch.rand(1, 3, 96, 160, generator=torch.Generator().manual_seed(1))
    denoiser = distribute(net, ctx, patch_size="auto", max_batch_size="auto", overlap=5, memory_budget=budget)
    with torch.no_grad(), PeakMemory() as memory:
        out = denoiser(x, 0.1)
    auto = denoiser.layout_for(x.shape).auto
    with torch.no_grad():
        error = (out - net(x, 0.1)).abs().max().item()
    return {
        "grid": auto.plan.grid,
        "batch": auto.batch,
        "budget": auto.budget_bytes,
        "predicted": max(auto.bytes_per_rank),
        "error": error,
        "peak": memory.peak_bytes,
    }


@pytest.mark.parametrize("world_size", [2])
def test_every_rank_picks_the_same_automatic_plan_and_the_output_is_exact(ranks, world_size):
    results = ranks(world_size).run(check_auto_plan, "64MiB")
    assert all(r["grid"] == results[0]["grid"] and r["batch"] == results[0]["batch"] for r in results)
    for r in results:
        assert r["budget"] == 64 * MiB and r["predicted"] <= r["budget"]
        assert r["error"] <= 1e-5  # halo 5 covers DnCNN-5's receptive field


def test_auto_accepts_only_auto_as_a_string():
    from distinv import DistributedContext

    with DistributedContext(env={}) as ctx:
        net = DnCNN(in_channels=1, out_channels=1, depth=3, nf=8, pretrained=None)
        with pytest.raises(ValueError, match="patch_size='big'"):
            distribute(net, ctx, patch_size="big")
        with pytest.raises(ValueError, match="max_batch_size='many'"):
            distribute(net, ctx, max_batch_size="many")
