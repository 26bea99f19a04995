"""Reliability figures R1-R6: failures, kills, bad input, load, multi-node launches and concurrent runners, each
measured for real.

- **R1** a rank raising mid-run (PnP iteration 3 of 5, 2 ranks) under ``distinv run``: seconds from the raise to
  the failure row in the results table, the row's rank and cause, and whether the config's next run finishes.
- **R2** ``distinv run`` killed with SIGKILL (its whole process group) at random moments, half of them while a
  run's rows are being written: is the table readable, is any finished run lost, does a resume launch only the
  missing runs, are temporary files left after the next run.
- **R3** bad inputs (API on 2 real gloo ranks, configs, the command line): each must raise on every rank, name
  the argument and not end in a frame inside torch; none may hang (per-case timeout). Counted apart: cases that
  raise only after a collective other than the agreement (``ctx.agree``'s all-gathers) that makes an error on one
  rank an error on every rank.
- **R4** load: highres_blur at 8192^2 (K=8) through one PnP iteration on 2 ranks, K=64 operators on 3 ranks,
  world size 4 on 2 cores; each against its single-process result (relative error), with seconds and peak
  resident memory per rank. A launch whose predicted memory does not fit this host is a miss, not a crash.
- **R5** two nodes simulated on this host: two ``torchrun --nnodes 2`` agents meeting through a c10d rendezvous,
  and srun's variables of 2 nodes x 2 tasks set by hand: ranks, local ranks, local world size, device and
  memory budget on every rank, and the PnP result against the single-process one.
- **R6** two ``distinv run`` on one output folder: the second, started while the first runs, must refuse at once
  naming the folder, the first must finish every run with no failure row; after the first is SIGKILLed, the next
  runner must take the folder over and finish every run.

Every part runs in its own process group with a time box: a hang is a failure recorded with its timeout. The
denoiser of R1, R2, R4, R5 and R6 is a small convolutional network (three 3x3 convolutions, random weights from a
fixed seed, receptive-field radius 3): with the default halo the tiled output equals the untiled one, so the
distributed results can be compared with the single process to float precision.

    python benchmarks/reliability.py                       # everything: about 12 minutes on 2 cores, 8-10 of
                                                           # them R2's 20 kills; results/benchmarks/reliability.json
    python benchmarks/reliability.py --tiny -o /tmp/r.json # toy sizes, 2 kills: about 2.5 minutes
    python benchmarks/reliability.py --tiny --only R1,R3   # the test's run: about 35 s
    python benchmarks/reliability.py --only R4 --heavy     # R4's 8192^2 case even if other figures missed

R4's 8192^2 case runs only when every other figure of the invocation passed (or with ``--heavy``), and only if
its predicted memory fits this host; otherwise it is a miss naming the prediction, and with ``--heavy`` the
largest size that fits runs instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from reliability_parts import r1_failing_rank, r2_kills, r3_bad_input, r4_load, r5_multinode, r6_concurrent_runners
from reliability_parts.common import REPO, child_env, mem_available, run_command, tiny_network, write_json
from reliability_parts.pnp_cases import pnp_worker, reference_worker
from reliability_parts.r1_failing_rank import fails_at_iteration_3

# The models a config names ``python:reliability:NAME``: the runner and its ranks import them from this module.
__all__ = ["fails_at_iteration_3", "tiny_network"]

PARTS = ("R1", "R2", "R3", "R4", "R5", "R6")
FULL_TIMEOUTS = {"R1": 180, "R2": 2400, "R3": 600, "R4": 3000, "R5": 400, "R6": 900}
TINY_TIMEOUTS = {"R1": 60, "R2": 90, "R3": 90, "R4": 90, "R5": 60, "R6": 240}
FIGURES: dict[str, ModuleType] = {
    "R1": r1_failing_rank,
    "R2": r2_kills,
    "R3": r3_bad_input,
    "R4": r4_load,
    "R5": r5_multinode,
    "R6": r6_concurrent_runners,
}
PART_FUNCTIONS: dict[str, Callable[[bool, Path], dict]] = {
    "R1": r1_failing_rank.part_r1,
    "R2": r2_kills.part_r2,
    "R3": r3_bad_input.part_r3,
    "R4": r4_load.part_r4,
    "R5": r5_multinode.part_r5,
    "R6": r6_concurrent_runners.part_r6,
}
WHAT = {part: module.WHAT for part, module in FIGURES.items()}


def run_part(part: str, tiny: bool, work: Path, timeout: float, extra: list[str]) -> dict:
    """Run one part in a process group of its own; a part that does not finish in ``timeout`` is a failure."""
    out = work / f"{part}.json"
    folder = work / part
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--part", part, "--part-out", str(out), "--work", str(folder), *extra]
    done = run_command(command + (["--tiny"] if tiny else []), timeout, child_env(), work / f"{part}.log")
    if out.exists():
        result = json.loads(out.read_text())
    else:
        why = f"timed out after {timeout:.0f} s" if done.timed_out else f"exit code {done.code}"
        result = {"ok": False, "misses": [f"the part did not finish: {why}"], "output_tail": done.output[-3000:]}
    result["seconds"] = done.seconds
    return result


def headline(part: str, r: dict) -> str:
    """One line of what a part measured."""
    if "output_tail" in r and len(r) <= 4:
        return r["misses"][0]
    return FIGURES[part].headline(r)


def print_table(figures: dict[str, dict]) -> None:
    """Print a line per figure (verdict, seconds, what it measured), then its misses."""
    print(f"{'figure':<6} {'result':<6} {'seconds':>8}  measured")
    for part, r in figures.items():
        result = "ok" if r.get("ok") else "MISS"
        print(f"{part:<6} {result:<6} {r.get('seconds', 0):8.1f}  {headline(part, r)}")
        for miss in r.get("misses", []):
            print(f"{'':<23}miss: {miss[:200]}")


def machine() -> dict:
    """This host (cores, available memory, Python, host name) and the commit measured."""
    import platform

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=REPO,
                               timeout=5).stdout.strip() != ""  # fmt: skip
        commit_text = commit.stdout.strip() + (" + uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        commit_text = None
    return {
        "cores": len(os.sched_getaffinity(0)),
        "memory_available_bytes": mem_available(),
        "python": platform.python_version(),
        "git": commit_text,
        "host": socket.gethostname(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help="parts to run, e.g. R1,R3")
    parser.add_argument("--tiny", action="store_true", help="toy sizes and 2 kills (fast; the test's mode)")
    parser.add_argument("-o", "--out", default="results/benchmarks/reliability.json", help="the JSON result")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, tables)")
    parser.add_argument("--trials", type=int, default=None, help="R2's kills (default 20, tiny 2)")
    parser.add_argument("--seed", type=int, default=0, help="R2's random kill moments")
    parser.add_argument(
        "--heavy", action="store_true", help="run R4's 8192^2 case even if other figures missed (default: only if not)"
    )
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--cases", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "pnp":
        pnp_worker(json.loads(args.case), Path(args.worker_out))
        return
    if args.worker == "reference":
        reference_worker(json.loads(args.cases), Path(args.worker_out))
        return
    if args.part:
        _part_main(args)
        return
    parts = [p.strip().upper() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--only {args.only}: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    parts = sorted(dict.fromkeys(parts), key=lambda p: p == "R4")  # R4 last: its heavy case waits for the others
    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    timeouts = TINY_TIMEOUTS if args.tiny else FULL_TIMEOUTS
    started = time.time()
    figures: dict[str, dict] = {}
    try:
        for part in parts:
            print(f"{part}: {WHAT[part]} ...", flush=True)
            extra = [f"--seed={args.seed}"] + ([f"--trials={args.trials}"] if args.trials else [])
            if part == "R4" and (args.heavy or all(f.get("ok") for f in figures.values())):
                extra.append("--heavy")
            figures[part] = run_part(part, args.tiny, work, timeouts[part], extra)
            verdict = "ok" if figures[part].get("ok") else "MISS"
            print(f"{part}: {verdict} in {figures[part]['seconds']:.1f} s", flush=True)
            write_json(Path(args.out), _result(args, parts, figures, started, work))  # progress survives a kill
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    write_json(Path(args.out), _result(args, parts, figures, started, work))
    print()
    print_table(figures)
    print(f"written to {args.out}")


def _result(args: argparse.Namespace, parts: list[str], figures: dict[str, dict], started: float, work: Path) -> dict:
    """The JSON written to ``--out``: every figure run so far, and which passed."""
    return {
        "tiny": args.tiny,
        "started": started,
        "seconds": time.time() - started,
        "machine": machine(),
        "what": {p: WHAT[p] for p in parts},
        "figures": figures,
        "passed": [p for p in figures if figures[p].get("ok")],
        "missed": [p for p in figures if not figures[p].get("ok")],
        "pending": [p for p in parts if p not in figures],
        "work": str(work) if args.keep else None,
    }


def _part_main(args: argparse.Namespace) -> None:
    """Inside a part's own process: run it, write its result; an exception is the part's failure."""
    work = Path(args.work)
    try:
        if args.part == "R2":
            result = r2_kills.part_r2(args.tiny, work, args.trials, args.seed)
        elif args.part == "R4":
            result = r4_load.part_r4(args.tiny, work, args.heavy)
        else:
            result = PART_FUNCTIONS[args.part](args.tiny, work)
    except Exception:  # noqa: BLE001 - a broken part is recorded, the others still run
        result = {"ok": False, "misses": [f"the part raised: {traceback.format_exc()[-1500:]}"]}
    write_json(Path(args.part_out), result)


if __name__ == "__main__":
    main()
