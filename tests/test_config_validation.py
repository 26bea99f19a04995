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


# ------------------------------------------------------------------------------------------ numbers

NAN, INF = float("nan"), float("inf")
TRAINING = {"algorithm": "pgd", "iterations": 2, "steps": 3, "lr": 1e-3, "validate_every": 2}
BLUR = {"name": "highres_blur", "sizes": [64], "params": {"num_operators": 2}}
RADIO = {"name": "radio", "sizes": [32], "params": {"num_operators": 2, "num_times": 4, "num_antennas": 4}}


def _training(**changes) -> dict:
    return {"solver": {}, "training": {**TRAINING, **changes}}


def _params(entry: dict, **params) -> list[dict]:
    return [{**entry, "params": {**entry["params"], **params}, "denoiser": {"model": "python:runner_models:tiny"}}]


@pytest.mark.parametrize(
    "change,message",
    [
        (_training(lr=NAN), "training.lr=nan: give a number > 0"),
        (_training(lr=INF), "training.lr=inf: give a number > 0"),
        (_training(sigma=NAN), "training.sigma=nan: give a number > 0"),
        (_training(stepsize=INF), "training.stepsize=inf: give a step > 0"),
        ({"solver": {**SOLVER, "step": NAN}}, "solver.step=nan: give a step > 0"),
        ({"solver": {**SOLVER, "step": INF}}, "solver.step=inf: give a step > 0"),
        ({"solver": {**SOLVER, "sigma": INF}}, "solver.sigma=inf: give one level > 0"),
        ({"solver": {**SOLVER, "sigma": [NAN, 0.05]}}, "solver.sigma=[nan, 0.05]: give one level > 0"),
        ({"solver": {**SOLVER, "tol": NAN}}, "solver.tol=nan: give the relative change > 0"),
        ({"solver": {**SOLVER, "step": None, "coupling": INF}}, "solver.coupling=inf: give a value > 0"),
        ({"problems": _problem(solver={"step": NAN})}, "problems[0].solver.step=nan: give a step > 0"),
        ({"solver": {**SOLVER, "step": 10**400}}, "solver.step=1000"),  # no float holds it
        ({"timeout_s": INF}, "timeout_s=inf: give the seconds a collective may wait"),
        ({"timeout_s": NAN}, "timeout_s=nan: give the seconds a collective may wait"),
        ({"timeout_s": 1e300}, "timeout_s=1e+300: give the seconds a collective may wait"),
        ({"seed": 2**64}, "seed=18446744073709551616: give a whole number"),
        ({"threads_per_rank": 2**40}, "threads_per_rank=1099511627776: give a whole number"),
        ({"problems": _params(TOMO, noise_sigma=NAN)}, "problems[0] (tomography_2d, size 32): noise_sigma=nan: give"),
        ({"problems": _params(TOMO, noise_sigma="1e-3")}, "noise_sigma='1e-3': give a number >= 0 (YAML reads"),
        ({"problems": _params(TOMO, num_angles=INF)}, "problems[0] (tomography_2d, size 32): num_angles=inf: give"),
        ({"problems": _params(TOMO, num_operators=1.5)}, "num_operators=1.5: give a whole number >= 1"),
        ({"problems": _params(TOMO, seed=2**63)}, "problems[0].params.seed=9223372036854775808: give a whole"),
        ({"problems": _params(TOMO, seed="x")}, "problems[0].params.seed='x': give a whole number (64 bits)"),
        ({"problems": _params(BLUR, sigma_major=INF)}, "problems[0] (highres_blur, size 64): sigma_major=inf: give"),
        ({"problems": _params(BLUR, noise_sigma=NAN)}, "problems[0] (highres_blur, size 64): noise_sigma=nan: give"),
        ({"problems": _params(RADIO, latitude_deg=100.0)}, "problems[0] (radio, size 32): latitude_deg=100.0: give"),
        ({"problems": _params(RADIO, declination_deg=NAN)}, "problems[0] (radio, size 32): declination_deg=nan"),
        ({"problems": _params(RADIO, noise_sigma=INF)}, "problems[0] (radio, size 32): noise_sigma=inf: give"),
        ({"problems": _params(RADIO, dynamic_range=NAN)}, "problems[0] (radio, size 32): dynamic_range=nan: give"),
        ({"problems": [{**_problem()[0], "sizes": [32.5]}]}, "problems[0] (tomography_2d, size 32.5): size=32.5"),
        ({"problems": [{**_params(BLUR)[0], "sizes": [[64, INF]]}]}, "(highres_blur, size [64, inf]): size=[64, inf]"),
    ],
)
def test_a_number_that_is_not_finite_or_out_of_range_is_a_config_error_naming_its_key(tmp_path, change, message):
    with pytest.raises(ConfigError) as error:
        validate(_config(tmp_path, **change))
    assert message in str(error.value)


def test_a_number_that_is_not_finite_says_so_in_its_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        validate(_config(tmp_path, timeout_s=INF, problems=_params(TOMO, noise_sigma=NAN)))
    assert str(error.value).count("not finite") == 2


