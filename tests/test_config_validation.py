"""What a run would only find out at run time is a config error before any run: tiling, solver values, the
denoiser, SLURM settings and grid entries given twice; each names its key and the fix. Also: the memory a
rank plans for under ``srun`` is its share of the node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distinv.bench.config import ConfigError, validate

TESTS = Path(__file__).parent
TOMO = {"name": "tomography_2d", "sizes": [32], "params": {"num_angles": 12, "num_operators": 2}}
SOLVER = {"algorithm": "hqs", "iterations": 2, "step": 5.0, "sigma": [0.1, 0.05], "cg_iterations": 2}


@pytest.fixture(autouse=True)
def _the_test_models_import(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def _config(tmp_path: Path, **changes) -> dict:
    raw = {
        "name": "checked",
        "output": str(tmp_path / "results"),
        "world_sizes": [1, 2],
        "engines": ["none", "distinv"],
        "oversubscribe": True,
        "problems": [{**TOMO, "denoiser": {"model": "python:runner_models:tiny"}}],
        "solver": SOLVER,
        "tiling": {"overlap": 8},
    }
    return raw | changes


def _problem(**changes) -> list[dict]:
    return [{**TOMO, "denoiser": {"model": "python:runner_models:tiny"}, **changes}]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"tiling": {"overlap": -8}}, "tiling.overlap=-8: give the halo in pixels, a whole number >= 0"),
        ({"tiling": {"max_batch_size": 0}}, "tiling.max_batch_size=0: give the most windows per network call"),
        ({"tiling": {"patch_size": "big"}}, "tiling.patch_size='big': give the pixels a window owns per side"),
        ({"tiling": {"patch_size": 16, "overlap": 32}}, "tiling: overlap=32 is larger than patch_size=16"),
        ({"problems": _problem(tiling={"overlap": -1})}, "problems[0].tiling.overlap=-1: give the halo"),
        ({"problems": _problem(tiling={"patch_size": 4})}, "problems[0].tiling: overlap=8 is larger than patch_size=4"),
        (
            {"engines": ["distinv", "deepinv"], "tiling": {"patch_size": "auto"}},
            "'auto' is distinv's replicated engine's alone: deepinv in engines",
        ),
        (
            {"engines": ["distinv", "distinv-sharded"], "tiling": {"max_batch_size": "auto"}},
            "'auto' is distinv's replicated engine's alone: distinv-sharded in engines",
        ),
        ({"solver": {**SOLVER, "relaxation": 2}}, "solver.relaxation=2: give a number in (0, 2)"),
        ({"solver": {**SOLVER, "relaxation": 0}}, "solver.relaxation=0: give a number in (0, 2)"),
        ({"solver": {**SOLVER, "cg_iterations": 0}}, "solver.cg_iterations=0: give a whole number >= 1"),
        ({"solver": {**SOLVER, "tol": 0}}, "solver.tol=0: give the relative change > 0"),
        ({"solver": {**SOLVER, "tol": "1e-4"}}, "YAML reads 1e-4 as text: write it with a dot, e.g. 0.0001"),
        ({"solver": {**SOLVER, "step": True}}, "solver.step=True: give a step > 0"),
        ({"problems": _problem(solver={"relaxation": -1})}, "problems[0].solver.relaxation=-1: give a number"),
        ({"denoiser": {"model": "shipped:no-such-model"}}, "denoiser.model='shipped:no-such-model': no such shipped"),
        ({"problems": _problem(denoiser={"model": "shipped:nope"})}, "problems[0].denoiser.model='shipped:nope'"),
        ({"denoiser": {"model": "untrained:NoSuchNet"}}, "'NoSuchNet' is not a deepinv denoiser class"),
        ({"denoiser": {"model": "python:runner_models"}}, "write python:module:factory"),
        ({"denoiser": {"model": "python:runner_models:nope"}}, "module 'runner_models' has no function 'nope'"),
        ({"denoiser": {"model": "python:no_such_module_x:f"}}, "'no_such_module_x' cannot be imported"),
        ({"denoiser": {"model": "missing/weights.pt"}}, "denoiser.model='missing/weights.pt': no such file"),
        ({"denoiser": {"model": 3}}, "denoiser.model=3: give 'auto', shipped:NAME"),
        ({"world_sizes": [1, 1]}, "world_sizes=[1, 1]: the world size 1 is given more than once"),
        ({"engines": ["distinv", "distinv"]}, "engines=['distinv', 'distinv']: the engine 'distinv' is given more"),
        ({"problems": _problem(sizes=[32, 32])}, "problems[0].sizes=[32, 32]: the size 32 is given more than once"),
        ({"problems": _problem() + _problem()}, "problems[0] and problems[1] give the same runs"),
        ({"slurm": {"nodes": "two"}}, "slurm.nodes='two': give a whole number >= 1"),
        ({"slurm": {"setup": "module load cuda"}}, "slurm.setup='module load cuda': give a list of shell lines"),
    ],
)
def test_each_value_a_run_would_refuse_is_a_config_error_naming_its_key(tmp_path, change, message):
    with pytest.raises(ConfigError) as error:
        validate(_config(tmp_path, **change))
    assert message in str(error.value)


def test_the_shipped_models_are_named_in_the_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        validate(_config(tmp_path, denoiser={"model": "shipped:no-such-model"}))
    assert "shipped:drunet-small-grey" in str(error.value) and "shipped:drunet-small-colour" in str(error.value)


def test_an_error_given_at_the_top_level_is_reported_once(tmp_path):
    problems = _problem() + [{**TOMO, "sizes": [48]}]
    with pytest.raises(ConfigError) as error:
        validate(_config(tmp_path, tiling={"patch_size": 16, "overlap": 32}, problems=problems))
    assert str(error.value).count("overlap=32 is larger") == 1


@pytest.mark.parametrize(
    "change",
    [
        {"denoiser": {"model": "shipped:drunet-small-grey"}},
        {"denoiser": {"model": "drunet-small-grey"}},
        {"denoiser": {"model": "auto"}},
        {"denoiser": {"model": "untrained:DRUNet"}},
        {"tiling": {"patch_size": "auto", "max_batch_size": "auto", "overlap": 0}},
        {"tiling": {"patch_size": 64, "overlap": 8, "max_batch_size": 4}},
        {"solver": {**SOLVER, "relaxation": 1.5, "tol": 0.0001, "cg_iterations": 1}},
        {"slurm": {"nodes": 2, "tasks_per_node": 4, "setup": ["module load cuda"], "partition": "gpu"}},
    ],
)
def test_valid_values_are_accepted(tmp_path, change):
    validate(_config(tmp_path, **change))


def test_a_weights_file_that_exists_is_accepted(tmp_path):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"checked when the run loads it")
    validate(_config(tmp_path, denoiser={"model": str(weights)}))


def test_shipped_names_are_checked_without_loading_any_weights(tmp_path, monkeypatch):
    import torch

    def no_loading(*args, **kwargs):
        raise AssertionError("validation loaded weights")

    monkeypatch.setattr(torch, "load", no_loading)
    validate(_config(tmp_path, denoiser={"model": "shipped:drunet-small-grey"}))
    with pytest.raises(ConfigError, match="no such shipped model"):
        validate(_config(tmp_path, denoiser={"model": "shipped:drunet-small-gray"}))


def test_under_slurm_a_python_factory_is_checked_for_its_form_only(tmp_path):
    raw = _config(tmp_path, denoiser={"model": "python:only_on_the_cluster:build"}, slurm={"nodes": 2})
    validate(raw, slurm=True)  # the job's setup lines may make it importable
    with pytest.raises(ConfigError, match="write python:module:factory"):
        validate({**raw, "denoiser": {"model": "python:only_on_the_cluster"}}, slurm=True)


def test_a_max_batch_size_given_reaches_distinv_whatever_its_value():
    from distinv.bench.engines import tiling_knobs
    from distinv.bench.spec import TilingSpec

    given = tiling_knobs("distinv", TilingSpec(overlap=8, max_batch_size=0), (64, 64))
    unset = tiling_knobs("distinv", TilingSpec(overlap=8, max_batch_size=None), (64, 64))
    assert given["max_batch_size"] == 0  # distinv refuses it
    assert "max_batch_size" not in unset


# ------------------------------------------------------------------------------------------ memory budget

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
GIB = 2**30


@pytest.fixture
def launch_env(monkeypatch):
    """A clean launch environment and a host with 64 GiB available; returns ``set(**variables)``."""
    import distinv.runtime.memory as memory

    for name in list(os.environ):
        if name in LAUNCH_VARIABLES or name.startswith("SLURM_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(memory, "_meminfo_kib", lambda field: 64 * GIB // 1024)

    def set_env(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_env


SRUN = {"SLURM_STEP_ID": "0", "SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "16"}


def test_under_srun_each_rank_plans_for_its_share_of_the_node(launch_env):
    from distinv.runtime.memory import default_memory_budget

    launch_env(**SRUN, SLURM_PROCID="11", SLURM_LOCALID="3", SLURM_NODEID="1", SLURM_STEP_TASKS_PER_NODE="8(x2)")
    assert default_memory_budget("cpu") == 32 * GIB // 8


def test_under_srun_the_tasks_per_node_of_the_job_count_when_the_step_gives_none(launch_env):
    from distinv.runtime.memory import default_memory_budget

    launch_env(**SRUN, SLURM_PROCID="5", SLURM_LOCALID="1", SLURM_NODEID="1", SLURM_TASKS_PER_NODE="12,4")
    assert default_memory_budget("cpu") == 32 * GIB // 4
    launch_env(SLURM_TASKS_PER_NODE="", SLURM_NTASKS_PER_NODE="8")
    assert default_memory_budget("cpu") == 32 * GIB // 8


def test_a_single_process_and_torchrun_keep_their_budgets(launch_env):
    from distinv.runtime.memory import default_memory_budget

    assert default_memory_budget("cpu") == 32 * GIB
    launch_env(RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", MASTER_ADDR="h", MASTER_PORT="29500")
    assert default_memory_budget("cpu") == 32 * GIB // 2
