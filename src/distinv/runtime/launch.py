"""How was this process launched? Single process, torchrun, or SLURM's ``srun``.

:func:`detect_launch` reads only the environment (a mapping, so tests can pass their own) and returns a
:class:`Launch`, or raises :class:`LaunchError` naming the variable and the fix when the launch is half
configured. It never initialises anything.

Precedence: torchrun's variables (``RANK``, ``WORLD_SIZE``) win over SLURM's, so that ``torchrun`` inside a
SLURM allocation works; SLURM is used only inside a job step (``SLURM_STEP_ID`` is set by ``srun``), so a
plain ``python`` in a batch script or ``salloc`` shell is a single process, as the user asked for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


class LaunchError(RuntimeError):
    """The environment describes an impossible or incomplete distributed launch."""


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the job.

    ``init_method`` is what :func:`torch.distributed.init_process_group` should use (``None`` for a single
    process): ``"env://"`` under torchrun (its agent may already serve the rendezvous store), an explicit
    ``tcp://host:port`` under SLURM.
    """

    source: str  # "single", "torchrun" or "slurm"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    init_method: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1 or self.source != "single"


def detect_launch(env: Mapping[str, str]) -> Launch:
    """Classify the launch described by ``env`` (usually ``os.environ``)."""
    if any(name in env for name in ("RANK", "WORLD_SIZE")):
        return _torchrun_launch(env)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return _slurm_launch(env)
    if "LOCAL_RANK" in env and _int(env, "LOCAL_RANK") != 0:
        raise LaunchError(
            f"LOCAL_RANK={env['LOCAL_RANK']} is set but RANK and WORLD_SIZE are not: this looks like a "
            "half-configured launch. Start the script with `torchrun --nproc-per-node N script.py`, or set "
            "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT on every process."
        )
    return Launch(source="single")


def _torchrun_launch(env: Mapping[str, str]) -> Launch:
    for name in ("RANK", "WORLD_SIZE"):
        if name not in env:
            other = "WORLD_SIZE" if name == "RANK" else "RANK"
            raise LaunchError(
                f"{other} is set but {name} is not. Set both RANK and WORLD_SIZE (torchrun does), or unset "
                f"{other} to run as a single process."
            )
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    _check_rank(rank, world, "RANK", "WORLD_SIZE")
    # Without torchrun's local variables, assume all ranks share this host.
    local_rank = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    local_world = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
    _check_rank(local_rank, local_world, "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    if world > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:
            raise LaunchError(
                f"RANK/WORLD_SIZE describe {world} processes but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set, so the processes cannot meet. Launch with "
                "torchrun, or export MASTER_ADDR (the host of rank 0) and MASTER_PORT (a free port)."
            )
        _int(env, "MASTER_PORT")
    return Launch("torchrun", rank, world, local_rank, local_world, init_method="env://")


def _slurm_launch(env: Mapping[str, str]) -> Launch:
    rank = _int(env, "SLURM_PROCID")
    world_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    if world_var not in env:
        raise LaunchError(
            "SLURM_PROCID is set but neither SLURM_STEP_NUM_TASKS nor SLURM_NTASKS is: run the script with "
            "`srun --ntasks N python script.py`."
        )
    world = _int(env, world_var)
    _check_rank(rank, world, "SLURM_PROCID", world_var)
    local_rank = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
    local_world = _slurm_local_world_size(env, fallback=world)
    _check_rank(local_rank, local_world, "SLURM_LOCALID", "tasks on this node")
    addr = env.get("MASTER_ADDR") or first_host(
        env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    )
    if not addr:
        raise LaunchError(
            "Under srun but no node list (SLURM_STEP_NODELIST / SLURM_JOB_NODELIST) to find rank 0's host: "
            "export MASTER_ADDR."
        )
    port = _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else slurm_port(env)
    return Launch("slurm", rank, world, local_rank, local_world, init_method=f"tcp://{addr}:{port}")


def slurm_port(env: Mapping[str, str]) -> int:
    """A port in [20000, 40000) derived from the job id, so that concurrent jobs on a node differ."""
    digits = re.sub(r"\D", "", env.get("SLURM_JOB_ID", "")) or "0"
    return 20000 + int(digits) % 20000


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list: ``"gpu[017-020,031],cpu3"`` gives ``"gpu017"``."""
    nodelist = nodelist.strip()
    if not nodelist:
        return ""
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if match is None:
        return ""
    prefix, bracket = match.group(1), match.group(3)
    if bracket is None:
        return prefix
    first = bracket.split(",")[0].split("-")[0]
    return prefix + first


def _slurm_local_world_size(env: Mapping[str, str], fallback: int) -> int:
    """Tasks on this node, from ``SLURM_STEP_TASKS_PER_NODE`` (e.g. ``"4(x2),3"``) and ``SLURM_NODEID``."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return _int(env, "SLURM_NTASKS_PER_NODE") if env.get("SLURM_NTASKS_PER_NODE") else fallback
    per_node: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(\(x(\d+)\))?", part.strip())
        if m is None:
            raise LaunchError(f"Cannot read the SLURM tasks-per-node list {spec!r}.")
        per_node += [int(m.group(1))] * int(m.group(3) or 1)
    node = _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
    if node >= len(per_node):
        raise LaunchError(f"SLURM_NODEID={node} but the tasks-per-node list {spec!r} has {len(per_node)} nodes.")
    return per_node[node]


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise LaunchError(f"{name}={env[name]!r} is not an integer.") from None


def _check_rank(rank: int, size: int, rank_name: str, size_name: str) -> None:
    if size < 1:
        raise LaunchError(f"{size_name}={size}: it must be at least 1.")
    if not 0 <= rank < size:
        raise LaunchError(
            f"{rank_name}={rank} is outside [0, {size_name}={size}): every rank must be in 0..{size - 1}. "
            "Check the launch command (one process per rank, the same world size everywhere)."
        )
