"""R4: load. highres_blur at 8192^2 (K=8) through one PnP iteration on 2 ranks, K=64 operators on 3 ranks, world
size 4 on 2 cores; each against its single-process result (relative error), with seconds and peak resident
memory per rank. A launch whose predicted memory does not fit this host is a miss, not a crash.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from .common import SCRIPT, child_env, free_port, mem_available, run_command, verdict
from .pnp_cases import EXACT, compare, tomography_case

WHAT = "load: highres 8192^2 K=8 on 2 ranks, K=64 on 3 ranks, world 4 on 2 cores"


def r4_cases(tiny: bool) -> dict[str, dict]:
    """The load cases: problem, size, K, ranks, PnP iterations; the heavy one (8192^2) last."""
    if tiny:
        return {
            "K=64 operators, 3 ranks": _highres(64, 64, 3, 2),
            "world size 4 on 2 cores": tomography_case(64, 4, 4, 2),
            "highres 128^2 K=8, 2 ranks": _highres(128, 8, 2, 1),
        }
    return {
        "K=64 operators, 3 ranks": _highres(512, 64, 3, 3),
        "world size 4 on 2 cores": tomography_case(256, 8, 4, 3),
        "highres 8192^2 K=8, 2 ranks": {**_highres(8192, 8, 2, 1), "heavy": True},
    }


def _highres(size: int, k: int, ranks: int, iterations: int) -> dict:
    params = {"num_operators": k}
    return {"problem": "highres_blur", "size": size, "params": params, "ranks": ranks, "iterations": iterations,
            "step": 1.0}  # fmt: skip


# a process holds about 1 GiB after its imports, 2.7x the buffers and measurement of each operator it owns
# (BlurFFT builds its spectra through complex temporaries) and 4 image-sized tensors besides.
PROCESS_BASE_BYTES = 2**30
PER_OPERATOR_FACTOR = 2.7
IMAGES_PER_PROCESS = 4


def predicted_bytes(case: dict) -> tuple[int, int]:
    """Predicted peak resident memory of ``case``: its ranks together (they share this host), and the single
    process holding every operator. Scaled from one operator built at 64^2 (see the calibration above)."""
    import torch

    from distinv.bench.problems import build

    small = build(case["problem"], size=64, **{**case["params"], "num_operators": 1})
    op = small.factory(0, torch.device("cpu"), small.shared)
    scale = (case["size"] / 64) ** 2
    op_bytes = scale * sum(b.numel() * b.element_size() for b in op.buffers())
    image = scale * small.ground_truth.numel() * small.ground_truth.element_size()
    k, ranks = case["params"]["num_operators"], case["ranks"]

    def process(owned: int) -> float:
        return PROCESS_BASE_BYTES + PER_OPERATOR_FACTOR * owned * (op_bytes + image) + IMAGES_PER_PROCESS * image

    return int(sum(process(math.ceil((k - r) / ranks)) for r in range(ranks))), int(process(k))


def part_r4(tiny: bool, work: Path, heavy: bool = True) -> dict:
    """The light cases on their ranks, then one process computing all their references; then, if ``heavy``
    and the light cases passed, the heavy case (or, when its predicted memory does not fit this host, the
    largest size that does) and its reference, one after the other. Every launch is memory-guarded (its
    process group is killed above 75% of the memory available at the start) so that the host never runs out."""
    cases = r4_cases(tiny)
    limit = int(0.75 * mem_available())
    timeout = 80 if tiny else 1500
    light = {n: c for n, c in cases.items() if not c.get("heavy")}
    results = _run_cases(light, work / "light", timeout, limit)
    for name, case in cases.items():
        if not case.get("heavy"):
            continue
        together, single = predicted_bytes(case)
        entry = {"case": case, "predicted_bytes_all_ranks": together, "predicted_bytes_one_process": single}
        results[name] = entry
        fits = max(together, single) <= limit
        memory = (
            f"predicted {together / 2**30:.1f} GiB for its {case['ranks']} ranks and {single / 2**30:.1f} GiB for one "
            f"process; this host has {mem_available() / 2**30:.1f} GiB available (limit {limit / 2**30:.1f})"
        )
        failed_light = [n for n in light if not results[n].get("equal")]
        if not heavy or failed_light:
            why = "other figures missed" if not heavy else f"light cases missed: {failed_light}"
            entry["skipped"] = f"not run ({why}); {memory}" + ("" if fits else ": it would not fit either")
            continue
        if not fits:
            entry["skipped"] = f"does not fit: {memory}"
            fallback = _largest_fitting(case, limit)
            if fallback is None:
                continue
            name, case = f"{name} -> largest that fits: {fallback['size']}^2", fallback
        results |= _run_cases({name: case}, work / "heavy", timeout, limit)
    misses = []
    for name, entry in results.items():
        if "skipped" in entry:
            misses.append(f"{name}: {entry['skipped']}")
        elif not entry.get("equal"):
            misses.append(f"{name}: {entry.get('problem') or 'differs from the single process'}")
    return verdict({"exact_below": EXACT, "memory_limit_bytes": limit, "cases": results}, misses)


def _run_cases(cases: dict[str, dict], work: Path, timeout: float, limit: int) -> dict[str, dict]:
    """Each case on its ranks (one after the other), then one process computing every reference; compared."""
    reference_dir = work / "reference"
    reference_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, case in cases.items():
        together, single = predicted_bytes(case)
        results[name] = {"case": case, "predicted_bytes_all_ranks": together, "predicted_bytes_one_process": single}
        results[name] |= _distributed_case(name, case, work, timeout, limit)
    stems = {name: f"case{i}" for i, name in enumerate(cases)}
    by_stem = json.dumps({stems[n]: c for n, c in cases.items()})
    done = run_command(
        [sys.executable, SCRIPT, "--worker", "reference", "--cases", by_stem, "--worker-out", str(reference_dir)],
        timeout, child_env(), work / "reference.log", rss_limit=limit,
    )  # fmt: skip
    for name in cases:
        results[name] |= compare(results[name], reference_dir, stems[name], done)
    return results


def _largest_fitting(case: dict, limit: int) -> dict | None:
    size = case["size"] // 2
    while size >= 256:
        smaller = {**case, "size": size}
        if max(predicted_bytes(smaller)) <= limit:
            return smaller
        size //= 2
    return None


def _distributed_case(name: str, case: dict, work: Path, timeout: float, limit: int) -> dict:
    """Run ``case`` on its ranks under torchrun; what every rank reported."""
    out = work / re.sub(r"[^A-Za-z0-9]+", "-", name)
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={case['ranks']}",
        f"--master-port={free_port()}", SCRIPT, "--worker=pnp", f"--case={json.dumps(case)}", f"--worker-out={out}",
    ]  # fmt: skip
    done = run_command(command, timeout, child_env(), out / "launch.log", rss_limit=limit)
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return {
        "dir": str(out),
        "exit_code": done.code,
        "timed_out": done.timed_out,
        "memory_stop": done.memory_stop,
        "seconds_launch": done.seconds,
        "ranks": [
            {
                k: r[k]
                for k in (
                    "rank",
                    "owned_operators",
                    "seconds",
                    "peak_rss_bytes",
                    "rss_after_imports_bytes",
                    "checksum",
                    "threads",
                )
            }
            for r in ranks
        ],
        "output_tail": None if done.code == 0 else done.output[-1500:],
    }


def headline(r: dict) -> str:
    """One line of what R4 measured."""
    parts = []
    for name, e in r["cases"].items():
        if "skipped" in e:
            parts.append(f"{name}: {e['skipped'].split(';')[0].split(':')[0]}")
        elif "relative_error" in e:
            peak = max(x["peak_rss_bytes"] for x in e["ranks"]) / 2**30
            above = max(x["peak_rss_bytes"] - x["rss_after_imports_bytes"] for x in e["ranks"]) / 2**30
            seconds = max(x["seconds"]["total_s"] for x in e["ranks"])
            parts.append(
                f"{name}: err {e['relative_error']:.1e}, {seconds:.1f} s, peak {peak:.2f} GiB/rank "
                f"({above:.2f} above imports)"
            )
        else:
            parts.append(f"{name}: {e.get('problem')}")
    return "; ".join(parts)
