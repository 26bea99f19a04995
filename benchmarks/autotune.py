"""Automatic tiling against a grid of hand-picked (patch, batch) settings, side by side in one run.

The shipped colour DRUNet on a 3 x ``--size`` x ``--size`` image at ``--nproc`` ranks of one CPU core each (or
one GPU each with ``--device cuda``). Each setting is a distributed denoiser built with ``distribute``; all are
timed interleaved (median of ``--reps`` calls after a warm-up, slowest rank), with each rank's peak memory
above its level before the call. ``auto`` is timed after its first call, which measures the network and plans
(reported apart as the planning time). Prints auto's time over the best manual setting's, and auto's peak
memory against its budget; writes JSON to ``--out``.

    python benchmarks/autotune.py                                    # 1024x1024, 2 ranks, about 5 minutes
    python benchmarks/autotune.py --budgets 128MiB 1GB --reps 5    # budgets for auto, more calls
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
from distinv.runtime.memory import PeakMemory, parse_bytes

SIGMA = 0.05
PATCHES = (128, 256, 512, None)  # None: distinv's default, the fewest windows (one slab per rank at 1024^2)
BATCHES = (1, 2, 4, 8)


def worker(args) -> None:
    from distinv import DistributedContext, distribute
    from distinv.denoisers import load_denoiser

    with DistributedContext(seed=0, device_mode=args.device, num_threads=1) as ctx, torch.no_grad():
        net = load_denoiser("shipped:drunet-small-colour", device=ctx.device)
        x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(ctx.device)
        settings, seen = {}, set()
        for patch in PATCHES:
            for batch in BATCHES:
                model = distribute(net, ctx, patch_size=patch, max_batch_size=batch, max_window_pixels=None)
                plan = model.layout_for(x.shape).plan
                most = max(len(plan.windows_of(r)) for r in range(ctx.world_size))
                if (plan.grid, min(batch, most)) in seen:
                    continue  # a larger batch than any rank's window count repeats a setting
                seen.add((plan.grid, min(batch, most)))
                settings[f"patch {patch or 'default'}, batch {batch}"] = model
        planning = {}
        for budget in args.budgets:
            model = distribute(net, ctx, patch_size="auto", max_batch_size="auto", memory_budget=budget)
            ctx.barrier()
            start = time.perf_counter()
            model(x, SIGMA)  # measures the network (cached per network: only the first budget pays) and plans
            planning[budget] = time.perf_counter() - start
            settings[f"auto {budget}"] = model
        for model in settings.values():
            model(x, SIGMA)  # warm-up
        times = {name: [] for name in settings}
        peaks = {name: 0 for name in settings}
        for _ in range(args.reps):
            for name, model in settings.items():
                ctx.barrier()
                with PeakMemory(ctx.device) as memory:
                    start = time.perf_counter()
                    model(x, SIGMA)
                    if ctx.device.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - start)
                peaks[name] = max(peaks[name], memory.peak_bytes)
        mine = {name: {"s": statistics.median(times[name]), "peak_bytes": peaks[name]} for name in settings}
        for budget in args.budgets:
            auto = settings[f"auto {budget}"].layout_for(x.shape).auto
            mine[f"auto {budget}"] |= {
                "plan": auto.describe(),
                "grid": list(auto.plan.grid),
                "batch": auto.batch,
                "predicted_s": auto.seconds_per_rank[ctx.rank],
                "predicted_bytes": auto.bytes_per_rank[ctx.rank],
                "budget_bytes": auto.budget_bytes,
                "planning_s": planning[budget],
            }
        from distinv.tiling.profiling import cached_profiles

        profile = cached_profiles(net)[0]
        mine["profile"] = [
            {"pixels": p.pixels, "us_per_pixel": 1e6 * p.seconds / p.pixels, "peak_bytes": p.peak_bytes}
            for p in profile.probes
        ]
        per_rank = [None] * ctx.world_size
        ctx.all_gather_object(per_rank, mine)
        if ctx.rank == 0:
            Path(args.worker_out).write_text(json.dumps(per_rank))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="image height and width (pixels)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks (one CPU core or one GPU each)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--reps", type=int, default=3, help="timed calls per setting (median reported)")
    parser.add_argument("--budgets", nargs="+", default=["128MiB", "256MiB", "1GiB"], help="budgets for auto")
    parser.add_argument("--out", default="results/benchmarks/autotune.json")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for budget in args.budgets:
        parse_bytes(budget)  # a bad budget fails here, before any rank starts
    if args.worker_out:
        worker(args)
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    worker_out = out.with_suffix(".worker.json")
    script_args = [f"--size={args.size}", f"--device={args.device}", f"--reps={args.reps}"]
    script_args += [f"--out={args.out}", f"--worker-out={worker_out}", "--budgets", *args.budgets]
    subprocess.run(torchrun_command(__file__, args.nproc, script_args), check=True)
    per_rank = json.loads(worker_out.read_text())
    worker_out.unlink()

    rows = {}
    profiles = [r.pop("profile") for r in per_rank]
    for name in per_rank[0]:
        ranks = [r[name] for r in per_rank]
        rows[name] = {"s": max(r["s"] for r in ranks), "peak_bytes": max(r["peak_bytes"] for r in ranks)}
        if name.startswith("auto"):
            rows[name] |= {k: ranks[0][k] for k in ("plan", "grid", "batch", "budget_bytes", "planning_s")}
            rows[name]["predicted_s"] = max(r["predicted_s"] for r in ranks)
            rows[name]["predicted_bytes"] = max(r["predicted_bytes"] for r in ranks)
    manual = {k: v for k, v in rows.items() if not k.startswith("auto")}
    best = min(manual, key=lambda k: manual[k]["s"])
    print(
        f"shipped DRUNet (colour) on 3x{args.size}x{args.size}, {args.nproc} ranks ({args.device}), median of "
        f"{args.reps}"
    )
    print(f"  {'setting':26s} {'time/call':>10s} {'vs best':>8s} {'peak MiB/rank':>14s}")
    for name, row in sorted(rows.items(), key=lambda kv: kv[1]["s"]):
        print(f"  {name:26s} {row['s']:9.2f}s {row['s'] / manual[best]['s']:7.2f}x {row['peak_bytes'] / 2**20:13.0f}")
    print("  network profile (each rank's own, before the ranks agree on the largest):")
    for rank, probes in enumerate(profiles):
        text = ", ".join(
            f"{p['pixels']} px {p['us_per_pixel']:.2f} us/px {p['peak_bytes'] / 2**20:.0f} MiB" for p in probes
        )
        print(f"    rank {rank}: {text}")
    summary = {}
    for budget in args.budgets:
        row = rows[f"auto {budget}"]
        within = [k for k, v in manual.items() if v["peak_bytes"] <= row["budget_bytes"]]
        best_within = min(within, key=lambda k: manual[k]["s"]) if within else None
        summary[budget] = {
            "auto_over_best_manual": row["s"] / manual[best]["s"],
            "auto_over_best_manual_within_budget": row["s"] / manual[best_within]["s"] if best_within else None,
            "best_manual_within_budget": best_within,
            "peak_over_budget": row["peak_bytes"] / row["budget_bytes"],
            "predicted_over_measured_s": row["predicted_s"] / row["s"],
        }
        print(
            f"  auto {budget}: {row['plan']}; planning {row['planning_s']:.1f} s (first call only)\n"
            f"    {row['s'] / manual[best]['s']:.2f}x the best manual time ({best}); "
            + (
                f"{summary[budget]['auto_over_best_manual_within_budget']:.2f}x the best manual within the budget "
                f"({best_within}); "
                if best_within
                else "no manual setting fits the budget; "
            )
            + f"peak {row['peak_bytes'] / 2**20:.0f} MiB = {summary[budget]['peak_over_budget']:.2f}x the budget; "
            f"predicted time {summary[budget]['predicted_over_measured_s']:.2f}x measured"
        )
    result = {
        "size": args.size,
        "nproc": args.nproc,
        "device": args.device,
        "torch": torch.__version__,
        "rows": rows,
        "profiles": profiles,
        "best_manual": best,
        "summary": summary,
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"  written to {out}")


if __name__ == "__main__":
    main()
