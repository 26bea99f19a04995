"""Distributed PnP cases of R4 and R5: one rank of a case (run by ``reliability.py --worker pnp`` under
torchrun or srun's variables), every case in one process for the reference (``--worker reference``), and the
comparison of the two.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

from .common import Finished, mem_available, tiny_network, write_json

EXACT = 1e-4  # relative error below which a distributed result "equals" the single-process one: float32 sums
# over operators and ranks are taken in another order than in one process


def relative_error(a, b, chunk: int = 1 << 24) -> float:
    """``||a - b|| / ||b||`` in double precision, a chunk at a time (large images need little extra memory)."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.shape != b.shape:
        return math.inf
    difference = reference = 0.0
    for start in range(0, a.numel(), chunk):
        u, v = a[start : start + chunk].double(), b[start : start + chunk].double()
        difference += float((u - v).square().sum())
        reference += float(v.square().sum())
    return math.sqrt(difference / reference) if reference > 0 else math.sqrt(difference)


def solve(case: dict, ctx, tiled: bool):
    """Build ``case``'s problem on ``ctx``, distribute its operators (and, if ``tiled``, the small network)
    and run PnP; returns the last iterate, the seconds of each stage and the operators this rank owns."""
    import torch

    from distinv import distribute
    from distinv.bench.problems import build
    from distinv.pnp import pnp, sigma_schedule

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    problem = build(case["problem"], size=case["size"], **case["params"])
    lap("build_s")
    physics = problem.distribute(ctx)
    model = tiny_network(problem.ground_truth.shape[1]).to(ctx.device)
    denoiser = distribute(model, ctx, type_object="denoiser", overlap=8) if tiled else model
    lap("distribute_s")
    with torch.no_grad():
        y = problem.measure(physics)
        x0 = problem.initial(physics, y)
        lap("measure_s")
        iterations = case["iterations"]
        sigma = sigma_schedule(0.1, 0.02, iterations) if iterations > 1 else 0.05
        x, _ = pnp(
            "hqs", physics, denoiser, y, x0, sigma, iterations=iterations, step=case["step"], cg_iterations=5, ctx=ctx
        )
        lap("pnp_s")
    return x, seconds, list(physics.local_indexes)


def expected_budget(local: int) -> int:
    """What :func:`distinv.runtime.memory.default_memory_budget` should give on CPU now: half the available memory
    shared by ``local`` ranks."""
    return int(0.5 * mem_available() / max(1, local))


def peak_rss() -> int:
    """This process' peak resident set since it started (VmHWM)."""
    return _status_bytes("VmHWM")


def current_rss() -> int:
    """This process' resident set now (VmRSS)."""
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def pnp_worker(case: dict, out: Path) -> None:
    """One rank of a distributed PnP case (under torchrun or srun's variables): every rank writes what it saw
    (``rank<R>.json``), rank 0 the result (``x.pt``)."""
    import torch

    from distinv import DistributedContext
    from distinv.runtime.memory import default_memory_budget, local_ranks

    started, after_imports = time.perf_counter(), current_rss()
    with DistributedContext(seed=0, timeout=120) as ctx:
        x, seconds, owned = solve(case, ctx, tiled=True)
        seconds["total_s"] = time.perf_counter() - started
        budget = default_memory_budget(ctx.device)
        report = {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "local_rank": ctx.local_rank,
            "local_world_size": ctx.local_world_size,
            "launch": ctx.launch.source,
            "device": str(ctx.device),
            "threads": torch.get_num_threads(),
            "memory_budget": budget,
            "expected_memory_budget": expected_budget(local_ranks(os.environ)),
            "local_ranks_seen": local_ranks(os.environ),
            "hostname": socket.gethostname(),
            "node": int(os.environ.get("GROUP_RANK", os.environ.get("SLURM_NODEID", "0"))),
            "owned_operators": owned,
            "rss_after_imports_bytes": after_imports,
            "seconds": seconds,
            "peak_rss_bytes": peak_rss(),
            "checksum": [float(x.double().sum()), float(x.double().square().sum())],
        }
        if ctx.rank == 0:
            torch.save(x.cpu(), out / "x.pt")
    write_json(out / f"rank{report['rank']}.json", report)


def reference_worker(cases: dict[str, dict], out: Path) -> None:
    """Every case in one process (world size 1, the untiled network): ``<name>.pt`` and ``<name>.json``."""
    import torch

    from distinv import DistributedContext
    from distinv.runtime.memory import PeakMemory

    for name, case in cases.items():
        started = time.perf_counter()
        with PeakMemory("cpu") as memory, DistributedContext(seed=0, env={}, num_threads=1) as ctx:
            x, seconds, _ = solve(case, ctx, tiled=False)
        seconds["total_s"] = time.perf_counter() - started
        torch.save(x, out / f"{name}.pt")
        write_json(out / f"{name}.json", {"seconds": seconds, "peak_rss_bytes": memory.peak_total_bytes})
        del x


def tomography_case(size: int, k: int, ranks: int, iterations: int) -> dict:
    """A tomography PnP case: ``size``, ``k`` operators on ``ranks`` ranks, ``iterations`` of HQS."""
    params = {"num_operators": k, "num_angles": 8 * k}
    return {"problem": "tomography_2d", "size": size, "params": params, "ranks": ranks, "iterations": iterations,
            "step": 20.0}  # fmt: skip


def compare(entry: dict, reference_dir: Path, stem: str, done: Finished, keep_reference: bool = False) -> dict:
    """The distributed result against the single process: relative error, and replication over ranks (the
    compared tensors are deleted, the reference only unless ``keep_reference``)."""
    import torch

    x_path, ref_path = Path(entry.get("dir", "")) / "x.pt", reference_dir / f"{stem}.pt"
    if entry.get("exit_code") != 0 or not x_path.exists():
        why = entry.get("memory_stop") or ("timed out" if entry.get("timed_out") else f"exit {entry.get('exit_code')}")
        return {"equal": False, "problem": f"the distributed run did not complete ({why})"}
    if not ref_path.exists():
        why = done.memory_stop or ("timed out" if done.timed_out else f"exit {done.code}: {done.output[-300:]}")
        return {"equal": False, "problem": f"the single-process run did not complete ({why})"}
    error = relative_error(torch.load(x_path), torch.load(ref_path))
    sums = {tuple(round(v, 6) for v in r["checksum"]) for r in entry["ranks"]}
    reference = json.loads((reference_dir / f"{stem}.json").read_text())
    x_path.unlink()
    if not keep_reference:
        ref_path.unlink()
    replicated = len(sums) == 1
    problem = None
    if not error <= EXACT:
        problem = f"relative error {error:.2e} against the single process"
    elif not replicated:
        problem = "the ranks hold different results"
    return {"relative_error": error, "replicated": replicated, "equal": problem is None, "problem": problem,
            "reference": reference}  # fmt: skip
