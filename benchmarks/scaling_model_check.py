"""The scaling model (``distinv plan --problem``) against measured iterations, and its GPU predictions.

1. runs ``configs/sharded_model.yml`` (highres_blur 3x2048², K=8, PGD; the replicated and the sharded engines at
   2, 3 and 4 ranks; runs already in ``results/sharded`` are kept);
2. measures the costs here (:func:`distinv.bench.costs.measure_costs`, one core per rank, the host's cores shared
   by the ranks beyond them) and predicts each run's median iteration (slowest rank) and bytes sent per rank;
3. prints predicted vs measured (ratio), and the model's predictions for 1, 4, 16 and 64 V100s at 4096² (K=8)
   beside the published figures of deepinv's module.

Writes ``results/sharded/scaling_model_check.json``.

    python benchmarks/scaling_model_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_4096 = {1: 3.66, 64: 0.262}  # seconds per iteration, deepinv's module on V100s (the figures)


def measured(results: Path, engines: tuple[str, ...], problem: str, size: int) -> list[dict]:
    """Per run of ``problem`` at ``size``: engine, ranks, median iteration of the slowest rank (first left out),
    median bytes sent by the busiest rank."""
    from distinv.bench.results import read_rows

    runs: dict[str, list[dict]] = {}
    for row in read_rows(results):
        wanted = row.get("problem") == problem and str(row.get("size")) == str(size) and row.get("engine") in engines
        if wanted and row.get("status") == "ok" and row.get("kind") != "training":
            runs.setdefault(row["run_key"], []).append(row)
    out = []
    for rows in runs.values():
        iterations = sorted({r["iteration"] for r in rows})[1:]
        total = statistics.median(max(r["total_s"] for r in rows if r["iteration"] == i) for i in iterations)
        sent = statistics.median(max(r["bytes_sent"] for r in rows if r["iteration"] == i) for i in iterations)
        out.append({"engine": rows[0]["engine"], "world_size": rows[0]["world_size"], "total_s": total, "sent": sent})
    return sorted(out, key=lambda r: (r["world_size"], r["engine"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "sharded_model.yml"))
    parser.add_argument("--results", default=str(ROOT / "results" / "sharded"))
    parser.add_argument("--skip-runs", action="store_true", help="use the table as it is")
    args = parser.parse_args()
    if not args.skip_runs:
        subprocess.run([sys.executable, "-m", "distinv", "run", args.config], check=True, cwd=ROOT)

    from distinv.bench.costs import measure_costs, published_v100, workload
    from distinv.bench.scaling_model import format_predictions, predict_iteration

    params = {"num_operators": 8}
    costs, work = measure_costs("highres_blur", 2048, params, cores=os.cpu_count())
    print(format_predictions(costs, work, [2, 3, 4], ["distinv", "distinv-sharded"]))
    rows = []
    print(f"\n{'engine':<16} {'ranks':>5} {'measured s':>10} {'predicted s':>11} {'ratio':>6} {'sent MiB':>9} "
          f"{'predicted':>9}")  # fmt: skip
    for run in measured(Path(args.results), ("distinv", "distinv-sharded"), "highres_blur", 2048):
        p = predict_iteration(costs, work, run["engine"], run["world_size"])
        ratio = p.total_s / run["total_s"]
        rows.append({**run, "predicted_s": p.total_s, "ratio": ratio, "predicted_sent": p.bytes_sent})
        print(
            f"{run['engine']:<16} {run['world_size']:>5} {run['total_s']:>10.3f} {p.total_s:>11.3f} {ratio:>6.2f} "
            f"{run['sent'] / 2**20:>9.2f} {p.bytes_sent / 2**20:>9.2f}"
        )
    v100, big = published_v100(workload("highres_blur", 4096, params, device="cuda")[0])
    print()
    print(format_predictions(v100, big, [1, 4, 16, 64], ["distinv", "distinv-sharded"]))
    print("published (deepinv's module, V100): " + ", ".join(f"{n} GPU(s) {s} s" for n, s in PUBLISHED_4096.items()))
    gpu = {
        f"{engine}-{n}": predict_iteration(v100, big, engine, n).total_s
        for n in (1, 4, 16, 64)
        for engine in ("distinv", "distinv-sharded")
    }
    link = {"bandwidth": costs.bandwidth, "latency": costs.latency, "operator_s": costs.operator_seconds}
    out = Path(args.results) / "scaling_model_check.json"
    out.write_text(json.dumps({"here": rows, "costs": link, "v100_4096": gpu, "published": PUBLISHED_4096}, indent=1))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
