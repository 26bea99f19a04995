"""Reliability figures R1-R5: failures, kills, bad input, load and multi-node launches, each measured for real.

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

Every part runs in its own process group with a time box: a hang is a failure recorded with its timeout. The
denoiser of R1, R2, R4 and R5 is a small convolutional network (three 3x3 convolutions, random weights from a
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
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TESTS = REPO / "tests"
PARTS = ("R1", "R2", "R3", "R4", "R5")
FULL_TIMEOUTS = {"R1": 180, "R2": 2400, "R3": 600, "R4": 3000, "R5": 400}
TINY_TIMEOUTS = {"R1": 60, "R2": 90, "R3": 90, "R4": 90, "R5": 60}
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
INJECTED = "injected failure at PnP iteration 3"
R1_LIMIT_S = 30.0
EXACT = 1e-4  # relative error below which a distributed result "equals" the single-process one: float32 sums
# over operators and ranks are taken in another order than in one process


# ============================================================================ small helpers
def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a temporary file in the same folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, with this folder importable (the configs' models)
    and unbuffered output (a killed process loses nothing it printed)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("SLURM")}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def group_pids(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (zombies excluded)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process of group ``pgid``, summed."""
    total = 0
    for pid in group_pids(pgid):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (it was started in a session of its own) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for _ in range(50):  # children reparented to init may take a moment to die
        if not group_pids(proc.pid):
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@dataclass
class Finished:
    """How a command ended: its exit code (``None`` if it was stopped), whether it timed out or was stopped
    for memory, its seconds, and the tail of its output."""

    code: int | None
    seconds: float
    timed_out: bool = False
    memory_stop: str | None = None
    output: str = ""


def run_command(
    command: list[str],
    timeout: float,
    env: dict[str, str],
    log: Path,
    rss_limit: int | None = None,
) -> Finished:
    """Run ``command`` in a process group of its own; on timeout (or when the group's resident memory passes
    ``rss_limit``) kill the whole group. Output goes to ``log``; its tail is returned."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
        timed_out, memory_stop, peak = False, None, 0
        while proc.poll() is None:
            if time.perf_counter() - started > timeout:
                timed_out = True
                break
            if rss_limit is not None:
                peak = max(peak, group_rss_bytes(proc.pid))
                if peak > rss_limit:
                    memory_stop = f"stopped at {peak / 2**30:.1f} GiB resident (limit {rss_limit / 2**30:.1f} GiB)"
                    break
            time.sleep(0.2)
        kill_group(proc)  # stops it, or reaps the strays of a command that finished (none expected)
    code = None if timed_out or memory_stop else proc.returncode
    return Finished(code, time.perf_counter() - started, timed_out, memory_stop, log.read_text()[-6000:])


def mem_available() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


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


# ============================================================================ networks the ranks import
_NET_CLASS: Any = None


def _small_net_class():
    """The class of :func:`tiny_network` (built on first use, so that importing this module is light)."""
    global _NET_CLASS
    if _NET_CLASS is None:
        import torch

        class SmallNet(torch.nn.Module):
            """Three 3x3 convolutions (receptive-field radius 3) scaled by the noise level."""

            def __init__(self, channels: int):
                super().__init__()
                self.body = torch.nn.Sequential(
                    torch.nn.Conv2d(channels, 8, 3, padding=1),
                    torch.nn.ReLU(),
                    torch.nn.Conv2d(8, 8, 3, padding=1),
                    torch.nn.ReLU(),
                    torch.nn.Conv2d(8, channels, 3, padding=1),
                )

            def forward(self, x, sigma=None):
                level = 0.05 if sigma is None else sigma
                if isinstance(level, torch.Tensor) and level.ndim == 1:
                    level = level.view(-1, *[1] * (x.ndim - 1))
                return x - 0.1 * level * self.body(x)

        _NET_CLASS = SmallNet
    return _NET_CLASS


def tiny_network(channels: int):
    """The small network (``python:reliability:tiny_network`` in a config), the same weights everywhere."""
    import torch

    torch.manual_seed(0)
    return _small_net_class()(channels).eval()


def fails_at_iteration_3(channels: int):
    """The small network, but rank 1 raises when asked for a third noise level (PnP iteration 3 of a
    decreasing schedule); the time of the raise goes to ``$RELIABILITY_MARK``."""
    import torch

    net = tiny_network(channels)
    levels: list[float] = []

    class FailsAtIteration3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, sigma=None):
            level = float(sigma) if sigma is not None and torch.as_tensor(sigma).numel() == 1 else None
            if level is not None and level not in levels:
                levels.append(level)
            if os.environ.get("RANK") == "1" and len(levels) >= 3:
                mark = os.environ.get("RELIABILITY_MARK")
                if mark:
                    Path(mark).write_text(json.dumps({"time": time.time(), "rank": 1}))
                raise RuntimeError(INJECTED)
            return self.net(x, sigma)

    return FailsAtIteration3()


# ============================================================================ PnP cases (R4, R5)
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


# ============================================================================ runner configs (R1, R2)
TOMO = {"name": "tomography_2d", "params": {"num_angles": 12, "num_operators": 2}}


def runner_config(output: Path, problems: list[dict], engines: list[str], worlds: list[int], iterations: int) -> dict:
    """A small benchmark config (tomography at toy sizes, the small network) writing to ``output``."""
    return {
        "name": "reliability",
        "output": str(output),
        "world_sizes": worlds,
        "engines": engines,
        "timeout_s": 60,
        "oversubscribe": True,
        "problems": problems,
        "solver": {"algorithm": "hqs", "iterations": iterations, "step": 5.0, "sigma": [0.1, 0.05]},
        "tiling": {"overlap": 8},
    }


def tomography(size: int, model: str) -> dict:
    return {**TOMO, "sizes": [size], "denoiser": {"model": f"python:reliability:{model}"}}


def write_config(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def distinv_run(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distinv.cli", "run", str(config), *extra]


def read_table(output: Path) -> tuple[list[dict] | None, str | None]:
    """The table's rows (``[]`` when there is none yet), or ``None`` and why it cannot be read."""
    import pyarrow.parquet as pq

    path = output / "results.parquet"
    if not path.exists():
        return [], None
    try:
        return pq.read_table(path).to_pylist(), None
    except Exception as exc:  # noqa: BLE001 - unreadable for any reason is the finding
        return None, f"{type(exc).__name__}: {exc}"


