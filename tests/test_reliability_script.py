"""benchmarks/reliability.py in its quickest mode: it runs, and its JSON has each requested figure with what it
measured (whether the figures pass is the engine's business, not this test's).

All five figures in tiny mode take about 2.5 minutes on 2 cores (each needs fresh processes importing torch and
deepinv); this test runs the two cheapest, R1 (a rank raising under ``distinv run``) and R3 (bad inputs on 2
live gloo ranks, configs, the command line), in about 35 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reliability.py"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("reliability") / "reliability.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--only", "R1,R3", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=SCRIPT.parent.parent,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(out.read_text()), done.stdout


def test_the_json_has_each_requested_figure_with_a_verdict(tiny_run):
    result, _ = tiny_run
    assert result["tiny"] is True
    assert set(result["figures"]) == {"R1", "R3"}
    assert set(result["passed"]) | set(result["missed"]) == {"R1", "R3"} and not result["pending"]
    for figure in result["figures"].values():
        assert isinstance(figure["ok"], bool) and isinstance(figure["misses"], list)
        assert figure["ok"] == (not figure["misses"])


def test_r1_measures_the_delay_the_failure_row_and_the_next_run(tiny_run):
    r1 = tiny_run[0]["figures"]["R1"]
    assert r1["raised"], "the injected failure never ran"
    assert isinstance(r1["seconds_raise_to_record"], float) and r1["seconds_raise_to_record"] >= 0
    row = r1["failure_row"]
    assert isinstance(row["failed_rank"], int) and isinstance(row["error_last_line"], str)
    assert isinstance(row["names_cause"], bool) and isinstance(row["log_dir_exists"], bool)
    assert isinstance(r1["next_run_finished"], bool)


def test_r3_counts_at_least_25_bad_inputs_and_names_each_one_that_fails(tiny_run):
    r3 = tiny_run[0]["figures"]["R3"]
    assert r3["total"] >= 25 and r3["api_cases"] >= 25 and r3["config_cases"] >= 10
    assert r3["passed"] == sum(case["passed"] for case in r3["cases"].values())
    assert set(r3["failing"]) == {name for name, case in r3["cases"].items() if not case["passed"]}
    api = [case for name, case in r3["cases"].items() if name.startswith("api:")]
    assert all(len(case["collectives_before_error"]) == 2 for case in api)  # both ranks answered every case


def test_the_table_has_a_line_per_figure(tiny_run):
    _, stdout = tiny_run
    table = stdout[stdout.index("figure") :]
    assert any(line.startswith("R1 ") for line in table.splitlines())
    assert any(line.startswith("R3 ") for line in table.splitlines())
