"""The benchmark problems at large sizes, on one CPU core: build, measure, one forward and one adjoint.

Each problem runs in its own process (one thread), so that its peak memory (peak resident set of the process,
``VmHWM``) is its own. Three parts, all by default:

1. ``--problems``: per problem at a large size, the time to build it (ground truth and geometry), to build one
   of its K operators (what a rank holds at world size K), one forward ``A_i x`` and one adjoint
   ``A_i^T y_i`` of it, and the process's peak memory;
2. ``--scaling``: how the ground truths' generation time grows with the number of pixels (the exponent of a
   log-log fit: 1 is linear);
3. ``--nufft``: the radio NUFFT backends side by side (finufft against deepinv's torchkbnufft operator).

``--volume-512`` adds the 512^3 tomography volume in one rank: the volume and all K operators built (peak
memory), then one operator's whole forward.

``--projectors`` sets the two parallel-beam projectors side by side (each in its own process, one thread): one
operator of 45 angles on a 2048² image (``--projector-size``), distinv's ``ParallelBeam`` and deepinv's
``Tomography`` as tomography_2d builds them: seconds to build, the memory the built operator holds and the peak a
forward and an adjoint add (both above the process's baseline after imports and the image), and the median of 3
``A`` then ``A^T``.

    python benchmarks/problems.py                   # all three parts, a few minutes
    python benchmarks/problems.py --projectors --problems --no-scaling --no-nufft
    python benchmarks/problems.py --problems radio --no-scaling --no-nufft
    python benchmarks/problems.py --volume-512
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

LARGE = {
    "highres_blur": {"size": 4096, "num_operators": 8},
    "tomography_2d": {"size": 2048, "num_angles": 180, "num_operators": 4},
    "tomography_3d": {"size": 256, "num_angles": 90, "num_operators": 4},
    # 64 antennas: 2016 baselines x 124 times x 4 channels = 999,936 visibilities
    "radio": {"size": 1024, "num_antennas": 64, "num_times": 124, "num_channels": 4, "num_operators": 4},
}
VOLUME_512 = {"size": 512, "num_angles": 90, "num_operators": 4}


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _clock(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_one(name: str, params: dict) -> dict:
    """Build one problem and one of its K operators (what each rank holds at world size K), apply that
    operator once each way, in this process, one thread; seconds. The K blocks are of equal size, so the
    whole stack in one process costs about K times the operator."""
    from distinv.bench.problems import build

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    problem, t_build = _clock(lambda: build(name, **params))
    op, t_op = _clock(lambda: problem.factory(0, torch.device("cpu"), problem.shared))
    x = problem.ground_truth
    y, t_forward = _clock(lambda: op.A(x))
    _, t_adjoint = _clock(lambda: op.A_adjoint(y))
    return {
        "problem": name,
        "params": params,
        "shape": list(x.shape),
        "operators": problem.num_operators,
        "measurement_shape": list(y.shape),
        "build_s": t_build,
        "operator_s": t_op,
        "forward_s": t_forward,
        "adjoint_s": t_adjoint,
        "peak_rss_bytes": _peak_rss_bytes(),
        **{k: v for k, v in problem.info.items() if isinstance(v, int | float | str)},
    }


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def projector(kind: str, size: int, num_angles: int = 45, reps: int = 3) -> dict:
    """One unit-norm parallel-beam operator of ``num_angles`` angles on a ``size``² image, ``kind`` ``"distinv"``
    or ``"deepinv"``, built as tomography_2d builds it; bytes above the baseline (after imports and the image)."""
    from distinv.bench.problems.tomography_2d import unit_norm_radon
    from distinv.images import shepp_logan_2d

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    x = shepp_logan_2d(size)
    angles = torch.arange(num_angles, dtype=torch.float32) * (180.0 / num_angles)
    baseline = _rss_bytes()
    op, t_build = _clock(lambda: unit_norm_radon(angles, size, kind))
    held = _rss_bytes() - baseline
    pairs = []
    for _ in range(reps):
        y, t_forward = _clock(lambda: op.A(x))
        _, t_adjoint = _clock(lambda y=y: op.A_adjoint(y))
        pairs.append((t_forward + t_adjoint, t_forward, t_adjoint))
    median = sorted(pairs)[reps // 2]
    return {
        "projector": kind,
        "size": size,
        "angles": num_angles,
        "build_s": t_build,
        "held_bytes": held,
        "peak_above_baseline_bytes": _peak_rss_bytes() - baseline,
        "pair_s": median[0],
        "forward_s": median[1],
        "adjoint_s": median[2],
    }


def volume_512() -> dict:
    """tomography_3d at 512^3 in one rank: build the volume and all K operators (peak memory), then one
    operator's forward of the whole volume."""
    from distinv import DistributedContext
    from distinv.bench.problems import build

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    problem, t_build = _clock(lambda: build("tomography_3d", **VOLUME_512))
    with DistributedContext(env={}, num_threads=1) as ctx:
        physics, t_ops = _clock(lambda: problem.distribute(ctx))
        built_peak = _peak_rss_bytes()
        y, t_forward = _clock(lambda: physics.local_physics[0].A(problem.ground_truth))
    return {
        "shape": list(problem.ground_truth.shape),
        "build_s": t_build,
        "operators_s": t_ops,
        "peak_rss_after_build_bytes": built_peak,
        "angles_per_operator": y.shape[-1],
        "forward_s": t_forward,
        "measurement_bytes": y.numel() * y.element_size(),
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def scaling(reps: int = 3) -> list[dict]:
    """Generation time of each ground truth at growing sizes, min of ``reps``; exponent of time vs pixels."""
    from distinv.images import dead_leaves, radio_sky, shepp_logan_2d, shepp_logan_3d

    torch.set_num_threads(1)
    generators = {
        "dead_leaves": (lambda n: dead_leaves(n, n), [1024, 2048, 4096, 8192]),
        "shepp_logan_2d": (shepp_logan_2d, [1024, 2048, 4096, 8192]),
        "shepp_logan_3d": (shepp_logan_3d, [64, 128, 256, 384]),
        "radio_sky": (radio_sky, [1024, 2048, 4096, 8192]),
    }
    rows = []
    for name, (make, sizes) in generators.items():
        times, pixels = [], []
        for n in sizes:
            times.append(min(_clock(lambda n=n, make=make: make(n))[1] for _ in range(reps)))
            pixels.append(n ** (3 if name.endswith("3d") else 2))
        lx, ly = [math.log(p) for p in pixels], [math.log(t) for t in times]
        mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
        slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
        last = math.log(times[-1] / times[-2]) / math.log(pixels[-1] / pixels[-2])
        rows.append({"generator": name, "sizes": sizes, "seconds": times, "exponent": slope, "last_exponent": last})
    return rows


def nufft_backends(reps: int = 3) -> list[dict]:
    """One operator over all of the large radio problem's visibilities, each backend, median of ``reps``."""
    from distinv.bench.nufft import radio_operator
    from distinv.bench.problems import build

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    problem = build("radio", **LARGE["radio"])
    omega = problem.shared["omega"].reshape(2, -1)
    x = problem.ground_truth
    rows, outputs = [], {}
    for backend in ("finufft", "torchkbnufft"):
        op, t_build = _clock(lambda b=backend: radio_operator(problem.shared["size_hw"], omega, backend=b))
        y = op.A(x)
        forward = sorted(_clock(lambda op=op: op.A(x))[1] for _ in range(reps))[reps // 2]
        adjoint = sorted(_clock(lambda op=op, y=y: op.A_adjoint(y))[1] for _ in range(reps))[reps // 2]
        outputs[backend] = y
        rows.append({"backend": backend, "build_s": t_build, "forward_s": forward, "adjoint_s": adjoint})
    a, b = outputs["finufft"], outputs["torchkbnufft"]
    rows.append({"relative_difference": float((a - b).abs().norm() / b.abs().norm()), "visibilities": omega.shape[1]})
    return rows


def _in_subprocess(part: str, *args: str) -> object:
    command = [sys.executable, __file__, "--child", part, *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{part} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="*", default=list(LARGE), help="problems to run (default: all)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the generation-time scaling")
    parser.add_argument("--no-nufft", action="store_true", help="skip the NUFFT backend comparison")
    parser.add_argument("--volume-512", action="store_true", help="also build tomography_3d at 512^3")
    parser.add_argument("--projectors", action="store_true", help="also compare the two parallel-beam projectors")
    parser.add_argument("--projector-size", type=int, default=2048, help="the image side for --projectors")
    parser.add_argument("--out", default="results/benchmarks/problems.json", help="JSON results")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        part, *rest = args.child
        if part == "problem":
            result = run_one(rest[0], json.loads(rest[1]))
        elif part == "volume_512":
            result = volume_512()
        elif part == "projector":
            result = projector(rest[0], int(rest[1]))
        else:
            result = scaling() if part == "scaling" else nufft_backends()
        print(json.dumps(result))
        return

    results: dict = {"torch": torch.__version__, "threads": 1}
    results["problems"] = []
    if args.problems:
        print("one operator of K, one core:")
        header = f"{'problem':<14} {'shape':<14} {'K':>2} {'build':>7} {'operator':>8} {'A_i':>8} {'A_i^T':>8}"
        print(f"{header} {'peak':>9}")
    for name in args.problems:
        row = _in_subprocess("problem", name, json.dumps(LARGE[name]))
        results["problems"].append(row)
        print(
            f"{name:<14} {'x'.join(map(str, row['shape'][1:])):<14} {row['operators']:>2} {row['build_s']:>6.2f}s "
            f"{row['operator_s']:>7.2f}s {row['forward_s']:>7.2f}s {row['adjoint_s']:>7.2f}s "
            f"{_gb(row['peak_rss_bytes']):>9}"
        )
    if args.projectors:
        rows = results["projectors"] = [
            _in_subprocess("projector", kind, str(args.projector_size)) for kind in ("distinv", "deepinv")
        ]
        print(f"\none parallel-beam operator, 45 angles, {args.projector_size}^2, one core (median of 3 A + A^T)")
        print(f"{'projector':<10} {'build':>8} {'held':>10} {'peak':>10} {'A':>8} {'A^T':>8} {'A + A^T':>8}")
        for row in rows:
            print(
                f"{row['projector']:<10} {row['build_s']:>7.2f}s {_gb(row['held_bytes']):>10} "
                f"{_gb(row['peak_above_baseline_bytes']):>10} {row['forward_s']:>7.2f}s {row['adjoint_s']:>7.2f}s "
                f"{row['pair_s']:>7.2f}s"
            )
        ours, theirs = rows
        memory = ours["peak_above_baseline_bytes"] / theirs["peak_above_baseline_bytes"]
        print(f"distinv / deepinv: peak memory {memory:.3f}x, A + A^T {theirs['pair_s'] / ours['pair_s']:.1f}x faster")
    if args.volume_512:
        row = results["volume_512"] = _in_subprocess("volume_512")
        print(
            f"\ntomography_3d 512^3, one rank: build {row['build_s']:.1f}s, operators {row['operators_s']:.1f}s, "
            f"peak {_gb(row['peak_rss_after_build_bytes'])} built; one operator ({row['angles_per_operator']} "
            f"angles) A of the volume {row['forward_s']:.1f}s, measurements {_gb(row['measurement_bytes'])}"
        )
    if not args.no_scaling:
        results["scaling"] = _in_subprocess("scaling")
        print("\nground-truth generation time vs pixels (exponent of a log-log fit, 1 = linear; and between the two")
        print("largest sizes, past the caches)")
        for row in results["scaling"]:
            cells = ", ".join(f"{n}: {t:.2f}s" for n, t in zip(row["sizes"], row["seconds"], strict=True))
            print(f"  {row['generator']:<15} {row['exponent']:.2f}, last {row['last_exponent']:.2f}   ({cells})")
    if not args.no_nufft:
        results["nufft"] = _in_subprocess("nufft")
        *backends, diff = results["nufft"]
        print(f"\nradio NUFFT, {diff['visibilities']:,} visibilities, 1024x1024, one core")
        for row in backends:
            print(f"  {row['backend']:<13} A {row['forward_s']:.2f}s  A^T {row['adjoint_s']:.2f}s")
        speed = backends[1]["forward_s"] / backends[0]["forward_s"]
        print(f"  finufft is {speed:.1f}x faster (forward); relative difference {diff['relative_difference']:.1e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