def finished(rows: list[dict]) -> set[str]:
    return {r["run_key"] for r in rows if r.get("status") == "ok"}


def temporaries(output: Path) -> list[str]:
    """Temporary files anywhere under ``output``."""
    if not output.exists():
        return []
    return sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file() and "tmp" in p.name)


# ============================================================================ R1
def part_r1(tiny: bool, work: Path) -> dict:
    """A rank raising at PnP iteration 3 of 5 (2 ranks), then a run that must still finish."""
    output, mark = work / "results", work / "raised.json"
    raw = runner_config(
        output, [tomography(32, "fails_at_iteration_3"), tomography(48, "tiny_network")], ["distinv"], [2], 5
    )
    config = write_config(work / "r1.yml", raw)
    log = work / "r1.log"
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            distinv_run(config),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(RELIABILITY_MARK=str(mark)),
            cwd=REPO,
            start_new_session=True,
        )
        recorded_at, deadline = None, started + (50 if tiny else 150)
        while proc.poll() is None and time.time() < deadline:
            rows, _ = read_table(output)
            if recorded_at is None and rows and any(r.get("status") == "failed" for r in rows):
                recorded_at = time.time()
            time.sleep(0.1)
        timed_out = proc.poll() is None
        kill_group(proc)
    rows, unreadable = read_table(output)
    rows = rows or []
    failed_rows = [r for r in rows if r.get("status") == "failed"]
    if recorded_at is None and failed_rows:  # written between the last poll and the exit
        recorded_at = (output / "results.parquet").stat().st_mtime
    raised_at = json.loads(mark.read_text())["time"] if mark.exists() else None
    lines = log.read_text().splitlines()
    row = failed_rows[0] if failed_rows else {}
    error = row.get("error") or ""
    delay = recorded_at - raised_at if recorded_at is not None and raised_at is not None else None
    fine_key = [s.key for s in _validated(raw).runs() if s.size == 48][0]
    result = {
        "seconds_raise_to_record": delay,
        "limit_s": R1_LIMIT_S,
        "raised": raised_at is not None,
        "failure_row": {
            "failed_rank": row.get("failed_rank"),
            "error_last_line": _last_line(error),
            "names_cause": INJECTED in error,
            "log_dir_exists": bool(row.get("log_dir")) and Path(row["log_dir"]).is_dir(),
        },
        "runner_line": next((line for line in lines if "FAILED" in line), None),
        "summary_line": _summary_failure_line(output),
        "next_run_finished": fine_key in finished(rows),
        "exit_code": None if timed_out else proc.returncode,
        "timed_out": timed_out,
        "table_unreadable": unreadable,
        "seconds_total": time.time() - started,
    }
    misses = []
    if delay is None or delay > R1_LIMIT_S:
        misses.append(f"failure not recorded within {R1_LIMIT_S:.0f} s of the raise (delay {delay})")
    if row.get("failed_rank") != 1:
        misses.append(f"the failure row names rank {row.get('failed_rank')!r}, not the raising rank 1")
    if INJECTED not in error:
        misses.append("the failure row's error does not hold the cause")
    if not result["next_run_finished"]:
        misses.append("the config's next run did not finish")
    return _verdict(result, misses)


def _validated(raw: dict):
    from distinv.bench.config import validate

    sys.path.insert(0, str(BENCH))
    return validate(raw)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _summary_failure_line(output: Path) -> str | None:
    """The FAILED line ``distinv results`` prints for the failed run."""
    try:
        from distinv.bench.results import format_summary, summarise

        return next((line for line in format_summary(summarise(output)).splitlines() if "FAILED" in line), None)
    except Exception as exc:  # noqa: BLE001
        return f"could not summarise: {type(exc).__name__}: {exc}"


def _verdict(result: dict, misses: list[str]) -> dict:
    return {"ok": not misses, "misses": misses, **result}


# ============================================================================ R2
def part_r2(tiny: bool, work: Path, trials: int | None = None, seed: int = 0) -> dict:
    """``distinv run`` SIGKILLed at random moments (every other trial while a run's rows are written)."""
    rng = random.Random(seed)
    sizes = [32, 40] if tiny else [32, 40, 48]
    trials = trials or (2 if tiny else 20)
    raw = runner_config(work / "unused", [tomography(s, "tiny_network") for s in sizes], ["none"], [1], 2)
    all_keys = {s.key for s in _validated(raw).runs()}
    rows_per_run = raw["solver"]["iterations"]
    estimate = 4.0 * len(sizes) + 4.0
    calibration = None
    if not tiny:
        output = work / "calibration"
        config = write_config(work / "calibration.yml", {**raw, "output": str(output)})
        done = run_command(distinv_run(config), 300, child_env(), work / "calibration.log")
        calibration = {"seconds": done.seconds, "exit_code": done.code}
        estimate = done.seconds
    results = []
    for trial in range(trials):
        output = work / f"trial{trial}"
        config = write_config(work / f"trial{trial}.yml", {**raw, "output": str(output)})
        mode = "during a write" if trial % 2 == 0 else "random moment"
        results.append(_kill_trial(config, output, mode, rng, estimate, all_keys, rows_per_run, work / f"t{trial}"))
    summary = {
        "trials": trials,
        "runs_per_config": len(all_keys),
        "readable": sum(t["readable"] for t in results),
        "finished_runs_lost": sum(t["lost"] for t in results),
        "incomplete_finished_runs": sum(t["incomplete_runs"] for t in results),
        "resume_launched_only_missing": sum(t["resume_only_missing"] for t in results),
        "resume_finished_all": sum(t["resume_finished_all"] for t in results),
        "temporaries_left_after_next_run": sum(bool(t["temporaries_after_resume"]) for t in results),
        "kills_during_a_write": sum(t["killed_during_write"] for t in results),
        "kills_while_running": sum(not t["exited_before_kill"] for t in results),
        "finished_runs_at_kill": [len(t["finished_after_kill"]) for t in results],
        "calibration": calibration,
        "trial_details": results,
    }
    misses = []
    if summary["readable"] < trials:
        misses.append(f"table unreadable after {trials - summary['readable']} of {trials} kills")
    if summary["finished_runs_lost"]:
        misses.append(f"{summary['finished_runs_lost']} finished run(s) lost")
    if summary["incomplete_finished_runs"]:
        misses.append(f"{summary['incomplete_finished_runs']} finished run(s) with missing rows")
    if summary["resume_launched_only_missing"] < trials:
        misses.append(
            f"a resume launched other runs than the missing ones in "
            f"{trials - summary['resume_launched_only_missing']} trial(s)"
        )
    if summary["resume_finished_all"] < trials:
        misses.append(f"a resume left runs unfinished in {trials - summary['resume_finished_all']} trial(s)")
    if summary["temporaries_left_after_next_run"]:
        misses.append(
            f"temporary files left after the next run in {summary['temporaries_left_after_next_run']} trial(s)"
        )
    return _verdict(summary, misses)


