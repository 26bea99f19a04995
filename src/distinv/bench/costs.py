"""The scaling model's costs (:class:`~distinv.bench.scaling_model.Costs`) for a benchmark problem: measured on this
machine (one rank's share: ``threads`` threads), or the published V100 figures of deepinv's module.

Measured: one operator's ``A^T A`` on the whole image and the problem's sharded ``A^T A`` on half of it (the
fastest of 3 calls after a warm-up), the denoiser's profile (:func:`~distinv.tiling.profiling.profile_network`, the
probes automatic tiling uses), and the link between two gloo processes on this host (all-reduces of 8 bytes and of 32
MiB).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distinv.bench.problems import build
from distinv.bench.scaling_model import Costs, Workload
from distinv.bench.worker import model_from_source
from distinv.comm.collectives import ring_all_reduce_bytes
from distinv.comm.context import DistributedContext
from distinv.domain.denoiser import DomainParallelDenoiser, layer_exchanges
from distinv.placements.row_bands import shard_rows
from distinv.runtime.timing import timed_calls
from distinv.tiling.geometry import TilePlan
from distinv.tiling.planner import CPU_MAX_WINDOW_PIXELS, DEFAULT_OVERLAP, TilingKnobs, size_multiple_of
from distinv.tiling.profiling import NetworkProfile, Probe, default_probe_shapes, profile_network

LINK_BYTES = 32 * 2**20
PUBLISHED_PATCH, PUBLISHED_OVERLAP = 448, 32  # the tiles of the published V100 benchmark

# The published large-scale study of deepinv's module (V100 GPUs; highres multi-blur at 4096², K=8, DRUNet, tiles of
# 448 with a 32 halo): one GPU 3.66 s per iteration; a flat per-iteration overhead of about 0.06 s; the physics at
# 8192² 0.084 s on 4 GPUs (2 operators each); communication about half of the 0.262 s iteration at 64 GPUs.
V100_ONE_GPU_S, V100_OVERHEAD_S, V100_PHYSICS_8192_4GPU_S, V100_64GPU_S = 3.66, 0.06, 0.084, 0.262


def workload(
    problem: str, size: Any, params: dict, model: str = "auto", device: str = "cpu", overlap: int = DEFAULT_OVERLAP
) -> tuple[Workload, Any, torch.nn.Module]:
    """The problem as the model sees it (shape, K, its sharded physics' halo, the engines' default tiling knobs
    on ``device``), with the built problem and its denoiser."""
    built = build(problem, size=size, **params)
    network = model_from_source(model, problem, built.ground_truth.shape[1], built.ground_truth.ndim == 5)
    halo = None
    if built.sharded is not None:
        with DistributedContext(env={}, device_mode="cpu") as ctx:  # the halo is the kernels', wherever they run
            halo = built.sharded(built, ctx).normal_halo()
    knobs = TilingKnobs(
        overlap=overlap,
        size_multiple=size_multiple_of(network),
        max_window_pixels=CPU_MAX_WINDOW_PIXELS if device == "cpu" else None,
    )
    layers, alignment = (), knobs.size_multiple
    if built.ground_truth.ndim == 4:  # what the domain-parallel denoiser exchanges (a network it runs)
        try:
            layers = layer_exchanges(network, built.ground_truth.shape[1])
            alignment = DomainParallelDenoiser.alignment_of(network)
        except ValueError:
            layers = ()
    shape = tuple(built.ground_truth.shape)
    return Workload(shape, built.num_operators, halo, knobs, 4, layers, alignment), built, network


def measure_costs(
    problem: str,
    size: Any,
    params: dict,
    model: str = "auto",
    device: str = "cpu",
    threads: int = 1,
    overlap: int = DEFAULT_OVERLAP,
    cores: int | None = None,
) -> tuple[Costs, Workload]:
    """Measure on this machine what one rank does for ``problem`` at ``size`` (see the module).

    :param cores: compute slots the ranks share (``None``: one per rank), e.g. the cores of a host running more
        ranks than it has.
    """
    torch.set_num_threads(threads)
    work, built, network = workload(problem, size, params, model, device, overlap)
    x = built.ground_truth.to(device)
    operator = built.factory(0, torch.device(device), built.shared)
    with torch.no_grad():
        operator_s = min(timed_calls(lambda: operator.A_adjoint(operator.A(x)), device, 3)[0])
        per_row = 0.0
        if work.physics_halo is not None:
            with DistributedContext(env={}, device_mode="gpu" if device == "cuda" else "cpu") as ctx:
                physics = built.sharded(built, ctx)
                rows = max(x.shape[2] // 2, max(work.physics_halo) + 1)
                band = shard_rows(ctx, x.narrow(2, 0, rows).contiguous())
                seconds = min(timed_calls(lambda: physics.A_adjoint_A(band), device, 3)[0])
                per_row = seconds / (rows + sum(work.physics_halo))
        network = network.to(device).eval()
        shapes = default_probe_shapes(x.shape[2:], work.knobs.size_multiple, x.shape[0], device)
        profile = profile_network(lambda w: network(w, 0.05), x.shape[1], shapes, samples=x.shape[0], device=device)
    bandwidth, latency = measure_link() if device == "cpu" else (float("nan"), float("nan"))
    costs = Costs(profile, operator_s, per_row, bandwidth, latency, cores, f"measured here ({threads} thread/rank)")
    return costs, work


def published_v100(work: Workload) -> tuple[Costs, Workload]:
    """Costs of a V100 rank calibrated on the published figures above (for ``highres_blur`` with DRUNet, colour):
    an operator's ``A^T A`` from the physics at 8192² (scaled by pixels), the sharded ``A^T A`` per row as half an
    operator's (one FFT pair with the K normal spectra summed, against two per operator), the network's seconds per
    processed pixel from one GPU's iteration at 4096² less its physics and overhead (tiles 448, halo 32), the
    bandwidth from the communication at 64 GPUs at 4096² (an image all-reduce and all-gather in half of 0.262 s),
    the flat overhead scaled by pixels (0.06 s at 4096², 0.24 s at 8192², as published); tiles of 448 with a 32
    halo, as published. The 64-GPU replicated prediction at 4096² therefore reproduces what calibrated it; the
    sharded ones, other sizes and the 16-GPU ones are predictions."""
    spatial = work.shape[2:]
    reference = (1, 3, 4096, 4096)  # the published problem the figures calibrate on
    per_operator = V100_PHYSICS_8192_4GPU_S / 2 / 8192**2  # seconds per pixel of one operator's A^T A
    one_gpu = TilePlan.build(reference[2:], 1, 448, 32, 8)
    processed = sum(w.pixels for w in one_gpu.windows)
    physics = work.num_operators * per_operator * 4096**2
    per_pixel = (V100_ONE_GPU_S - V100_OVERHEAD_S - physics) / processed
    profile = NetworkProfile((Probe(2**16, per_pixel * 2**16, 0), Probe(2**28, per_pixel * 2**28, 0)))
    image = math.prod(reference) * work.itemsize
    moved = ring_all_reduce_bytes(image, 64) + 63 * image // 64  # all-reduce and all-gather of owned regions
    bandwidth = moved / (V100_64GPU_S / 2)
    operator_s = per_operator * math.prod(spatial)
    overhead = V100_OVERHEAD_S * math.prod(spatial) / 4096**2  # published: 0.06 s at 4096², 0.24 s at 8192²
    # the overhead scales with the image's pixels in the published figures: work on the replicated image, which
    # sharded iterates divide by the ranks
    costs = Costs(profile, operator_s, 0.5 * operator_s / spatial[0], bandwidth, 1e-4, None,
                  "published V100 figures (calibrated; see distinv.bench.costs)", overhead, 1.0)  # fmt: skip
    knobs = TilingKnobs(patch_size=PUBLISHED_PATCH, overlap=PUBLISHED_OVERLAP, size_multiple=8)  # no window limit
    return costs, dataclasses.replace(work, knobs=knobs)


def measure_link(nbytes: int = LINK_BYTES, repeats: int = 5) -> tuple[float, float]:
    """Bandwidth (bytes per second one rank sends, as the ring rule counts them) and latency (seconds) of a gloo
    all-reduce between two processes on this host."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_link_rank, args=(folder, nbytes, repeats), nprocs=2, start_method="spawn")
        result = json.loads((Path(folder) / "link.json").read_text())
    return result["bandwidth"], result["latency"]


def _link_rank(rank: int, folder: str, nbytes: int, repeats: int) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(str(Path(folder) / "store"), 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    try:

        def seconds(t: torch.Tensor) -> float:
            dist.all_reduce(t)  # warm-up
            dist.barrier()
            start = time.perf_counter()
            for _ in range(repeats):
                dist.all_reduce(t)
            return (time.perf_counter() - start) / repeats

        latency = seconds(torch.zeros(2))
        large = seconds(torch.zeros(nbytes // 4))
        if rank == 0:
            bandwidth = ring_all_reduce_bytes(nbytes, 2) / max(large - latency, 1e-9)
            (Path(folder) / "link.json").write_text(json.dumps({"bandwidth": bandwidth, "latency": latency}))
    finally:
        dist.destroy_process_group()
