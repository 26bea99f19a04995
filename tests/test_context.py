"""DistributedContext: single process, torchrun and SLURM launches, and half-configured launches that fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distinv import DistributedContext, LaunchError
from distinv.bench.launch import torchrun_command
from distinv.comm.context import available_cores
from distinv.runtime.launch import detect_launch, first_host, slurm_port

PROBE = str(Path(__file__).with_name("probe_launch.py"))
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}


def reports(folder: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in folder.glob("rank*.json")), key=lambda r: r["rank"])


# ---------------------------------------------------------------- launch discovery (pure)
def test_no_launcher_variables_mean_a_single_process():
    assert detect_launch({}).source == "single"
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}).source == "single"  # sbatch, no srun


def test_torchrun_variables_are_read():
    launch = detect_launch(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "29500",
        }
    )
    assert (launch.source, launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (
        "torchrun",
        3,
        4,
        1,
        2,
    )
    assert launch.init_method == "env://"


def test_srun_variables_are_read_with_master_from_the_node_list():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_NODELIST": "gpu[017-020],cpu3",
        "SLURM_NODEID": "2",
        "SLURM_STEP_TASKS_PER_NODE": "2(x4)",
    }
    launch = detect_launch(env)
    assert (launch.source, launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (
        "slurm",
        5,
        8,
        1,
        2,
    )
    assert launch.init_method == f"tcp://gpu017:{slurm_port(env)}"
    assert 20000 <= slurm_port(env) < 40000


@pytest.mark.parametrize("nodelist,host", [("node7", "node7"), ("a[01-04]", "a01"), ("x[3,5-6],y1", "x3"), ("", "")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize(
    "env,words",
    [
        ({"WORLD_SIZE": "2"}, ["RANK"]),
        ({"RANK": "0"}, ["WORLD_SIZE"]),
        ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, ["RANK=2", "0..1"]),
        ({"RANK": "0", "WORLD_SIZE": "2"}, ["MASTER_ADDR", "MASTER_PORT"]),
        ({"LOCAL_RANK": "1"}, ["LOCAL_RANK", "torchrun"]),
        ({"RANK": "x", "WORLD_SIZE": "2"}, ["RANK", "integer"]),
        (
            {"SLURM_PROCID": "4", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "n1"},
            ["SLURM_PROCID=4"],
        ),
    ],
)
def test_a_half_configured_launch_is_an_error_with_the_fix(env, words):
    with pytest.raises(LaunchError) as info:
        detect_launch(env)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(LaunchError):
        DistributedContext(env=env).__enter__()


# ---------------------------------------------------------------- single process
def test_single_process_context_uses_all_cores_and_restores_threads():
    before = torch.get_num_threads()
    with DistributedContext(seed=3, env={}) as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_distributed, ctx.device.type) == (0, 1, False, "cpu")
        assert torch.get_num_threads() == available_cores()
        a = torch.rand(3)
        assert ctx.all_reduce(a.clone()).equal(a)
        assert ctx.local_indices(5) == [0, 1, 2, 3, 4]
    assert torch.get_num_threads() == before
    torch.manual_seed(3)
    assert torch.rand(3).equal(a)


def test_gpus_requested_without_enough_gpus_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LaunchError, match="GPU"):
        DistributedContext(device_mode="gpu", env={}).__enter__()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backend": "mpi"},
        {"device_mode": "tpu"},
        {"num_threads": 0},
        {"backend": "nccl", "device_mode": "cpu"},
    ],
)
def test_bad_context_arguments_are_rejected_by_name(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DistributedContext(**kwargs)


# ---------------------------------------------------------------- real launches
def run_torchrun(out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = torchrun_command(PROBE, nproc, [f"--out={out}", *extra])
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=CLEAN)


def test_torchrun_launch_forms_a_group_with_same_seed_on_every_rank(tmp_path):
    done = run_torchrun(tmp_path)
    assert done.returncode == 0, done.stderr
    got = reports(tmp_path)
    assert [r["rank"] for r in got] == [0, 1]
    for r in got:
        assert (r["world_size"], r["local_world_size"], r["source"], r["backend"]) == (
            2,
            2,
            "torchrun",
            "gloo",
        )
        assert r["sum_of_ranks_plus_one"] == 3.0
        assert r["threads"] == max(1, available_cores() // 2)
        assert r["group_destroyed"]
    assert got[0]["random"] == got[1]["random"]


def test_seed_offset_gives_each_rank_its_own_stream(tmp_path):
    done = run_torchrun(tmp_path, "--seed-offset")
    assert done.returncode == 0, done.stderr
    got = reports(tmp_path)
    assert got[0]["random"] != got[1]["random"]


def test_srun_launch_is_detected_from_slurm_variables(tmp_path):
    job = str(int(time.time() * 1000) % 10_000_000)
    processes = []
    for rank in range(2):
        env = dict(
            CLEAN,
            SLURM_PROCID=str(rank),
            SLURM_NTASKS="2",
            SLURM_LOCALID=str(rank),
            SLURM_STEP_ID="0",
            SLURM_JOB_ID=job,
            SLURM_STEP_NODELIST="localhost",
            SLURM_NODEID="0",
            SLURM_STEP_TASKS_PER_NODE="2",
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, PROBE, "--out", str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=180) for p in processes]
    assert all(p.returncode == 0 for p in processes), [o[1] for o in outputs]
    got = reports(tmp_path)
    assert [(r["rank"], r["world_size"], r["local_rank"], r["source"]) for r in got] == [
        (0, 2, 0, "slurm"),
        (1, 2, 1, "slurm"),
    ]
    assert all(r["sum_of_ranks_plus_one"] == 3.0 for r in got)


def test_a_failing_rank_fails_the_run_with_its_rank_and_cause_instead_of_hanging(tmp_path):
    start = time.monotonic()
    done = run_torchrun(tmp_path, "--fail-rank=1")
    assert done.returncode != 0
    assert "rank 1/2 failed" in done.stderr and "deliberate failure" in done.stderr
    assert time.monotonic() - start < 60


def _time_collectives(ctx):
    before = ctx.comm_seconds
    if ctx.rank == 1:
        time.sleep(0.2)  # rank 0 waits for rank 1 inside the all-reduce
    ctx.all_reduce(torch.ones(4))
    return ctx.comm_seconds - before


def test_time_in_collectives_is_counted_waiting_included(ranks):
    waited = ranks(2).run(_time_collectives)
    assert waited[0] >= 0.15 and waited[1] < waited[0]
    with DistributedContext(env={}) as ctx:
        ctx.all_reduce(torch.ones(4))
        assert ctx.comm_seconds == 0.0  # one process: no communication


def check_untimed_collectives(ctx):
    asked = ctx._time_collectives
    ctx._time_collectives = False  # as DistributedContext(time_collectives=False) makes it
    try:
        before, sent = ctx.comm_seconds, ctx.bytes_sent
        ctx.all_reduce(torch.ones(1000))
        return ctx.comm_seconds - before, ctx.bytes_sent - sent
    finally:
        ctx._time_collectives = asked


def test_untimed_collectives_count_their_bytes_but_no_seconds_and_gpu_contexts_default_to_untimed(ranks):
    assert ranks(2).run(check_untimed_collectives) == [(0.0, 4000), (0.0, 4000)]
    ctx = DistributedContext(env={})
    assert ctx.time_collectives  # on CPU: timed, it costs no synchronisation
    ctx.device = torch.device("cuda")
    assert not ctx.time_collectives  # on GPU only when asked: two synchronisations per collective
    assert DistributedContext(env={}, time_collectives=True).time_collectives