def _kill_trial(
    config: Path,
    output: Path,
    mode: str,
    rng: random.Random,
    estimate: float,
    all_keys: set[str],
    rows_per_run: int,
    logs: Path,
) -> dict:
    """One kill, then the checks on the table, then a resume to the end and the checks again.

    ``mode``: ``"during a write"`` kills within a few milliseconds of the appearance of the table's temporary
    file for a randomly chosen run; ``"random moment"`` at a uniform time over the config's expected duration.
    What must survive is every run the table showed finished before the kill (read every 0.3 s while waiting)
    and every run the runner reported done."""
    logs.mkdir(parents=True, exist_ok=True)
    target_write = rng.randrange(len(all_keys))
    when = rng.uniform(0.5, 0.8 * estimate)  # the runs end about 0.8 of the way: the rest is the summary
    known: set[str] = set()
    with open(logs / "killed.log", "w") as out:
        proc = subprocess.Popen(
            distinv_run(config), stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO, start_new_session=True
        )
        started = last_read = time.perf_counter()
        seen: set[str] = set()
        while proc.poll() is None and time.perf_counter() - started < estimate * 4 + 60:
            now = {n for n in _names(output) if n.startswith(".results.parquet.") and n.endswith(".tmp")}
            seen |= now
            if mode == "during a write" and now and len(seen) > target_write:
                time.sleep(rng.uniform(0, 0.001))
                break
            if mode != "during a write" and time.perf_counter() - started >= when:
                break
            if not now and time.perf_counter() - last_read > 0.3:
                rows, _ = read_table(output)
                known |= finished(rows or [])
                last_read = time.perf_counter()
            time.sleep(0.001 if mode == "during a write" else 0.01)
        exited_before_kill = proc.poll() is not None
        kill_seconds = time.perf_counter() - started
        kill_group(proc)
        strays = group_pids(proc.pid)
    torn_write = [n for n in _names(output) if n.startswith(".results.parquet.") and n.endswith(".tmp")]
    done_lines = re.findall(r"\] (\S+): done in", (logs / "killed.log").read_text())
    rows, unreadable = read_table(output)
    after = finished(rows) if rows is not None else set()
    must_keep = known | set(done_lines)
    left_at_kill = temporaries(output)
    resume = run_command(distinv_run(config), 300, child_env(), logs / "resume.log")
    text = resume.output
    first = re.search(r"(\d+) runs, (\d+) already in .*, (\d+) to do", text)
    launched = set(re.findall(r"\] (\S+): done in", text)) | set(re.findall(r"\] (\S+): FAILED", text))
    final_rows, final_unreadable = read_table(output)
    final = finished(final_rows or [])
    counts = {k: sum(r["run_key"] == k and r["status"] == "ok" for r in final_rows or []) for k in final}
    missing = all_keys - after
    return {
        "mode": mode,
        "kill_after_s": round(kill_seconds, 3),
        "exited_before_kill": exited_before_kill,
        "killed_during_write": bool(torn_write) and not exited_before_kill,
        "processes_left_after_kill": strays,
        "readable": rows is not None,
        "unreadable_error": unreadable,
        "finished_after_kill": sorted(after),
        "lost": len(must_keep - after),
        "temporaries_at_kill": left_at_kill,
        "resume_to_do": int(first.group(3)) if first else None,
        "resume_launched": sorted(launched),
        "resume_only_missing": first is not None and launched == missing and int(first.group(3)) == len(missing),
        "resume_exit_code": resume.code,
        "resume_finished_all": final == all_keys and final_unreadable is None,
        "incomplete_runs": sum(count != rows_per_run for count in counts.values()),
        "temporaries_after_resume": temporaries(output),
    }


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


# ============================================================================ R3
@dataclass
class Case:
    """A bad input: ``setup(ctx)`` builds what the call needs (may communicate), ``call(ctx, state)`` is the bad
    call, which must raise on every rank with ``words`` in its message. ``failing_rank``: the case fails on that
    rank only; it must re-raise its own error (with ``own``) and every other rank a PeerRankError naming it."""

    name: str
    words: tuple[str, ...]
    call: Callable
    setup: Callable | None = None
    failing_rank: int | None = None
    own: str = ""


def _blur_stack(ctx, k: int = 3, **kwargs):
    from deepinv.physics import BlurFFT
    from deepinv.physics.functional.blur import gaussian_blur

    from distinv import distribute

    def factory(i, device, shared):
        return BlurFFT(img_size=(1, 16, 16), filter=gaussian_blur(sigma=(1.0, 0.5), angle=30.0 * i), device=device)

    return distribute(factory, ctx, num_operators=k, type_object="linear_physics", **kwargs)


def _state_physics(ctx) -> dict:
    import torch

    torch.manual_seed(0)
    physics = _blur_stack(ctx)
    x = torch.rand(1, 1, 16, 16)
    return {"physics": physics, "x": x, "y": physics.A(x), "y_local": physics.A(x, gather=False)}


def _state_denoiser(ctx) -> dict:
    import torch

    from distinv import distribute

    torch.manual_seed(0)
    return {
        "denoiser": distribute(tiny_network(1), ctx, type_object="denoiser", overlap=4),
        "x": torch.rand(1, 1, 32, 32),
    }


