"""One training step of an unrolled PGD, side by side: one process, distinv at ``--nproc`` ranks, deepinv's module.

Unrolled PGD (``--iterations``, default 4) with the shipped colour DRUNet as its PnP prior (its weights trained),
K=4 anisotropic Gaussian blurs (``BlurFFT``) of a 3x``--size``² dead-leaves image, batch 1, MSE against the ground
truth, one Adam step. Settings, every rank one CPU core:

(a) one process: deepinv's ``StackedLinearPhysics`` and the untiled network;
(b) distinv at ``--nproc`` ranks: ``distribute(factory)``, ``distribute(model)``, defaults (its plan; one window
    per rank here, so ``checkpoint_batches="auto"`` keeps the denoiser's activations);
(c) the same with ``checkpoint_iterations=True``;
(c') distinv recomputing the denoiser's windows in backward (``checkpoint_batches="always"``);
(c'') distinv for memory: ``checkpoint_iterations=True`` with windows owning 256² and one window per network call
    (``patch_size=256, max_batch_size=1``), so a backward pass holds one window's activations;
(d) deepinv 0.5's module at ``--nproc`` ranks, its defaults (patch 256, or half the image's side when smaller,
    overlap 64), ``checkpoint_batches="always"``;
(e) deepinv's module with (b)'s owned size as patch and (b)'s overlap, ``checkpoint_batches="always"``.

Per setting, each distributed one in its own launch (no setting shares a process with another): the median
seconds of a step over ``--reps`` steps after a warm-up step, and each rank's peak memory above its level before
the step (``PeakMemory``: resident set on CPU).
Writes JSON to ``--out`` and prints the table with the ratios the training issue targets.

    python benchmarks/training_step.py                         # 3x512², 4 iterations, 2 ranks
    python benchmarks/training_step.py --iterations 4 8 --size 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

from distinv.bench.launch import torchrun_command
from distinv.runtime.memory import PeakMemory

K = 4
NOISE = 0.01


def blur(index: int, size: int):
    from deepinv.physics import BlurFFT
    from deepinv.physics.functional.blur import gaussian_blur

    return BlurFFT(img_size=(3, size, size), filter=gaussian_blur(sigma=(2.0, 0.6), angle=180.0 * index / K))


def data(size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Ground truth and the K noisy measurements, the same in every process."""
    from distinv.images import dead_leaves

    x = dead_leaves(size, size, seed=3).reshape(1, 3, size, size)
    generator = torch.Generator().manual_seed(4)
    ys = [blur(i, size).A(x) for i in range(K)]
    return x, [y + NOISE * torch.randn(y.shape, generator=generator) for y in ys]


def unrolled(iterations: int):
    from deepinv.optim import PGD
    from deepinv.optim.data_fidelity import L2
    from deepinv.optim.prior import PnP

    from distinv.denoisers import load_denoiser

    network = load_denoiser("shipped:drunet-small-colour")
    network.train()
    for p in network.parameters():
        p.requires_grad_(True)
    return PGD(
        prior=PnP(network),
        data_fidelity=L2(),
        stepsize=0.5,
        sigma_denoiser=0.03,
        max_iter=iterations,
        unfold=True,
        trainable_params=["stepsize"],
    )


def step(model, optimiser, physics, y, x) -> None:
    optimiser.zero_grad()
    loss = torch.nn.functional.mse_loss(model(y, physics), x)
    loss.backward()
    optimiser.step()


def measured(fn, device) -> tuple[float, int]:
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
    return elapsed, memory.peak_bytes


def single_process(args, iterations: int) -> dict:
    from deepinv.physics import StackedLinearPhysics
    from deepinv.utils.tensorlist import TensorList

    torch.set_num_threads(1)
    torch.manual_seed(0)
    physics = StackedLinearPhysics([blur(i, args.size) for i in range(K)])
    x, ys = data(args.size)
    model = unrolled(iterations)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-5)
    y = TensorList(ys)
    step(model, optimiser, physics, y, x)  # warm-up
    runs = [measured(lambda: step(model, optimiser, physics, y, x), "cpu") for _ in range(args.reps)]
    return {"s": statistics.median(t for t, _ in runs), "peak_mb": max(m for _, m in runs) / 2**20}


DISTINV_SETTINGS = {
    "distinv": {},
    "distinv_checkpointed": {"checkpoint_iterations": True},
    "distinv_recomputed": {"checkpoint_batches": "always"},
    "distinv_lean": {"checkpoint_iterations": True, "patch_size": 256, "max_batch_size": 1},
}
DEEPINV_SETTINGS = ("deepinv_defaults", "deepinv_matched")


