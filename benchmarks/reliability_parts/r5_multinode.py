"""R5: two nodes simulated on this host: two ``torchrun --nnodes 2`` agents meeting through a c10d rendezvous, and
srun's variables of 2 nodes x 2 tasks set by hand: ranks, local ranks, local world size, device and memory budget
on every rank, and the PnP result against the single-process one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, SCRIPT, child_env, free_port, kill_group, run_command, verdict
from .pnp_cases import compare, tomography_case

WHAT = "2 simulated nodes x 2 ranks: torchrun c10d and srun variables"


def r5_case(tiny: bool) -> dict:
    """R5's PnP case: tomography, K=4 on 4 ranks."""
    return tomography_case(32 if tiny else 128, 4, 4, 2 if tiny else 3)


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
        [sys.executable, SCRIPT, "--worker", "reference", "--cases", json.dumps({"case": case}),
         "--worker-out", str(reference_dir)],
        timeout, child_env(), work / "reference.log",
    )  # fmt: skip
    for entry in results.values():
        if not entry["problems"]:
            launched = {"dir": entry["dir"], "exit_code": 0, "ranks": entry["ranks"]}
            entry |= compare(launched, reference_dir, "case", done, keep_reference=True)
        else:
            entry["equal"] = False
    misses = [f"{name}: {p}" for name, e in results.items() for p in e["problems"]]
    misses += [f"{name}: {e.get('problem')}" for name, e in results.items() if not e["problems"] and not e.get("equal")]
    return verdict({"case": case, "launches": results}, misses)


def _two_torchrun_agents(case: dict, out: Path, timeout: float) -> dict:
    """Two ``torchrun --nnodes 2 --nproc-per-node 2`` agents on this host meeting at one c10d endpoint."""
    endpoint = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}", "--rdzv-id=reliability-r5", SCRIPT, "--worker=pnp",
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
        command = [sys.executable, SCRIPT, "--worker=pnp", f"--case={json.dumps(case)}", f"--worker-out={out}"]
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


def headline(r: dict) -> str:
    """One line of what R5 measured."""
    parts = []
    for name, e in r["launches"].items():
        err = f"err {e['relative_error']:.1e}" if "relative_error" in e else "no result"
        parts.append(f"{name}: {'views right' if not e['problems'] else 'views WRONG'}, {err}")
    return "; ".join(parts)