def _state_denoiser_dims(ctx) -> dict:
    import torch

    from distinv import distribute

    return {
        "denoiser": distribute(tiny_network(1), ctx, type_object="denoiser", overlap=4, tiling_dims=1),
        "x": torch.rand(1, 1, 32, 32),
    }


def _state_checked(ctx) -> dict:
    state = _state_physics(ctx)
    state["checked"] = _blur_stack(ctx, check_replicated=True)
    return state


def _state_failing_network(ctx) -> dict:
    """The small network distributed, raising on rank 1's windows when called."""
    import torch

    from distinv import distribute

    net = tiny_network(1)

    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, sigma=None):
            if ctx.rank == 1:
                raise RuntimeError("the network broke on rank 1's windows")
            return self.net(x, sigma)

    return {"denoiser": distribute(Failing(), ctx, type_object="denoiser", overlap=4), "x": torch.rand(1, 1, 32, 32)}


def _factory_failing_on_rank_1(ctx):
    from distinv import distribute

    def factory(i, device, shared):
        if ctx.rank == 1:
            raise RuntimeError("operator cannot be built here")
        return _one_blur(i, device)

    return distribute(factory, ctx, num_operators=2, type_object="linear_physics")


def _one_blur(i: int, device):
    from deepinv.physics import BlurFFT
    from deepinv.physics.functional.blur import gaussian_blur

    return BlurFFT(img_size=(1, 16, 16), filter=gaussian_blur(sigma=(1.0, 0.5), angle=30.0 * i), device=device)


def _non_circulant(ctx):
    import torch
    from deepinv.physics import Blur
    from deepinv.physics.functional.blur import gaussian_blur

    from distinv import distribute

    ops = [Blur(filter=gaussian_blur(sigma=(1.0, 0.5), angle=30.0 * i), padding="reflect") for i in range(2)]
    physics = distribute(ops, ctx)
    x = torch.rand(1, 1, 16, 16)
    return {"physics": physics, "y": physics.A(x)}


def _pnp_call(**bad):
    def call(ctx, s):
        from distinv.pnp import pnp

        options = {"iterations": 2, "step": 1.0, "sigma": 0.05} | bad
        algorithm = options.pop("algorithm", "hqs")
        sigma = options.pop("sigma")
        return pnp(algorithm, s["physics"], s["denoiser"], s["y"], s["x"], sigma, **options)

    return call


def _state_pnp(ctx) -> dict:
    state = _state_physics(ctx)
    from distinv import distribute

    state["denoiser"] = distribute(tiny_network(1), ctx, type_object="denoiser", overlap=4)
    return state


def _local_measurements_of_other_rank(ctx, s):
    from distinv.placements.measurements import LocalMeasurements

    physics = s["physics"]
    wrong = [i for i in range(physics.num_operators) if i not in physics.local_indexes][:1] or [0]
    return physics.A_adjoint(LocalMeasurements([s["y"][wrong[0]]], wrong, physics.num_operators))


def _distribute(obj_fn: Callable, **kwargs) -> Callable:
    def call(ctx, s):
        from distinv import distribute

        return distribute(obj_fn(), ctx, **kwargs)

    return call


def _denoiser(**kwargs) -> Callable:
    """A call that distributes the small network with ``kwargs``."""
    return _distribute(lambda: tiny_network(1), type_object="denoiser", **kwargs)


def _context(**kwargs) -> Callable:
    def call(ctx, s):
        from distinv import DistributedContext

        with DistributedContext(**kwargs):
            pass

    return call


def _ops():
    return [_one_blur(i, "cpu") for i in range(3)]