@pytest.mark.parametrize(
    "change",
    [
        {"timeout_s": 86400, "seed": 2**63 - 1, "threads_per_rank": 1},
        {"seed": -1, "problems": _params(TOMO, seed=123, noise_sigma=0.0, num_angles=12)},
        {"problems": _params(RADIO, latitude_deg=-90.0, declination_deg=90, uv_extent=1)},
        {"problems": [{**_params(BLUR)[0], "sizes": [[64, 48]]}]},
        _training(lr=0.01, sigma=1, stepsize=None),
    ],
)
def test_finite_numbers_in_range_are_accepted(tmp_path, change):
    validate(_config(tmp_path, **change))


# ------------------------------------------------------------------------------------------ sharded layouts

TINY = {"model": "python:runner_models:tiny"}  # a DRUNet: windows and bands on multiples of 8 rows


def _sharded(tmp_path: Path, entry: dict, worlds: list[int], **changes) -> dict:
    problems = [{**entry, "denoiser": TINY}]
    return _config(tmp_path, engines=["distinv-sharded"], world_sizes=worlds, problems=problems, **changes)


def test_a_sharded_run_whose_bands_are_thinner_than_the_physics_halo_is_a_config_error(tmp_path):
    # 64 rows over 4 ranks: bands of 16 rows; the sigma 3 blurs' A^T A reads 22 rows beyond a band
    with pytest.raises(ConfigError) as error:
        validate(_sharded(tmp_path, BLUR, [1, 4]))
    message = str(error.value)
    assert "problems[0] (highres_blur, size 64), distinv-sharded at world size 4:" in message
    assert "bands of [16, 16, 16, 16] rows" in message and "halo of 22 rows" in message
    assert "use fewer ranks" in message and "larger size" in message
    assert "world size 1" not in message


def test_a_sharded_run_whose_bands_are_thinner_than_the_denoiser_halo_is_a_config_error(tmp_path):
    # 32 rows over 4 ranks: bands of 8 rows; windows read 16 rows (the overlap) beyond their band
    with pytest.raises(ConfigError) as error:
        validate(_sharded(tmp_path, TOMO, [2, 4], tiling={"overlap": 16}))
    message = str(error.value)
    assert "problems[0] (tomography_2d, size 32), distinv-sharded at world size 4:" in message
    assert "denoiser's windows" in message and "tiling.overlap" in message
    assert "world size 2" not in message


def test_a_sharded_run_with_more_ranks_than_rows_of_windows_is_a_config_error(tmp_path):
    # 32 rows at the network's size multiple 8: 4 rows of windows, fewer than 8 ranks
    with pytest.raises(ConfigError) as error:
        validate(_sharded(tmp_path, TOMO, [8]))
    message = str(error.value)
    assert "problems[0] (tomography_2d, size 32), distinv-sharded at world size 8:" in message
    assert "use fewer ranks" in message


def test_a_sharded_run_with_a_patch_too_tall_for_its_ranks_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        validate(_sharded(tmp_path, TOMO, [2], tiling={"patch_size": 4, "overlap": 0}))
    assert "problems[0] (tomography_2d, size 32), distinv-sharded at world size 2:" in str(error.value)
    assert "size multiple 8" in str(error.value)


def test_sharded_runs_whose_bands_supply_every_halo_are_accepted(tmp_path):
    validate(_sharded(tmp_path, {**BLUR, "sizes": [128]}, [1, 2]))
    validate(_sharded(tmp_path, TOMO, [1, 2, 4]))
    volume = {"name": "tomography_3d", "sizes": [32], "params": {"num_angles": 8, "num_operators": 2}}
    validate(_sharded(tmp_path, volume, [1, 2, 4]))


def test_a_sharded_run_reads_a_shipped_model_s_size_multiple_without_loading_its_weights(tmp_path, monkeypatch):
    import torch

    def no_loading(*args, **kwargs):
        raise AssertionError("validation loaded weights")

    monkeypatch.setattr(torch, "load", no_loading)
    problems = [{**BLUR, "denoiser": {"model": "auto"}}]
    with pytest.raises(ConfigError, match="at world size 4"):
        validate(_config(tmp_path, engines=["distinv-sharded"], world_sizes=[4], problems=problems))


def test_a_sharded_blur_whose_kernels_are_wider_than_the_image_is_a_config_error(tmp_path):
    wide = {**BLUR, "sizes": [[128, 32]], "params": {"num_operators": 2, "sigma_major": 5.0}}  # 35-pixel kernels
    with pytest.raises(ConfigError) as error:
        validate(_sharded(tmp_path, wide, [1]))
    assert "problems[0] (highres_blur, size [128, 32]), distinv-sharded: the sharded blur's kernels are 35" in str(
        error.value
    )
    validate(_config(tmp_path, problems=[{**wide, "denoiser": TINY}]))  # the replicated engines take them


def test_a_sharded_run_reads_a_named_architecture_s_size_multiple_without_building_its_weights(tmp_path):
    untrained = {**TOMO, "denoiser": {"model": "untrained:DRUNet"}}  # a DRUNet: multiples of 8
    raw = _config(tmp_path, engines=["distinv-sharded"], world_sizes=[2, 8], problems=[untrained])
    with pytest.raises(ConfigError, match="at world size 8: the denoiser's windows .at the network's size multiple 8"):
        validate(raw)
    validate({**raw, "world_sizes": [2, 4]})
