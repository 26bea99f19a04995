"""The dirty image of an observation read from a Measurement Set, one core: through the ``radio`` problem's
operators (``ms:``, K blocks by time, natural weights; ``A^T y`` of the distributed physics the solvers call, the
sum over the blocks and the all-reduce of one rank) against one direct gridding of every visibility with the same
NUFFT (one finufft type-1 of all of them, the same weights), and against the synthetic ``radio`` problem's dirty
image per visibility (its array grown to about as many).

The set (written once by ``benchmarks/synthetic_observation.py --rows``: 125,000 rows of 8 channels, 1e6
visibilities, by default) is planned and its blocks read once, outside the timing. The three adjoints are timed
alternately, ``--reps`` times after a warm-up; medians. Also timed once: the problem's whole ``measure`` (the
gridded weight sums, the normalisation, the dirty image, the flux unit).

    python benchmarks/radio_dirty_image.py --size 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ms", default="results/observations/dirty/observation.ms")
    parser.add_argument("--rows", type=int, default=125_000, help="rows of the set written if it is missing")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--operators", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--output", default="results/benchmarks/radio_dirty_image.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from distinv import DistributedContext
    from distinv.bench.nufft import FinufftRadio
    from distinv.bench.problems import build

    ms = Path(args.ms)
    if not ms.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from synthetic_observation import write_points_observation

        write_points_observation(ms.parent, args.rows, args.channels, 0)
    with DistributedContext(env={}) as ctx, torch.no_grad():
        problem = build("radio", size=args.size, ms=str(ms), num_operators=args.operators, backend="finufft")
        physics = problem.distribute(ctx)  # each operator reads its block here
        measure_s = timed(lambda: problem.measure(physics))
        y = problem.measure(physics)
        ops = list(physics.local_physics)
        count = sum(op.samples_loc.shape[1] for op in ops)
        omega = torch.cat([op.samples_loc for op in ops], dim=1)
        direct = FinufftRadio((args.size, args.size), omega, torch.cat([op.dataWeight for op in ops]))
        y_all = torch.cat([v.reshape(-1) for v in y])[None, None]
        synthetic = build("radio", size=args.size, num_operators=args.operators, num_antennas=64, num_times=124,
                          backend="finufft")  # fmt: skip
        synthetic_physics = synthetic.distribute(ctx)
        y_synthetic = synthetic.measure(synthetic_physics)
        synthetic_count = synthetic.info["visibilities"]
        runs = {
            "problem": lambda: physics.A_adjoint(y),
            "direct": lambda: direct.A_adjoint(y_all),
            "synthetic": lambda: synthetic_physics.A_adjoint(y_synthetic),
        }
        first, second = runs["problem"](), runs["direct"]()
        agreement = float((first - second).abs().max() / second.abs().max())
        for run in runs.values():
            run()  # warm-up
        seconds = {name: [] for name in runs}
        for _ in range(args.reps):
            for name, run in runs.items():
                seconds[name].append(timed(run))
    median = {name: statistics.median(s) for name, s in seconds.items()}
    per_visibility = {
        "problem": median["problem"] / count,
        "direct": median["direct"] / count,
        "synthetic": median["synthetic"] / synthetic_count,
    }
    print(f"dirty image {args.size}², one core, median of {args.reps}: {count} visibilities of {ms}")
    print(f"  through the problem's {args.operators} operators: {median['problem']:.3f} s "
          f"({median['problem'] / median['direct']:.2f}x the direct gridding)")  # fmt: skip
    print(f"  direct gridding, one NUFFT of all: {median['direct']:.3f} s (agree to {agreement:.1e} of the peak)")
    print(
        f"  synthetic radio problem, {synthetic_count} visibilities: {median['synthetic']:.3f} s; per visibility "
        f"the observed problem takes {per_visibility['problem'] / per_visibility['synthetic']:.2f}x its time"
    )
    print(f"  the observed problem's whole measure(): {measure_s:.3f} s (weights, normalisation, dirty image)")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"visibilities": count, "synthetic_visibilities": synthetic_count, "size": args.size,
              "seconds": seconds, "median_s": median, "agreement": agreement, "measure_s": measure_s}  # fmt: skip
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