def api_cases() -> list[Case]:
    """The API's bad inputs, each run on every rank of a live group."""
    import torch

    from distinv import DistributedContext, distribute
    from distinv.placements.measurements import LocalMeasurements

    phys, den, pn = _state_physics, _state_denoiser, _state_pnp
    return [
        Case("patch_size negative", ("patch_size",), _denoiser(patch_size=-4)),
        Case("patch_size 'big'", ("patch_size",), _denoiser(patch_size="big")),
        Case("overlap negative", ("overlap",), _denoiser(overlap=-1)),
        Case("overlap larger than patch_size", ("overlap",), _denoiser(patch_size=8, overlap=16)),
        Case("max_batch_size 0", ("max_batch_size",), _denoiser(max_batch_size=0)),
        Case("max_batch_size 'many'", ("max_batch_size",), _denoiser(max_batch_size="many")),
        Case("tiling_dims not spatial", ("tiling_dims",), lambda ctx, s: s["denoiser"](s["x"], 0.05),
             _state_denoiser_dims),
        Case("tiling_strategy unknown", ("tiling_strategy",), _denoiser(tiling_strategy="checkerboard")),
        Case("memory_budget 'lots'", ("memory_budget",), _denoiser(patch_size="auto", memory_budget="lots")),
        Case("memory_budget negative", ("memory_budget",), _denoiser(patch_size="auto", memory_budget=-5)),
        Case("denoiser x not a tensor", ("x",), lambda ctx, s: s["denoiser"]([[0.0]], 0.05), den),
        Case("denoiser x without channels", ("shape",), lambda ctx, s: s["denoiser"](s["x"][0, 0], 0.05), den),
        Case("sigma of a wrong shape", ("sigma",), lambda ctx, s: s["denoiser"](s["x"], torch.ones(3)), den),
        Case("processor not callable", ("processor",), _distribute(lambda: 42, type_object="denoiser")),
        Case("y of the wrong length", ("y",), lambda ctx, s: s["physics"].A_adjoint(list(s["y"])[:2]), phys),
        Case("y a single tensor", ("y",), lambda ctx, s: s["physics"].A_adjoint(s["y"][0]), phys),
        Case("y not a list", ("y",), lambda ctx, s: s["physics"].A_adjoint("measurements"), phys),
        Case("LocalMeasurements of another rank", ("y",), _local_measurements_of_other_rank, phys),
        Case("LocalMeasurements wrong length", ("LocalMeasurements",),
             lambda ctx, s: LocalMeasurements([torch.zeros(1)], [0, 1], 3)),
        Case("x not a tensor", ("x",), lambda ctx, s: s["physics"].A_adjoint_A([s["x"]]), phys),
        Case("x not replicated", ("x",), lambda ctx, s: s["checked"].A(s["x"] + ctx.rank), _state_checked),
        Case("gather_strategy unknown", ("gather_strategy",), _distribute(_ops, gather_strategy="scatter")),
        Case("reduce_op unknown", ("reduce_op",), lambda ctx, s: s["physics"].A(s["x"], reduce_op="max"), phys),
        Case("num_operators missing with a factory", ("num_operators",),
             _distribute(lambda: _one_blur, type_object="linear_physics")),
        Case("num_operators 0", ("num_operators",),
             _distribute(lambda: _one_blur, type_object="linear_physics", num_operators=0)),
        Case("num_operators against a list", ("num_operators",), _distribute(_ops, num_operators=4)),
        Case("type_object unknown", ("type_object",), _distribute(_ops, type_object="operator")),
        Case("factory returns a non-Physics", ("factory",),
             _distribute(lambda: lambda i, d, s: "blur", num_operators=2, type_object="linear_physics")),
        Case("factory raises on one rank", ("factory",), lambda ctx, s: _factory_failing_on_rank_1(ctx),
             failing_rank=1, own="operator cannot be built here"),
        Case("network raises on one rank", ("denoiser",), lambda ctx, s: s["denoiser"](s["x"], 0.05),
             _state_failing_network, failing_rank=1, own="the network broke on rank 1's windows"),
        Case("operator_costs of the wrong length", ("operator_costs",), _distribute(_ops, operator_costs=[1, 2])),
        Case("shared and factory_kwargs both", ("shared",),
             _distribute(_ops, shared={"a": 1}, factory_kwargs={"b": 2})),
        Case("solver='fft' on non-circulant operators", ("solver",),
             lambda ctx, s: s["physics"].A_dagger(s["y"], solver="fft"), _non_circulant),
        Case("solver unknown", ("solver",), lambda ctx, s: s["physics"].A_dagger(s["y"], solver="lsqr"), phys),
        Case("pnp algorithm unknown", ("algorithm",), _pnp_call(algorithm="fista"), pn),
        Case("pnp relaxation 3", ("relaxation",), _pnp_call(relaxation=3.0), pn),
        Case("pnp sigma per iteration of the wrong length", ("sigma",), _pnp_call(sigma=[0.1, 0.05, 0.01]), pn),
        Case("pnp step negative", ("step",), _pnp_call(step=-1.0), pn),
        Case("DistributedContext backend 'mpi'", ("backend",), _context(backend="mpi")),
        Case("DistributedContext device_mode 'tpu'", ("device_mode",), _context(device_mode="tpu")),
        Case("DistributedContext num_threads 0", ("num_threads",), _context(num_threads=0)),
        Case("ctx not entered", ("ctx",),
             lambda ctx, s: distribute(tiny_network(1), DistributedContext(), type_object="denoiser")),
        Case("ctx not a DistributedContext", ("ctx",), lambda ctx, s: distribute(_ops(), "ctx")),
    ]  # fmt: skip


COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "barrier", "gather",
    "scatter", "reduce", "reduce_scatter", "all_to_all", "send", "recv", "isend", "irecv", "all_gather_into_tensor",
    "reduce_scatter_tensor", "all_to_all_single", "gather_object", "scatter_object_list",
)  # fmt: skip


AGREEMENT = ("all_gather", "all_gather_object")  # what DistributedContext.agree uses


class CollectiveCounter:
    """Records the calls of ``torch.distributed``'s collectives while active (the engine looks them up on the
    module at call time), by name in call order."""

    def __init__(self):
        self.calls: list[str] = []
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> CollectiveCounter:
        import torch.distributed as dist

        for name in COLLECTIVES:
            original = getattr(dist, name, None)
            if original is None:
                continue
            self._saved[name] = original

            def counted(*args, _original=original, _name=name, **kwargs):
                self.calls.append(_name)
                return _original(*args, **kwargs)

            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc) -> None:
        import torch.distributed as dist

        for name, original in self._saved.items():
            setattr(dist, name, original)


def run_api_case(ctx, name: str) -> dict:
    """On every rank: the case's bad call, what it raised (type, message, innermost frame, collectives made
    before raising), then one all-reduce to check the ranks are still in step."""
    import torch

    case = next(c for c in api_cases() if c.name == name)
    outcome: dict[str, Any] = {"rank": ctx.rank}
    try:
        state = case.setup(ctx) if case.setup else {}
    except Exception as exc:  # noqa: BLE001
        return {**outcome, "setup_error": f"{type(exc).__name__}: {exc}"}
    with CollectiveCounter() as counter:
        try:
            case.call(ctx, state)
            outcome["raised"] = False
        except Exception as exc:  # noqa: BLE001 - what it raised is the measurement
            frames = traceback.extract_tb(exc.__traceback__)
            outcome |= {
                "raised": True,
                "type": type(exc).__name__,
                "message": str(exc),
                "innermost": f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "",
            }
    outcome["collectives_before_error"] = counter.calls
    total = ctx.all_reduce(torch.tensor([float(ctx.rank + 1)]))
    outcome["in_step_after"] = float(total) == ctx.world_size * (ctx.world_size + 1) / 2
    return outcome


def judge_api(case: Case, per_rank: list[dict], torch_dir: str) -> list[str]:
    """Why the case fails the criteria (empty: it passes)."""
    problems = []
    for report in per_rank:
        rank = report["rank"]
        if "setup_error" in report:
            problems.append(f"rank {rank}: the case's setup failed: {report['setup_error']}")
            continue
        if not report.get("raised"):
            problems.append(f"rank {rank}: nothing raised")
            continue
        message = report["message"]
        if case.failing_rank is not None and rank == case.failing_rank:
            if case.own not in message:
                problems.append(f"rank {rank}: raised {report['type']}: {message!r}, not its own error")
        elif case.failing_rank is not None:
            if report["type"] != "PeerRankError" or f"[{case.failing_rank}]" not in message:
                problems.append(f"rank {rank}: {report['type']}: {message!r} does not name rank {case.failing_rank}")
            if not any(w in message for w in case.words):
                problems.append(f"rank {rank}: the message does not name {' / '.join(case.words)}: {message!r}")
        elif not any(w in message for w in case.words):
            problems.append(f"rank {rank}: the message does not name {' / '.join(case.words)}: {message!r}")
        if report["innermost"].startswith(torch_dir):
            problems.append(f"rank {rank}: raised inside torch ({report['innermost']}): {message!r}")
        if not report.get("in_step_after"):
            problems.append(f"rank {rank}: the ranks were out of step after the error")
    return problems