def worker(args) -> None:
    """One distributed setting (``--setting``) on this rank: a warm-up step, then ``--reps`` timed steps."""
    import deepinv.distributed as dinv_dist
    from deepinv.utils.tensorlist import TensorList

    from distinv import DistributedContext, distribute

    iterations = args.iterations[0]
    with DistributedContext(seed=0, device_mode="cpu", num_threads=1) as ctx:
        x, ys = data(args.size)
        physics = distribute(lambda i, device, shared: blur(i, args.size), ctx, num_operators=K)
        plan = distribute(unrolled(1), ctx).prior[0].denoiser.layout_for(x.shape).plan
        owned, overlap = min(plan.windows[0].owned_size), plan.overlap[0]
        if args.setting in DISTINV_SETTINGS:
            model = distribute(unrolled(iterations), ctx, **DISTINV_SETTINGS[args.setting])
            y = physics.local_measurements([ys[i] for i in physics.local_indexes])
        else:
            dctx = dinv_dist.DistributedContext(device_mode="cpu").__enter__()  # adopts our process group
            physics = dinv_dist.distribute([blur(i, args.size) for i in range(K)], dctx)
            patch, halo = (min(256, args.size // 2), 64) if args.setting == "deepinv_defaults" else (owned, overlap)
            model = dinv_dist.distribute(
                unrolled(iterations), dctx, patch_size=patch, overlap=halo, checkpoint_batches="always"
            )
            y = TensorList(ys)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-5)
        step(model, optimiser, physics, y, x)  # warm-up
        times, peaks = [], []
        for _ in range(args.reps):
            ctx.barrier()
            elapsed, peak = measured(lambda: step(model, optimiser, physics, y, x), ctx.device)
            times.append(elapsed)
            peaks.append(peak)
        summary = {"s": statistics.median(times), "peak_mb": max(peaks) / 2**20}
        per_rank: list = [None] * ctx.world_size
        ctx.all_gather_object(per_rank, summary)
        if ctx.rank == 0:
            plan_info = {"windows": len(plan.windows), "owned": owned, "overlap": overlap}
            Path(args.worker_out).write_text(json.dumps({"plan": plan_info, "per_rank": per_rank}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image height and width (pixels)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[4], help="unrolled iterations (each measured)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks (one CPU core each)")
    parser.add_argument("--reps", type=int, default=2, help="timed steps per setting (median reported)")
    parser.add_argument("--out", default="results/benchmarks/training_step.json")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        worker(args)
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"size": args.size, "nproc": args.nproc, "K": K, "by_iterations": {}}
    labels = {
        "distinv": "(b) distinv, defaults",
        "distinv_checkpointed": "(c) distinv, iterations checkpointed",
        "distinv_recomputed": "(c') distinv, windows recomputed in backward",
        "distinv_lean": "(c'') distinv, iterations checkpointed, 256² windows one by one",
        "deepinv_defaults": "(d) deepinv, 256/64, batches checkpointed",
        "deepinv_matched": "(e) deepinv, matched, batches checkpointed",
    }
    for iterations in args.iterations:
        print(f"unrolled PGD, {iterations} iterations, K={K} blurs of 3x{args.size}², {args.nproc} ranks of one core")
        rows = {"(a) one process, untiled": single_process(args, iterations)}
        script_args = [f"--size={args.size}", f"--iterations={iterations}", f"--reps={args.reps}"]
        for name, label in labels.items():  # one launch per setting: no setting shares a process with another
            worker_out = Path(args.out).with_suffix(f".{name}{iterations}.json")
            extra = [f"--setting={name}", f"--worker-out={worker_out}"]
            subprocess.run(torchrun_command(__file__, args.nproc, [*script_args, *extra]), check=True)
            worker_result = json.loads(worker_out.read_text())
            worker_out.unlink()
            per_rank = worker_result["per_rank"]
            rows[label] = {"s": max(r["s"] for r in per_rank), "peak_mb": max(r["peak_mb"] for r in per_rank)}
        one, ours = rows["(a) one process, untiled"], rows[labels["distinv"]]
        ratios = {
            "distinv_vs_one_process_time": ours["s"] / one["s"],
            "recomputed_vs_one_process_time": rows[labels["distinv_recomputed"]]["s"] / one["s"],
            "distinv_vs_deepinv_defaults_time": ours["s"] / rows[labels["deepinv_defaults"]]["s"],
            "distinv_vs_deepinv_matched_time": ours["s"] / rows[labels["deepinv_matched"]]["s"],
            "checkpointed_vs_deepinv_defaults_memory": rows[labels["distinv_checkpointed"]]["peak_mb"]
            / rows[labels["deepinv_defaults"]]["peak_mb"],
            "checkpointed_vs_deepinv_matched_memory": rows[labels["distinv_checkpointed"]]["peak_mb"]
            / rows[labels["deepinv_matched"]]["peak_mb"],
            "lean_vs_deepinv_defaults_memory": rows[labels["distinv_lean"]]["peak_mb"]
            / rows[labels["deepinv_defaults"]]["peak_mb"],
            "lean_vs_deepinv_defaults_time": rows[labels["distinv_lean"]]["s"] / rows[labels["deepinv_defaults"]]["s"],
        }
        result["by_iterations"][iterations] = {"rows": rows, "ratios": ratios, "plan": worker_result["plan"]}
        print(f"  {'setting':<66} {'s/step':>7} {'peak MB/rank':>13}")
        for label, row in rows.items():
            print(f"  {label:<66} {row['s']:7.2f} {row['peak_mb']:13.0f}")
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"  written to {args.out}")


if __name__ == "__main__":
    main()
