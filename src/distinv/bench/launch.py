"""Starting the ranks of a run: locally with ``torch.distributed.run``'s API (or a script under torchrun), on a
cluster as a SLURM job (submitit) or a job step of an existing allocation (``srun``)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from distinv.bench.spec import RunSpec, slurm_tasks_per_node


def free_port() -> int:
    """A TCP port free on localhost right now (for MASTER_PORT; torchrun's port 0 does not rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(script: str, nproc: int, script_args: Sequence[str] = ()) -> list[str]:
    """The command that runs ``script`` on ``nproc`` local ranks.

    Pass script options as ``--name=value``: torchrun's own parser would take a separate ``--nproc`` for an
    abbreviation of its ``--nproc-per-node``.
    """
    if nproc < 1:
        raise ValueError(f"nproc={nproc}: it must be at least 1.")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        script,
        *script_args,
    ]


@dataclass
class RunOutcome:
    """How one run ended: ``ok``, or the first failing rank with its error, and where its logs are."""

    key: str
    ok: bool
    seconds: float
    log_dir: Path
    failed_rank: int | None = None
    error: str | None = None


def launch_local(spec: RunSpec, output: Path, config_hash: str = "") -> RunOutcome:
    """Run ``spec`` on ``spec.world_size`` local processes through ``torch.distributed.run``'s API
    (``elastic_launch``): one process per device, each rank's output in ``output/logs/<key>/``.

    A rank that raises fails the run: the launcher stops the other ranks (which may be waiting in a collective)
    at once and reports the first failure's rank and exception. A collective that hangs fails after the run's
    ``timeout_s``. A launch that fails before any rank could (rendezvous, a port in use, a spawn error) is a
    failed outcome too, with no rank and the launcher's traceback: this never raises for a run that failed.
    The log folder of an earlier attempt is replaced, unless another launch of the run is using it (see
    :func:`claim_log_folder`): then the run fails at once and that folder is left alone.
    """
    log_dir = Path(output) / "logs" / spec.key
    try:
        with claim_log_folder(log_dir):
            return _launch(spec, output, config_hash, log_dir)
    except LogFolderInUseError as exc:
        return RunOutcome(spec.key, False, 0.0, log_dir, None, f"{type(exc).__name__}: {exc}")
    except OSError:
        text = f"the log folder {log_dir} could not be prepared:\n" + traceback.format_exc()
        return RunOutcome(spec.key, False, 0.0, log_dir, None, text.strip())


class LogFolderInUseError(RuntimeError):
    """Another launch of the same run holds its log folder."""


@contextmanager
def claim_log_folder(log_dir: Path) -> Iterator[None]:
    """Hold run ``log_dir``'s lock (``logs/.<key>.lock``, an OS lock: a killed launcher releases it), then empty
    the folder of an earlier attempt, for as long as the launch lasts.

    :raises LogFolderInUseError: another launch holds it (nothing is removed).
    :raises OSError: the folder cannot be written.
    """
    log_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = log_dir.parent / f".{log_dir.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            pid = f" (pid {holder[0]})" if holder else ""
            raise LogFolderInUseError(
                f"the log folder {log_dir} is in use by another launch of this run{pid}: let it finish, or stop "
                "it, then run this one again."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if log_dir.exists():
            shutil.rmtree(log_dir)
        log_dir.mkdir(parents=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def _launch(spec: RunSpec, output: Path, config_hash: str, log_dir: Path) -> RunOutcome:
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from distinv.bench.worker import run_rank

    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=spec.world_size,
        run_id=spec.key,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        # This process hosts the rendezvous: if the port was taken meanwhile, fail at once instead of joining
        # (and waiting on) the store of whoever took it.
        rdzv_configs={"is_host": True},
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir), redirects=Std.ALL, tee=Std.NONE),
    )
    started = time.perf_counter()
    quiet = logging.getLogger("torch.distributed.elastic")
    level, quiet.level = quiet.level, logging.CRITICAL  # the agent logs every start and stop at INFO/ERROR
    try:
        elastic_launch(launch, run_rank)(spec.to_json(), str(output), config_hash)
    except ChildFailedError as exc:
        rank, text = _root_cause(exc.failures, log_dir)
        return RunOutcome(spec.key, False, time.perf_counter() - started, log_dir, rank, text)
    except Exception:  # whatever stopped the launch fails this run, not the runner
        text = "the ranks could not be launched:\n" + traceback.format_exc()
        return RunOutcome(spec.key, False, time.perf_counter() - started, log_dir, None, text.strip())
    finally:
        quiet.level = level
    return RunOutcome(spec.key, True, time.perf_counter() - started, log_dir)


