"""R3: bad inputs (API on 2 real gloo ranks, configs, the command line): each must raise on every rank, name the
argument and not end in a frame inside torch; none may hang (per-case timeout). Counted apart: cases that raise
only after a collective other than the agreement (``ctx.agree``'s all-gathers) that makes an error on one rank an
error on every rank.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    BENCH,
    TESTS,
    TOMO,
    child_env,
    distinv_run,
    run_command,
    runner_config,
    tiny_network,
    tomography,
    verdict,
    write_config,
)

WHAT = "bad inputs (API on 2 gloo ranks, configs, command line)"


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


def _state_sharded(ctx) -> dict:
    """A sharded blur of two kernels on a 32x16 image cut in balanced row bands, and its measurements."""
    import torch
    from deepinv.physics.functional.blur import gaussian_blur

    from distinv.placements.row_bands import shard_rows
    from distinv.sharded.blur import ShardedBlur

    x = torch.rand(1, 1, 32, 16, generator=torch.Generator().manual_seed(0))
    blur = ShardedBlur(ctx, [gaussian_blur(sigma=(1.0, 0.5), angle=45.0 * i) for i in range(2)])
    bands = shard_rows(ctx, x)
    return {"x": x, "physics": blur, "bands": bands, "y": blur.A(bands)}


def _sharded_pnp_from_replicated(ctx, s):
    from distinv.pnp import pnp

    return pnp("pgd", s["physics"], lambda z, sigma: z, s["y"], s["x"], 0.05, iterations=1, step=1.0)


def _two_partitions(ctx, s):
    from distinv.placements.row_bands import shard_rows

    other = shard_rows(ctx, s["x"], [0, 8, 32])  # R3 runs on 2 ranks: bands of 8 and 24 rows, not 16 and 16
    return s["physics"].A_adjoint([s["y"][0], other])


def _shard_rows():
    from distinv.placements.row_bands import shard_rows

    return shard_rows


def _parallel_beam(**bad):
    def call(ctx, s):
        from distinv.operators.parallel_beam import ParallelBeam

        return ParallelBeam([0.0, 45.0], **({"img_width": 8} | bad))

    return call


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

    phys, den, pn, sh = _state_physics, _state_denoiser, _state_pnp, _state_sharded
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
        Case("pnp step NaN", ("step",), _pnp_call(step=float("nan")), pn),
        Case("pnp cg_iterations 0", ("cg_iterations",), _pnp_call(cg_iterations=0), pn),
        Case("pnp tol -1", ("tol",), _pnp_call(tol=-1.0), pn),
        Case("sharded bands of zero rows", ("rows",),
             lambda ctx, s: _shard_rows()(ctx, torch.rand(1, 1, ctx.world_size - 1, 4))),
        Case("sharded blur on a replicated tensor", ("x", "shard"), lambda ctx, s: s["physics"].A(s["x"]), sh),
        Case("sharded measurements of two partitions", ("partition",), _two_partitions, sh),
        Case("pnp x0 replicated with sharded physics", ("x0", "shard"), _sharded_pnp_from_replicated, sh),
        Case("RowBands.gather step 0", ("step",), lambda ctx, s: s["bands"].gather(step=0), sh),
        Case("ParallelBeam img_width 8.7", ("img_width",), _parallel_beam(img_width=8.7)),
        Case("ParallelBeam scale 0", ("scale",), _parallel_beam(scale=0.0)),
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
    sys.path.insert(0, str(BENCH))  # the spawned ranks get this path: they import run_api_case from this module
    from harness import RankFailure, RankPool

    torch_dir = str(Path(torch.__file__).parent)
    results: dict[str, dict] = {}
    pool = RankPool(2)
    try:
        for case in api_cases():
            try:
                per_rank = pool.run(run_api_case, case.name, timeout=30)
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
    return verdict(summary, misses)


def key_raw(work: Path, change: dict) -> dict:
    """A valid small config with ``change`` applied."""
    return runner_config(work / "unused", [tomography(32, "tiny_network")], ["none"], [1], 2) | change


def headline(r: dict) -> str:
    """One line of what R3 measured."""
    return (
        f"{r['passed']}/{r['total']} clear ({r['api_cases']} API on 2 ranks, {r['config_cases']} config/CLI); "
        f"{r['before_any_collective']}/{r['total']} before any collective but the agreement"
    )
