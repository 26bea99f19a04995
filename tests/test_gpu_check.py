"""The GPU check script runs every part at toy sizes on CPU (so that it cannot rot between GPU slots), writes its
JSON and markdown, records a failing part and a part out of time without stopping the others."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_every_part_runs_at_toy_sizes_on_cpu_under_torchrun_and_writes_json_and_markdown(tmp_path):
    # under torchrun with one process, as make gpu-check runs it: every collective goes through the group (gloo here)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    done = subprocess.run(
        [*launcher, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = results["parts"]
    assert list(parts) == [
        "environment", "correctness", "tiling", "tf32", "insights", "pnp", "radio", "training", "parallel_beam",
        "knobs",
    ]  # fmt: skip
    (environment,) = parts["environment"]["rows"]
    assert environment["process_group"] and environment["backend"] == "gloo" and environment["world_size"] == 1
    assert all(part["error"] is None and part["rows"] for part in parts.values()), {
        name: part["error"] for name, part in parts.items()
    }
    checks = {row["check"]: row for row in parts["correctness"]["rows"]}
    stacked = checks["distributed stacked physics = deepinv's stack (3 blurs)"]
    assert max(stacked["A"], stacked["A_adjoint"], stacked["A_adjoint_A"]) < 1e-5
    assert checks["tiled DnCNN = untiled (reach 20 < halo 32)"]["error"] < 1e-5
    settings = {(r["model"], r["size"], r["setting"]) for r in parts["tiling"]["rows"] if r["status"] == "ok"}
    assert len(settings) == 2 * 2 * 4 and all(r["seconds"] > 0 for r in parts["tiling"]["rows"])
    assert {(r["problem"], r["engine"]) for r in parts["pnp"]["rows"]} == {
        ("highres_blur", "none"), ("highres_blur", "distinv"), ("highres_blur", "distinv-sharded"),
        ("tomography_3d", "distinv-sharded"),
    }  # fmt: skip
    assert all(r["psnr"] > 10 for r in parts["pnp"]["rows"] + parts["radio"]["rows"])
    assert [r["tf32"] for r in parts["tf32"]["rows"]] == [False, True]
    assert parts["training"]["rows"][0]["steps"] == 2 and parts["training"]["rows"][0]["backward_s"] > 0
    assert all(r["dot_test"] < 1e-5 for r in parts["parallel_beam"]["rows"])
    assert {r["study"] for r in parts["insights"]["rows"]} == {"shape-memory", "batch-throughput"}
    assert any("torch.compile" in s for s in parts["knobs"]["skipped"])  # said, not silently left out
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"## {name}" in table for name in parts) and table in done.stdout


def test_a_failing_part_and_a_part_out_of_time_are_recorded():
    from distinv import DistributedContext

    gpu_check = load_script()
    broken = dataclasses.replace(gpu_check.TINY, pnp_size=4)  # highres_blur refuses 4 pixels
    out_of_time = dataclasses.replace(gpu_check.TINY, budgets_s={**gpu_check.TINY.budgets_s, "tiling": 0})
    with DistributedContext(env={}, device_mode="cpu", num_threads=1) as ctx:
        failed = gpu_check.run_part("pnp", ctx, broken)
        late = gpu_check.run_part("tiling", ctx, out_of_time)
    assert failed["rows"] == [] and "size=4" in failed["error"]
    assert late["rows"] == [] and len(late["skipped"]) == 2 * 2 * 4
    table = gpu_check.markdown({"mode": "cpu tiny", "date": "now", "parts": {"pnp": failed, "tiling": late}})
    assert "FAILED" in table and "skipped (out of time or not run)" in table


def test_asking_for_a_gpu_where_there_is_none_is_a_clear_error():
    gpu_check = load_script()
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cuda"])