def config_cases() -> list[tuple[str, str, dict]]:
    """(name, the key the message must name, the change to a valid config)."""
    tomo = {"name": "tomography_2d", "sizes": [32], "params": {"num_angles": 12, "num_operators": 2}}
    return [
        ("unknown problem", "problem", {"problems": [{**tomo, "name": "mri"}]}),
        ("duplicate sizes", "sizes", {"problems": [{**tomo, "sizes": [32, 32]}]}),
        ("duplicate world_sizes", "world_sizes", {"world_sizes": [1, 1]}),
        ("negative overlap", "overlap", {"tiling": {"overlap": -1}}),
        ("max_batch_size 0", "max_batch_size", {"tiling": {"max_batch_size": 0}}),
        ("patch_size 'big'", "patch_size", {"tiling": {"patch_size": "big"}}),
        ("overlap larger than patch_size", "overlap", {"tiling": {"patch_size": 16, "overlap": 32}}),
        ("shipped:no-such-model", "model", {"denoiser": {"model": "shipped:no-such-model"}}),
        ("python model that cannot be imported", "model", {"denoiser": {"model": "python:no_such_module:f"}}),
        ("relaxation 3", "relaxation", {"solver": {"relaxation": 3}}),
        ("cg_iterations 0", "cg_iterations", {"solver": {"cg_iterations": 0}}),
        ("tol -1", "tol", {"solver": {"tol": -1}}),
        ("step written 1e-4 (YAML text)", "step", {"solver": {"step": "1e-4"}}),
        ("algorithm fista", "algorithm", {"solver": {"algorithm": "fista"}}),
        ("sigma of three levels", "sigma", {"solver": {"sigma": [0.1, 0.05, 0.01]}}),
        ("engines unknown", "engines", {"engines": ["distinv", "pytorch"]}),
        ("unknown top-level key", "solvr", {"solvr": {}}),
        ("threads_per_rank 0", "threads_per_rank", {"threads_per_rank": 0}),
        ("timeout_s text", "timeout_s", {"timeout_s": "soon"}),
        ("problem parameter unknown", "num_angle", {"problems": [{**tomo, "params": {"num_angle": 3}}]}),
        ("size too small for the problem", "size", {"problems": [{**tomo, "sizes": [8]}]}),
    ]


def judge_config(key: str, change: dict, output: Path) -> dict:
    """Validate a broken config in this process: the error, and whether it is a clear ConfigError."""
    import torch

    from distinv.bench.config import ConfigError, validate

    raw = runner_config(output, [tomography(32, "tiny_network")], ["none", "distinv"], [1, 2], 2) | change
    try:
        validate(raw)
        return {"passed": False, "problem": "accepted"}
    except Exception as exc:  # noqa: BLE001
        frames = traceback.extract_tb(exc.__traceback__)
        inner = frames[-1].filename if frames else ""
        problems = []
        if not isinstance(exc, ConfigError):
            problems.append(f"{type(exc).__name__}, not a ConfigError")
        if key not in str(exc):
            problems.append(f"the message does not name {key}")
        if inner.startswith(str(Path(torch.__file__).parent)):
            problems.append(f"raised inside torch ({inner})")
        return {"passed": not problems, "problem": "; ".join(problems), "message": str(exc)}


def cli_case(work: Path, name: str, raw: dict | None, key: str) -> dict:
    """``distinv run CONFIG --dry-run`` on a broken config: a non-zero exit, the key named, no traceback."""
    path = work / f"cli-{re.sub(r'[^a-z]+', '-', name)}.yml"
    if raw is not None:
        write_config(path, raw)
    done = run_command(distinv_run(path, "--dry-run"), 60, child_env(), work / f"{path.stem}.log")
    problems = []
    if done.code in (0, None):
        problems.append(f"exit code {done.code}")
    if key not in done.output:
        problems.append(f"the output does not name {key}")
    if "Traceback" in done.output:
        problems.append("the output is a traceback")
    return {"passed": not problems, "problem": "; ".join(problems), "message": done.output.strip()[-400:]}


def part_r3(tiny: bool, work: Path) -> dict:
    """Every bad input: API cases on 2 live gloo ranks (a case that does not answer in time is a hang and the
    ranks are replaced), config cases through the validation, and the command line."""
    import torch

    sys.path.insert(0, str(TESTS))
    sys.path.insert(0, str(BENCH))
    import reliability  # the ranks import the cases from this module by name

    from harness import RankFailure, RankPool

    torch_dir = str(Path(torch.__file__).parent)
    results: dict[str, dict] = {}
    pool = RankPool(2)
    try:
        for case in reliability.api_cases():
            try:
                per_rank = pool.run(reliability.run_api_case, case.name, timeout=30)
                problems = judge_api(case, per_rank, torch_dir)
            except RankFailure as exc:
                per_rank, problems = [], [f"no answer: {str(exc)[-300:]}"]
                pool.close()
                pool = RankPool(2)
            calls = [r.get("collectives_before_error") or [] for r in per_rank]
            results[f"api: {case.name}"] = {
                "passed": not problems,
                "problem": "; ".join(problems),
                "messages": sorted({f"{r.get('type')}: {r.get('message')}" for r in per_rank if r.get("raised")}),
                "collectives_before_error": calls,
                "data_collectives_before_error": sorted({c for rank in calls for c in rank if c not in AGREEMENT}),
            }
    finally:
        pool.close()
    for name, key, change in config_cases():
        results[f"config: {name}"] = judge_config(key, change, work / "unused")
    cli = [("cli: unknown problem", key_raw(work, {"problems": [{**TOMO, "name": "mri", "sizes": [32]}]}), "mri")]
    if not tiny:
        cli.append(("cli: config file missing", None, "is not a file"))
    for name, raw, key in cli:
        results[name] = cli_case(work, name, raw, key)
    failures = {name: r["problem"] for name, r in results.items() if not r["passed"]}
    late = {
        name: r["data_collectives_before_error"]
        for name, r in results.items()
        if r.get("data_collectives_before_error")
    }
    summary = {
        "passed": len(results) - len(failures),
        "total": len(results),
        "api_cases": sum(n.startswith("api:") for n in results),
        "config_cases": sum(not n.startswith("api:") for n in results),
        "before_any_collective": len(results) - len(late),
        "failing": failures,
        "after_a_collective": late,
        "cases": results,
    }
    misses = [f"{name}: {problem}" for name, problem in failures.items()]
    misses += [
        f"{name}: raised after {', '.join(calls)} (a collective other than the agreement)"
        for name, calls in late.items()
    ]
    if len(results) < 25:
        misses.append(f"only {len(results)} cases")
    return _verdict(summary, misses)


