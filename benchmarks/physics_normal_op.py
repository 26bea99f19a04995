"""Time A_adjoint_A for K anisotropic FFT blurs of a colour image: distinv vs deepinv's distributed module.

Side by side in one run, so that the ratios are not skewed by a noisy machine:

1. one process, one thread: deepinv's ``StackedLinearPhysics.A_adjoint_A``, and the per-operator sum
   ``sum_i A_i^T A_i x`` that the distributed versions compute (the baseline of the speedups);
2. ``--nproc`` gloo ranks of one thread each (launched with ``torch.distributed.run``): distinv's and
   deepinv's distributed ``A_adjoint_A`` on the same operators (the operators split over ranks, the image
   replicated, one image-sized all-reduce), and distinv's spatially distributed blur
   (:class:`~distinv.sharded.blur.ShardedBlur`: every rank all K blurs on its band of rows, halo rows only),
   their repetitions interleaved; the bytes each rank sends and receives per call.

Prints the median time per call, the bytes and the ratios, and writes them as JSON (``--out``).

    python benchmarks/physics_normal_op.py                 # K=8, 3x2048x2048, 2 ranks
    python benchmarks/physics_normal_op.py --size 512 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from distinv.bench.launch import torchrun_command


def blur_operators(k: int, size: int, device: torch.device):
    from deepinv.physics import BlurFFT
    from deepinv.physics.functional.blur import gaussian_blur

    return [
        BlurFFT(
            img_size=(3, size, size),
            filter=gaussian_blur(sigma=(3.0, 0.8), angle=180.0 * i / k),
            device=device,
        )
        for i in range(k)
    ]


def timed(fn, reps: int, sync=lambda: None) -> list[float]:
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def baseline(args) -> dict:
    """One process, one thread: deepinv's stacked operator, and the same per-operator sum distinv computes.

    ``StackedLinearPhysics.A_adjoint_A`` computes ``A^T (A x)`` through the list of all K measurements, while
    the distributed versions sum each operator's own ``A_i^T A_i x`` (cheaper for decomposable operators such
    as ``BlurFFT``); the second baseline does that same arithmetic in one process, so that the speedups below
    measure parallelism, not a different formula.
    """
    from deepinv.physics import StackedLinearPhysics

    from distinv import DistributedContext, distribute

    torch.manual_seed(0)
    x = torch.rand(1, 3, args.size, args.size)
    with DistributedContext(device_mode="cpu", num_threads=1, env={}) as ctx:
        ops = blur_operators(args.k, args.size, ctx.device)
        stack, single = StackedLinearPhysics(ops), distribute(ops, ctx)
        stack.A_adjoint_A(x), single.A_adjoint_A(x)  # warm-ups
        t_stack, t_single = [], []
        for _ in range(args.reps):
            t_stack += timed(lambda: stack.A_adjoint_A(x), 1)
            t_single += timed(lambda: single.A_adjoint_A(x), 1)
    return {
        "single_process_deepinv_stack_s": statistics.median(t_stack),
        "single_process_per_operator_s": statistics.median(t_single),
    }


def worker(args) -> None:
    """One rank of the distributed run (started by torch.distributed.run)."""
    import deepinv.distributed as dinv_dist

    from distinv import DistributedContext, distribute
    from distinv.placements.row_bands import shard_rows
    from distinv.sharded.blur import ShardedBlur

    with DistributedContext(seed=0, device_mode="cpu", num_threads=1) as ctx:
        ops = blur_operators(args.k, args.size, ctx.device)
        ours = distribute(ops, ctx)
        sharded = ShardedBlur.from_physics(ctx, ops)
        with dinv_dist.DistributedContext(device_mode="cpu") as dctx:  # adopts our process group
            theirs = dinv_dist.distribute(ops, dctx)
            x = torch.rand(1, 3, args.size, args.size)
            reference = theirs.A_adjoint_A(x)
            result = ours.A_adjoint_A(x)  # also the warm-ups
            agreement = (torch.linalg.vector_norm(result - reference) / torch.linalg.vector_norm(reference)).item()
            bands = shard_rows(ctx, x)
            banded = (sharded.A_adjoint_A(bands)).gather()  # also its warm-up
            sharded_agreement = (torch.linalg.vector_norm(banded - result) / torch.linalg.vector_norm(result)).item()
            before = ctx.bytes_sent + ctx.bytes_received
            ours.A_adjoint_A(x)
            replicated_bytes = ctx.bytes_sent + ctx.bytes_received - before
            before = ctx.bytes_sent + ctx.bytes_received
            sharded.A_adjoint_A(bands)
            sharded_bytes = ctx.bytes_sent + ctx.bytes_received - before
            t_ours, t_theirs, t_local, t_sharded = [], [], [], []
            for _ in range(args.reps):  # interleaved, so all see the same machine
                t_ours += timed(lambda: ours.A_adjoint_A(x), 1, ctx.barrier)
                t_theirs += timed(lambda: theirs.A_adjoint_A(x), 1, ctx.barrier)
                t_local += timed(lambda: ours.A_adjoint_A(x, gather=False), 1, ctx.barrier)  # no all-reduce
                t_sharded += timed(lambda: sharded.A_adjoint_A(bands), 1, ctx.barrier)
        if ctx.rank == 0:
            Path(args.worker_out).write_text(
                json.dumps(
                    {
                        "distinv_s": statistics.median(t_ours),
                        "deepinv_distributed_s": statistics.median(t_theirs),
                        "distinv_without_reduction_s": statistics.median(t_local),
                        "relative_difference": agreement,
                        "sharded_s": statistics.median(t_sharded),
                        "sharded_relative_difference": sharded_agreement,
                        "replicated_bytes_per_rank": replicated_bytes,
                        "sharded_bytes_per_rank": sharded_bytes,
                    }
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=8, help="number of blur operators")
    parser.add_argument("--size", type=int, default=2048, help="image height and width (pixels)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks (one CPU core each)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--out", default="results/benchmarks/physics_normal_op.json")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        worker(args)
        return

    print(f"A_adjoint_A, K={args.k} anisotropic FFT blurs of 3x{args.size}x{args.size}, {args.reps} reps")
    result = {
        "k": args.k,
        "size": args.size,
        "nproc": args.nproc,
        "torch": torch.__version__,
        **baseline(args),
    }
    worker_out = Path(args.out).with_suffix(".worker.json")
    worker_out.parent.mkdir(parents=True, exist_ok=True)
    command = torchrun_command(
        __file__,
        args.nproc,
        [f"--k={args.k}", f"--size={args.size}", f"--reps={args.reps}", f"--worker-out={worker_out}"],
    )
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    result.update(json.loads(worker_out.read_text()))
    worker_out.unlink()
    base = result["single_process_per_operator_s"]
    result["speedup_distinv"] = base / result["distinv_s"]
    result["speedup_deepinv_distributed"] = base / result["deepinv_distributed_s"]
    result["distinv_vs_deepinv"] = result["deepinv_distributed_s"] / result["distinv_s"]
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"  1 process, deepinv StackedLinearPhysics (A^T(Ax)):   {result['single_process_deepinv_stack_s']:8.3f} s")
    print(f"  1 process, sum of A_i^T A_i x (baseline):            {base:8.3f} s")
    print(
        f"  {args.nproc} ranks, deepinv.distributed:                    {result['deepinv_distributed_s']:8.3f} s"
        f"   speedup {result['speedup_deepinv_distributed']:.2f}x"
    )
    print(
        f"  {args.nproc} ranks, distinv:                                {result['distinv_s']:8.3f} s"
        f"   speedup {result['speedup_distinv']:.2f}x"
    )
    print(
        f"  of which local compute (gather=False, no all-reduce):      {result['distinv_without_reduction_s']:8.3f} s"
    )
    print(
        f"  {args.nproc} ranks, distinv, blurs sharded by rows:         {result['sharded_s']:8.3f} s"
        f"   speedup {base / result['sharded_s']:.2f}x"
    )
    print(
        f"  bytes sent + received per rank and call: operators split {result['replicated_bytes_per_rank'] / 2**20:.2f}"
        f" MiB, rows sharded {result['sharded_bytes_per_rank'] / 2**20:.3f} MiB"
        f" (ratio {result['sharded_bytes_per_rank'] / result['replicated_bytes_per_rank']:.4f}); sharded result "
        f"differs from the replicated one by {result['sharded_relative_difference']:.1e}"
    )
    print(
        f"  distinv / deepinv.distributed speed: {result['distinv_vs_deepinv']:.2f}x "
        f"(results differ by {result['relative_difference']:.1e}); written to {args.out}"
    )


if __name__ == "__main__":
    main()
