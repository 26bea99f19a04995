"""The domain-parallel denoiser (issue 30): exact against the whole-image network, and its time, communication and
memory against the tiled denoiser of sharded iterates.

``exactness``: the network's output and the gradients of ``<out, w>`` (w fixed random) with respect to the input
and to every parameter, whole image in one process, against ``DomainParallelDenoiser`` at each world size (gloo
ranks of one thread, launched with ``torch.distributed.run``; the reference computed once and read by the ranks).
Networks: deepinv's ``DRUNet`` at its published width (64-512 channels, 4 blocks) with random weights (seed 0), and
the shipped ``drunet-small-colour``.

``speed``: at ``--world`` ranks, the sharded engine's two denoisers on the same image, RowBands in and out (no
gather), calls interleaved over ``--reps`` after a warm-up: the tiled one (``ShardedDenoiser``: the engine's
default plan, overlap 32) and the domain-parallel one. Per call: seconds of the slowest rank (median), the seconds
each spent in communication (the context's counter: exchanges and the waits inside them), the bytes moved, and each
rank's peak memory above its level before the call (peak resident set). ``--single`` also runs the whole image in
one process (the memory the ranks' are compared with).

    python benchmarks/domain_denoiser.py exactness --network drunet --shape 3 1000 600 --world-sizes 2 3 4 8
    python benchmarks/domain_denoiser.py speed --size 2048 --world 2
    python benchmarks/domain_denoiser.py speed --size 2048 --world 4 --single --reps 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from distinv.bench.launch import torchrun_command
from distinv.runtime.memory import PeakMemory

SIGMA = 0.05


def network(name: str) -> torch.nn.Module:
    if name == "drunet":
        from deepinv.models import DRUNet

        torch.manual_seed(0)
        return DRUNet(3, 3, pretrained=None).eval()  # 64, 128, 256, 512 channels, 4 blocks: the published width
    from distinv.denoisers import load_denoiser

    return load_denoiser("shipped:drunet-small-colour", channels=3).eval()


def inputs(shape: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand((1, *shape), generator=g), torch.rand((1, *shape), generator=g)


def gradients(net: torch.nn.Module, forward, x: torch.Tensor, w: torch.Tensor, grad: bool) -> dict:
    xi = x.clone().requires_grad_(grad)
    net.zero_grad()
    with torch.set_grad_enabled(grad):
        out = forward(xi)
        if grad:
            (out * w).sum().backward()
    found = {"out": out.detach()}
    if grad:
        found["x"] = xi.grad
        found["params"] = torch.cat([p.grad.flatten() for p in net.parameters()])
    return found


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def exactness_rank(args) -> None:
    import torch.distributed as dist

    from distinv import DistributedContext
    from distinv.domain.denoiser import DomainParallelDenoiser

    with DistributedContext(seed=0, device_mode="cpu", num_threads=1) as ctx:
        net = network(args.network)
        x, w = inputs(args.shape)
        domain = DomainParallelDenoiser(ctx, net)
        started = time.perf_counter()
        mine = gradients(net, lambda xi: domain(xi, SIGMA), x, w, args.grad)
        seconds = time.perf_counter() - started
        reference = torch.load(args.reference)
        errors = {key: relative(mine[key], reference[key]) for key in mine}
        errors |= {
            f"{key} vs float64": relative(mine[key], reference[key + "64"]) for key in mine if key + "64" in reference
        }
        rows = [None] * ctx.world_size
        dist.all_gather_object(rows, {"rank": ctx.rank, "seconds": seconds, **errors})
        if ctx.rank == 0:
            bounds = domain.bounds_for(x.shape)
            Path(args.worker_out).write_text(json.dumps({"bounds": bounds, "rows": rows}))


def whole_image(args) -> dict:
    """The whole network's output and gradients in this process (the reference); with ``--float64-reference``
    also in float64 (``<key>64``, cast to float32), against which the float32 whole network's own rounding shows."""
    net = network(args.network)
    x, w = inputs(args.shape)
    found = gradients(net, lambda xi: net(xi, SIGMA), x, w, args.grad)
    if args.float64_reference:
        net64 = net.double()
        exact = gradients(net64, lambda xi: net64(xi, SIGMA), x.double(), w.double(), args.grad)
        found |= {f"{key}64": value.float() for key, value in exact.items()}
        print(
            "whole network in float32 against float64: "
            + ", ".join(f"{key} {relative(found[key], found[key + '64']):.1e}" for key in exact),
            flush=True,
        )
    return found


def exactness(args) -> list[dict]:
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference.pt"
        started = time.perf_counter()
        torch.save(whole_image(args), path)
        print(f"whole image, one process: {time.perf_counter() - started:.1f} s", flush=True)
        for world in args.world_sizes:
            out = Path(tmp) / f"w{world}.json"
            options = [f"--network={args.network}", f"--reference={path}", f"--worker-out={out}"]
            options += ["--shape", *map(str, args.shape)] + (["--grad"] if args.grad else ["--no-grad"])
            subprocess.run(torchrun_command(__file__, world, ["exactness-rank", *options]), check=True)
            result = json.loads(out.read_text()) | {"world_size": world}
            worst = {key: max(r[key] for r in result["rows"]) for key in result["rows"][0] if key not in ("rank",)}
            print(
                f"{args.network} {'x'.join(map(str, args.shape))}, {world} ranks (bands {result['bounds']}): "
                + ", ".join(f"{k} {v:.1e}" for k, v in worst.items() if k != "seconds")
                + f"; slowest rank {worst['seconds']:.1f} s",
                flush=True,
            )
            results.append(result)
    return results


