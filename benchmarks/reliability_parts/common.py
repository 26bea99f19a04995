"""What several reliability figures share: launching commands in a process group of their own with a time box
(and killing the whole group), free ports, the children's environment, atomic JSON, memory readings, the small
network of the configs, and the small runner configs of R1-R3.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
TESTS = REPO / "tests"
SCRIPT = str(BENCH / "reliability.py")  # the entry point: R4 and R5 launch its --worker (pnp, reference)
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


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
    """The small network (``python:reliability:tiny_network`` in a config: ``reliability.py`` re-exports it), the
    same weights everywhere."""
    import torch

    torch.manual_seed(0)
    return _small_net_class()(channels).eval()


# ============================================================================ runner configs (R1, R2, R3)
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
    """A config's tomography problem at ``size`` denoised by ``model``, a network of ``reliability.py``."""
    return {**TOMO, "sizes": [size], "denoiser": {"model": f"python:reliability:{model}"}}


def write_config(path: Path, raw: dict) -> Path:
    """Write ``raw`` as YAML to ``path``; returns ``path``."""
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def distinv_run(config: Path, *extra: str) -> list[str]:
    """The command line of ``distinv run CONFIG [extra]``."""
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
    """The keys of the runs the table's rows show finished."""
    return {r["run_key"] for r in rows if r.get("status") == "ok"}


def validated(raw: dict):
    """The validated config of ``raw`` (this folder importable, for its models)."""
    from distinv.bench.config import validate

    sys.path.insert(0, str(BENCH))
    return validate(raw)


def verdict(result: dict, misses: list[str]) -> dict:
    """A figure's result: ``ok`` when nothing missed, the misses, then what it measured."""
    return {"ok": not misses, "misses": misses, **result}