def key_raw(work: Path, change: dict) -> dict:
    return runner_config(work / "unused", [tomography(32, "tiny_network")], ["none"], [1], 2) | change


# ============================================================================ R4
def r4_cases(tiny: bool) -> dict[str, dict]:
    """The load cases: problem, size, K, ranks, PnP iterations; the heavy one (8192^2) last."""
    if tiny:
        return {
            "K=64 operators, 3 ranks": _highres(64, 64, 3, 2),
            "world size 4 on 2 cores": _tomography(64, 4, 4, 2),
            "highres 128^2 K=8, 2 ranks": _highres(128, 8, 2, 1),
        }
    return {
        "K=64 operators, 3 ranks": _highres(512, 64, 3, 3),
        "world size 4 on 2 cores": _tomography(256, 8, 4, 3),
        "highres 8192^2 K=8, 2 ranks": {**_highres(8192, 8, 2, 1), "heavy": True},
    }


def _highres(size: int, k: int, ranks: int, iterations: int) -> dict:
    params = {"num_operators": k}
    return {"problem": "highres_blur", "size": size, "params": params, "ranks": ranks, "iterations": iterations,
            "step": 1.0}  # fmt: skip


def _tomography(size: int, k: int, ranks: int, iterations: int) -> dict:
    params = {"num_operators": k, "num_angles": 8 * k}
    return {"problem": "tomography_2d", "size": size, "params": params, "ranks": ranks, "iterations": iterations,
            "step": 20.0}  # fmt: skip


# Calibrated on highres_blur at 1024^2, K=8 (2 ranks: 1.41 and 1.34 GiB peak per rank; one process: 1.80 GiB):
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
    return _verdict({"exact_below": EXACT, "memory_limit_bytes": limit, "cases": results}, misses)


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
        [sys.executable, __file__, "--worker", "reference", "--cases", by_stem, "--worker-out", str(reference_dir)],
        timeout, child_env(), work / "reference.log", rss_limit=limit,
    )  # fmt: skip
    for name in cases:
        results[name] |= _compare(results[name], reference_dir, stems[name], done)
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
        f"--master-port={free_port()}", __file__, "--worker=pnp", f"--case={json.dumps(case)}", f"--worker-out={out}",
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


def _compare(entry: dict, reference_dir: Path, stem: str, done: Finished, keep_reference: bool = False) -> dict:
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


# ============================================================================ R5
def r5_case(tiny: bool) -> dict:
    return _tomography(32 if tiny else 128, 4, 4, 2 if tiny else 3)


def part_r5(tiny: bool, work: Path) -> dict:
    """Two simulated nodes of two ranks, under torchrun (c10d rendezvous) and under srun's variables."""
    case = r5_case(tiny)
    timeout = 60 if tiny else 240
    launches = {"torchrun --nnodes 2": _two_torchrun_agents, "srun, 2 nodes x 2 tasks": _srun_tasks}
    results = {}
    for name, launch in launches.items():
        out = work / re.sub(r"[^A-Za-z0-9]+", "-", name)
        out.mkdir(parents=True, exist_ok=True)
        finished_all = launch(case, out, timeout)
        ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
        results[name] = {"dir": str(out), "launch": finished_all, "ranks": ranks, "problems": _check_nodes(ranks)}
    reference_dir = work / "reference"
    reference_dir.mkdir(exist_ok=True)
    done = run_command(
        [sys.executable, __file__, "--worker", "reference", "--cases", json.dumps({"case": case}),
         "--worker-out", str(reference_dir)],
        timeout, child_env(), work / "reference.log",
    )  # fmt: skip
    for entry in results.values():
        if not entry["problems"]:
            launched = {"dir": entry["dir"], "exit_code": 0, "ranks": entry["ranks"]}
            entry |= _compare(launched, reference_dir, "case", done, keep_reference=True)
        else:
            entry["equal"] = False
    misses = [f"{name}: {p}" for name, e in results.items() for p in e["problems"]]
    misses += [f"{name}: {e.get('problem')}" for name, e in results.items() if not e["problems"] and not e.get("equal")]
    return _verdict({"case": case, "launches": results}, misses)


def _two_torchrun_agents(case: dict, out: Path, timeout: float) -> dict:
    """Two ``torchrun --nnodes 2 --nproc-per-node 2`` agents on this host meeting at one c10d endpoint."""
    endpoint = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}", "--rdzv-id=reliability-r5", __file__, "--worker=pnp",
        f"--case={json.dumps(case)}", f"--worker-out={out}",
    ]  # fmt: skip
    return _together([(command, child_env()) for _ in range(2)], out, timeout)


