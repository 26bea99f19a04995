"""The scaling model: its bytes are the bytes the engines count in a real PGD iteration, its times add up from the
costs it is given, and ``distinv plan --problem`` prints its predictions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from distinv.bench.scaling_model import Costs, Workload, predict_iteration
from distinv.tiling.planner import TilingKnobs
from distinv.tiling.profiling import NetworkProfile, Probe
from test_sharded_pnp import BLUR, TILING, run_engine

FLAT = NetworkProfile((Probe(2**10, 2**10 * 1e-6, 0), Probe(2**24, 2**24 * 1e-6, 0)))  # 1 us per pixel


def blur_workload() -> Workload:
    from distinv.bench.problems import build
    from distinv.comm.context import DistributedContext

    problem = build("highres_blur", **BLUR)
    with DistributedContext(env={}, device_mode="cpu") as ctx:
        halo = problem.sharded(problem, ctx).normal_halo()
    knobs = TilingKnobs(patch_size=TILING["patch_size"], overlap=TILING["overlap"], size_multiple=1)
    return Workload(tuple(problem.ground_truth.shape), problem.num_operators, halo, knobs)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("engine", ["distinv", "distinv-sharded"])
def test_the_models_bytes_are_what_a_pgd_iteration_sends(ranks, world_size, engine):
    counted = ranks(world_size).run(run_engine, engine, "highres_blur", BLUR, TILING, "pgd", 0.5)
    busiest = max(max(r["sent"][1:]) for r in counted)  # the first iteration also exchanges shapes once
    predicted = predict_iteration(Costs(FLAT, 0.0, 0.0, 1e9, 0.0), blur_workload(), engine, world_size).bytes_sent
    assert abs(predicted - busiest) <= 0.02 * busiest + 512, (predicted, busiest)


@pytest.mark.parametrize("world_size", [2, 3])
def test_the_models_bytes_for_the_domain_denoiser_are_what_a_pgd_iteration_sends(ranks, world_size):
    """One exchange per convolution (its channels, one row from each neighbour), the blurs' halo and two norms."""
    import dataclasses

    from distinv.bench.problems import build
    from distinv.domain.denoiser import DomainParallelDenoiser, layer_exchanges
    from test_domain_engine import BLUR as DOMAIN_BLUR
    from test_domain_engine import network_for
    from test_domain_engine import run_pnp as run_domain_pnp

    counted = ranks(world_size).run(
        run_domain_pnp, "distinv-sharded", "highres_blur", DOMAIN_BLUR, {"parallel": "domain"}, "pgd"
    )
    busiest = max(max(r["sent"][1:]) for r in counted)
    network = network_for(build("highres_blur", **DOMAIN_BLUR))
    work = dataclasses.replace(
        blur_workload(),
        domain_layers=layer_exchanges(network, 3),
        alignment=DomainParallelDenoiser.alignment_of(network),
    )
    predicted = predict_iteration(Costs(FLAT, 0.0, 0.0, 1e9, 0.0), work, "distinv-sharded/domain", world_size)
    assert abs(predicted.bytes_sent - busiest) <= 0.02 * busiest + 512, (predicted.bytes_sent, busiest)
    windows = predict_iteration(Costs(FLAT, 0.0, 0.0, 1e9, 0.0), work, "distinv-sharded", world_size)
    assert predicted.denoiser_s < windows.denoiser_s  # no halo recomputed


def test_the_predicted_iteration_adds_up_and_shares_cores():
    work = blur_workload()
    alone = Costs(FLAT, 0.01, 1e-4, 1e8, 1e-4)
    for engine in ("distinv", "distinv-sharded"):
        p = predict_iteration(alone, work, engine, 2)
        assert p.total_s == pytest.approx(p.data_s + p.denoiser_s + p.comm_s)
        shared = predict_iteration(Costs(FLAT, 0.01, 1e-4, 1e8, 1e-4, cores=1), work, engine, 2)
        assert shared.data_s == pytest.approx(2 * p.data_s) and shared.denoiser_s == pytest.approx(2 * p.denoiser_s)
    replicated, sharded = (predict_iteration(alone, work, e, 4) for e in ("distinv", "distinv-sharded"))
    assert sharded.bytes_sent < replicated.bytes_sent and sharded.comm_s < replicated.comm_s
    assert predict_iteration(alone, work, "distinv", 3).data_s == pytest.approx(0.01)  # ceil(3 operators / 3)


def test_plan_prints_the_published_gpu_predictions():
    out = subprocess.run(
        [sys.executable, "-m", "distinv", "plan", "--problem", "highres_blur", "--size", "1024", "--param",
         "num_operators=8", "--world", "1", "16", "--costs", "published-v100"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "published V100 figures" in out.stdout
    assert sum(line.startswith(("distinv ", "distinv-sharded ")) for line in out.stdout.splitlines()) == 4