def speed_rank(args) -> None:
    import torch.distributed as dist

    from distinv import DistributedContext
    from distinv.domain.denoiser import DomainParallelDenoiser
    from distinv.sharded.denoiser import ShardedDenoiser

    with DistributedContext(seed=0, device_mode="cpu", num_threads=1) as ctx, torch.no_grad():
        net = network("shipped")
        x = inputs([3, args.size, args.size])[0]
        denoisers = {"windows": ShardedDenoiser(ctx, net, overlap=32), "domain": DomainParallelDenoiser(ctx, net)}
        bands = {name: d.shard(x).clone() for name, d in denoisers.items()}
        del x
        measured: dict[str, dict[str, list]] = {n: {"s": [], "comm": [], "bytes": [], "peak": []} for n in denoisers}
        for rep in range(args.reps + 1):
            for name, denoiser in denoisers.items():
                dist.barrier()
                comm, moved = ctx.comm_seconds, ctx.bytes_sent + ctx.bytes_received
                with PeakMemory("cpu") as memory:
                    started = time.perf_counter()
                    denoiser(bands[name], SIGMA)
                    seconds = time.perf_counter() - started
                if rep == 0:
                    continue  # warm-up
                slowest = torch.tensor([seconds])
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
                m = measured[name]
                m["s"].append(slowest.item())
                m["comm"].append(ctx.comm_seconds - comm)
                m["bytes"].append(ctx.bytes_sent + ctx.bytes_received - moved)
                m["peak"].append(memory.peak_bytes)
        rows = [None] * ctx.world_size
        mine = {n: {k: statistics.median(v) for k, v in m.items()} for n, m in measured.items()}
        dist.all_gather_object(rows, {"rank": ctx.rank, **mine})
        if ctx.rank == 0:
            Path(args.worker_out).write_text(json.dumps(rows))


def single(args) -> dict:
    torch.set_num_threads(1)
    net, x = network("shipped"), inputs([3, args.size, args.size])[0]
    with torch.no_grad():
        net(x, SIGMA)  # warm-up
        with PeakMemory("cpu") as memory:
            started = time.perf_counter()
            net(x, SIGMA)
            seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak": memory.peak_bytes}


def speed(args) -> dict:
    result = {}
    if args.single:
        result["single"] = single(args)
        print(
            f"whole image, one process: {result['single']['seconds']:.2f} s, "
            f"{result['single']['peak'] / 2**20:.0f} MiB above baseline",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        options = [f"--size={args.size}", f"--reps={args.reps}", f"--worker-out={out}"]
        subprocess.run(torchrun_command(__file__, args.world, ["speed-rank", *options]), check=True)
        rows = json.loads(out.read_text())
    result["ranks"] = rows
    for name in ("windows", "domain"):
        seconds = rows[0][name]["s"]
        comm = max(r[name]["comm"] for r in rows)
        peak = max(r[name]["peak"] for r in rows)
        moved = max(r[name]["bytes"] for r in rows)
        line = (
            f"{name:>7} at {args.world} ranks, 3x{args.size}²: {seconds:.2f} s per call (slowest rank), comm "
            f"{comm:.3f} s ({comm / seconds:.1%}), {moved / 2**20:.1f} MiB moved (busiest rank), peak "
            f"{peak / 2**20:.0f} MiB above baseline (largest rank)"
        )
        if "single" in result:
            line += f" = {peak / result['single']['peak']:.2f}x the single process"
        print(line, flush=True)
    ratio = rows[0]["domain"]["s"] / rows[0]["windows"]["s"]
    print(f"domain / windows seconds per call: {ratio:.2f}x", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    exact = sub.add_parser("exactness")
    exact.add_argument("--network", choices=["drunet", "shipped"], default="drunet")
    exact.add_argument("--shape", type=int, nargs=3, default=[3, 1000, 600], help="C H W")
    exact.add_argument("--world-sizes", type=int, nargs="+", default=[2, 3, 4, 8])
    exact.add_argument("--no-grad", dest="grad", action="store_false", help="forward only")
    exact.add_argument("--float64-reference", action="store_true", help="also against the network in float64")
    exact.add_argument("-o", "--output", default=None, help="a JSON file for the results")
    rank = sub.add_parser("exactness-rank")
    rank.add_argument("--network", required=True)
    rank.add_argument("--shape", type=int, nargs=3, required=True)
    rank.add_argument("--reference", required=True)
    rank.add_argument("--worker-out", required=True)
    rank.add_argument("--grad", action="store_true")
    rank.add_argument("--no-grad", dest="grad", action="store_false")
    timed = sub.add_parser("speed")
    timed.add_argument("--size", type=int, default=2048)
    timed.add_argument("--world", type=int, default=2)
    timed.add_argument("--reps", type=int, default=3)
    timed.add_argument("--single", action="store_true", help="also the whole image in one process (memory)")
    timed.add_argument("-o", "--output", default=None, help="a JSON file for the results")
    rank = sub.add_parser("speed-rank")
    rank.add_argument("--size", type=int, required=True)
    rank.add_argument("--reps", type=int, required=True)
    rank.add_argument("--worker-out", required=True)
    args = parser.parse_args()
    if args.mode == "exactness-rank":
        exactness_rank(args)
    elif args.mode == "speed-rank":
        speed_rank(args)
    else:
        result = exactness(args) if args.mode == "exactness" else speed(args)
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