def _srun_tasks(case: dict, out: Path, timeout: float) -> dict:
    """Four processes with the variables ``srun --nodes 2 --ntasks-per-node 2`` gives each task."""
    port = str(free_port())
    processes = []
    for rank in range(4):
        node = rank // 2
        env = child_env(
            SLURM_JOB_ID="4242",
            SLURM_STEP_ID="0",
            SLURM_PROCID=str(rank),
            SLURM_NTASKS="4",
            SLURM_STEP_NUM_TASKS="4",
            SLURM_LOCALID=str(rank % 2),
            SLURM_NODEID=str(node),
            SLURM_NNODES="2",
            SLURM_STEP_NUM_NODES="2",
            SLURM_TASKS_PER_NODE="2(x2)",
            SLURM_STEP_TASKS_PER_NODE="2(x2)",
            SLURM_NTASKS_PER_NODE="2",
            SLURM_JOB_NODELIST="node[01-02]",
            SLURM_STEP_NODELIST="node[01-02]",
            SLURM_NODELIST="node[01-02]",
            SLURMD_NODENAME=f"node0{node + 1}",
            SLURM_CPUS_PER_TASK="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        command = [sys.executable, __file__, "--worker=pnp", f"--case={json.dumps(case)}", f"--worker-out={out}"]
        processes.append((command, env))
    return _together(processes, out, timeout)


def _together(commands: list[tuple[list[str], dict]], out: Path, timeout: float) -> dict:
    """Start every command at once, each in a process group of its own; kill all of them at the timeout."""
    started = time.perf_counter()
    procs = []
    for i, (command, env) in enumerate(commands):
        log = open(out / f"process{i}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                       start_new_session=True), log))  # fmt: skip
    while any(p.poll() is None for p, _ in procs) and time.perf_counter() - started < timeout:
        time.sleep(0.2)
    timed_out = any(p.poll() is None for p, _ in procs)
    for p, log in procs:
        kill_group(p)
        log.close()
    codes = [None if timed_out else p.returncode for p, _ in procs]
    tails = [(out / f"process{i}.log").read_text()[-800:] for i in range(len(procs)) if codes[i] != 0]
    return {"exit_codes": codes, "timed_out": timed_out, "seconds": time.perf_counter() - started, "tails": tails}


def _check_nodes(ranks: list[dict]) -> list[str]:
    """What is wrong with the ranks' view of a 2 nodes x 2 ranks launch."""
    import torch

    if sorted(r["rank"] for r in ranks) != [0, 1, 2, 3]:
        return [f"ranks {sorted(r['rank'] for r in ranks)} reported, expected [0, 1, 2, 3]"]
    problems = []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for r in ranks:
        expected_device = f"cuda:{r['local_rank'] % gpus}" if gpus >= 2 else "cpu"
        checks = {
            "world_size": (r["world_size"], 4),
            "local_world_size": (r["local_world_size"], 2),
            "device": (r["device"], expected_device),
            "ranks counted for the memory budget": (r["local_ranks_seen"], 2),
        }
        for what, (got, want) in checks.items():
            if got != want:
                problems.append(f"rank {r['rank']}: {what} {got!r}, expected {want!r}")
        if abs(r["memory_budget"] - r["expected_memory_budget"]) > 0.05 * r["expected_memory_budget"]:
            problems.append(
                f"rank {r['rank']}: memory budget {r['memory_budget']} B, expected about "
                f"{r['expected_memory_budget']} B (half the available memory over 2 local ranks)"
            )
    by_node: dict[int, list[int]] = {}
    for r in ranks:
        by_node.setdefault(r["node"], []).append(r["local_rank"])
    if any(sorted(local) != [0, 1] for local in by_node.values()):
        problems.append(f"local ranks per node {by_node}, expected [0, 1] on each")
    return problems


# ============================================================================ orchestration
PART_FUNCTIONS: dict[str, Callable[[bool, Path], dict]] = {
    "R1": part_r1,
    "R2": part_r2,
    "R3": part_r3,
    "R4": part_r4,
    "R5": part_r5,
}
WHAT = {
    "R1": "a rank raising at PnP iteration 3 of 5 (2 ranks) under distinv run",
    "R2": "distinv run SIGKILLed at random moments, then resumed",
    "R3": "bad inputs (API on 2 gloo ranks, configs, command line)",
    "R4": "load: highres 8192^2 K=8 on 2 ranks, K=64 on 3 ranks, world 4 on 2 cores",
    "R5": "2 simulated nodes x 2 ranks: torchrun c10d and srun variables",
}


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
    if part == "R1":
        row = r["failure_row"]
        delay = "not recorded" if r["seconds_raise_to_record"] is None else f"{r['seconds_raise_to_record']:.1f} s"
        return (
            f"raise -> failure row: {delay} (limit {r['limit_s']:.0f} s); row: failed_rank={row['failed_rank']}, "
            f"{row['error_last_line'][:70]!r}; next run finished: {r['next_run_finished']}"
        )
    if part == "R2":
        n = r["trials"]
        return (
            f"readable {r['readable']}/{n}, finished runs lost {r['finished_runs_lost']}, resume only missing "
            f"{r['resume_launched_only_missing']}/{n}, temporaries after next run "
            f"{r['temporaries_left_after_next_run']}/{n}, killed while running {r['kills_while_running']}/{n} "
            f"(during a write {r['kills_during_a_write']})"
        )
    if part == "R3":
        return (
            f"{r['passed']}/{r['total']} clear ({r['api_cases']} API on 2 ranks, {r['config_cases']} config/CLI); "
            f"{r['before_any_collective']}/{r['total']} before any collective but the agreement"
        )
    if part == "R4":
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
    if part == "R5":
        parts = []
        for name, e in r["launches"].items():
            err = f"err {e['relative_error']:.1e}" if "relative_error" in e else "no result"
            parts.append(f"{name}: {'views right' if not e['problems'] else 'views WRONG'}, {err}")
        return "; ".join(parts)
    return ""


def print_table(figures: dict[str, dict]) -> None:
    print(f"{'figure':<6} {'result':<6} {'seconds':>8}  measured")
    for part, r in figures.items():
        result = "ok" if r.get("ok") else "MISS"
        print(f"{part:<6} {result:<6} {r.get('seconds', 0):8.1f}  {headline(part, r)}")
        for miss in r.get("misses", []):
            print(f"{'':<23}miss: {miss[:200]}")


def machine() -> dict:
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
            result = part_r2(args.tiny, work, args.trials, args.seed)
        elif args.part == "R4":
            result = part_r4(args.tiny, work, args.heavy)
        else:
            result = PART_FUNCTIONS[args.part](args.tiny, work)
    except Exception:  # noqa: BLE001 - a broken part is recorded, the others still run
        result = {"ok": False, "misses": [f"the part raised: {traceback.format_exc()[-1500:]}"]}
    write_json(Path(args.part_out), result)


if __name__ == "__main__":
    main()