PEER_ERRORS = (
    "PeerRankError",
    "DistBackendError",
    "gloo",
    "NCCL",
    "Connection closed",
    "Connection reset",
    "Broken pipe",
    "Signal",
)


def _root_cause(failures: dict, log_dir: Path) -> tuple[int, str]:
    """The rank that failed first and its traceback: from the ranks' own error files (``rank<R>.error.json``,
    exact times), preferring an error of the rank's own over a collective broken by a peer that had died;
    else from the launcher's record of the failed processes."""
    reports = []
    for path in log_dir.glob("rank*.error.json"):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if reports:
        first = min(reports, key=lambda r: (any(m in r["error"] for m in PEER_ERRORS), r["time"], r["rank"]))
        return first["rank"], first["error"].strip()
    rank, failure = min(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    return rank, _failure_text(failure)


def _failure_text(failure) -> str:
    """The failing rank's traceback (from the error file ``@record`` writes), else its exit code."""
    message = failure.message
    if isinstance(message, dict):
        inner = message.get("message", message)
        if isinstance(inner, dict):
            trace = inner.get("extraInfo", {}).get("py_callstack")
            return str(trace or inner.get("message") or inner).strip()
        trace = message.get("extraInfo", {}).get("py_callstack")
        return str(trace or inner).strip()
    return str(message or f"exit code {failure.exitcode}").strip()


def srun_command(spec: RunSpec, output: Path, config_hash: str = "", slurm: dict | None = None) -> list[str]:
    """The command that runs ``spec`` as one job step inside an existing SLURM allocation (one task per rank,
    :func:`~distinv.bench.spec.slurm_tasks_per_node` of the config's ``slurm`` section per node;
    :class:`distinv.DistributedContext` reads the ranks from SLURM's variables)."""
    per_node = slurm_tasks_per_node(slurm or {}, spec.device, spec.world_size)
    nodes = -(-spec.world_size // per_node)
    command = [
        "srun",
        f"--ntasks={spec.world_size}",
        f"--nodes={nodes}",
        f"--ntasks-per-node={min(per_node, spec.world_size)}",
    ]
    if spec.device == "cuda":
        command.append("--gpus-per-task=1")
    command += [f"--cpus-per-task={spec.threads_per_rank}", "--kill-on-bad-exit=1"]
    return command + [sys.executable, "-m", "distinv.bench.worker", spec.to_json(), str(output), config_hash]


def slurm_executor(spec: RunSpec, slurm: dict, folder: Path):
    """A submitit executor sized for ``spec`` (nothing is submitted): ``ceil(world / per_node)`` nodes, one task
    per rank, one GPU per task on ``cuda``; partition, QoS, account and setup lines from the config's ``slurm``."""
    import submitit

    per_node = slurm_tasks_per_node(slurm, spec.device, spec.world_size)
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    parameters = {
        "nodes": -(-spec.world_size // per_node),
        "tasks_per_node": per_node,
        "cpus_per_task": max(slurm.get("cpus_per_task") or 1, spec.threads_per_rank),
        "timeout_min": slurm["time_min"],
        "name": spec.key,
        "slurm_setup": list(slurm.get("setup") or []),
    }
    if spec.device == "cuda":
        parameters["gpus_per_node"] = per_node
    for key in ("partition", "qos", "account"):
        if slurm.get(key):
            parameters[f"slurm_{key}"] = slurm[key]
    executor.update_parameters(**parameters)
    return executor


def submit_slurm(spec: RunSpec, slurm: dict, output: Path, config_hash: str = ""):
    """Submit ``spec`` as one SLURM job; every task runs :func:`~distinv.bench.worker.run_rank`."""
    from distinv.bench.worker import run_rank

    executor = slurm_executor(spec, slurm, Path(output) / "slurm")
    return executor.submit(run_rank, spec.to_json(), str(output), config_hash)
