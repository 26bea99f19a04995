"""Cone beam on slabs against the single-process operator, and the bytes its data term moves (issue 29).

At each world size (``--world-sizes``, gloo ranks of one thread, launched with ``torch.distributed.run``), on
``tomography_3d``'s cone-beam geometry (``--size``³, 90 views of a turn in K=4 interleaved blocks, a 14-degree cone,
magnification 2) and its phantom:

- the relative error against the single-process operators of ``A`` (the worst of the K blocks), ``A^T`` (of random
  measurements) and ``A^T A``: :class:`~distinv.sharded.cone_slabs.ConeSlabs` gathered, against the K whole
  ``ConeBeam`` operators each rank also runs;
- the bytes each rank sends plus receives in one ``A^T A`` (the data term of one PGD iteration): the slabs'
  exchange of overlapping detector rows, and the replicated engine's (``problem.distribute``: the blocks dealt to
  ranks, the volume all-reduced), side by side.

    python benchmarks/cone_slabs.py                          # 64³ at 1-4 ranks
    python benchmarks/cone_slabs.py --size 128 --world-sizes 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch

from distinv.bench.launch import torchrun_command


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def worker(args) -> None:
    import torch.distributed as dist

    from distinv import DistributedContext
    from distinv.bench import problems
    from distinv.placements.row_bands import shard_rows

    with DistributedContext(seed=0, device_mode="cpu", num_threads=1) as ctx, torch.no_grad():
        problem = problems.build("tomography_3d", size=args.size, num_angles=args.views, num_operators=4)
        x = problem.ground_truth
        whole = [problem.factory(i, ctx.device, problem.shared) for i in range(problem.num_operators)]
        slabs = problem.sharded(problem, ctx)
        bands = shard_rows(ctx, x)
        plan = slabs.plan(bands.bounds)
        g = torch.Generator().manual_seed(1)
        projections = [op.A(x) for op in whole]
        ys = [torch.rand(y.shape, generator=g) for y in projections]
        y_bands = [shard_rows(ctx, y, plan.owned) for y in ys]
        errors = {
            "A": max(relative(f.gather(), y) for f, y in zip(slabs.A(bands), projections, strict=True)),
            "A_adjoint": relative(
                slabs.A_adjoint(y_bands).gather(), sum(op.A_adjoint(y) for op, y in zip(whole, ys, strict=True))
            ),
        }
        before = ctx.bytes_sent + ctx.bytes_received
        normal = slabs.A_adjoint_A(bands)
        sharded_bytes = ctx.bytes_sent + ctx.bytes_received - before
        errors["A_adjoint_A"] = relative(
            normal.gather(), sum(op.A_adjoint(y) for op, y in zip(whole, projections, strict=True))
        )
        replicated = problem.distribute(ctx)
        before = ctx.bytes_sent + ctx.bytes_received
        replicated.A_adjoint_A(x)
        replicated_bytes = ctx.bytes_sent + ctx.bytes_received - before
        mine = {"rank": ctx.rank, "sharded_bytes": sharded_bytes, "replicated_bytes": replicated_bytes, **errors}
        rows = [None] * ctx.world_size
        dist.all_gather_object(rows, mine)
        if ctx.rank == 0:
            summary = {"world_size": ctx.world_size, "bands": plan.bands, "rows": rows}
            Path(args.worker_out).write_text(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--views", type=int, default=90)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("-o", "--output", default=None, help="a JSON file for the results")
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        worker(args)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.world_sizes:
            out = Path(tmp) / f"w{world}.json"
            script_args = [f"--size={args.size}", f"--views={args.views}", f"--worker-out={out}"]
            subprocess.run(torchrun_command(__file__, world, script_args), check=True)
            result = json.loads(out.read_text())
            results.append(result)
            for row in result["rows"]:
                ratio = row["sharded_bytes"] / row["replicated_bytes"] if row["replicated_bytes"] else float("nan")
                print(
                    f"{args.size}³, {world} ranks, rank {row['rank']}: relative error A {row['A']:.1e}, A^T "
                    f"{row['A_adjoint']:.1e}, A^T A {row['A_adjoint_A']:.1e}; bytes per A^T A: slabs "
                    f"{row['sharded_bytes'] / 1e6:.2f} MB, replicated {row['replicated_bytes'] / 1e6:.2f} MB "
                    f"({ratio:.3f}x)",
                    flush=True,
                )
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
