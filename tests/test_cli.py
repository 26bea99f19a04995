"""`distinv plan` prints the tile plan: windows per rank, pixels processed vs owned, imbalance, bytes."""

from __future__ import annotations

import json

import pytest

from distinv.cli import main


def test_plan_prints_windows_pixels_imbalance_and_bytes(capsys):
    assert main(["plan", "--shape", "3", "4096", "4096", "--world", "16", "--patch", "512", "--overlap", "32"]) == 0
    out = capsys.readouterr().out
    assert "64 windows (grid 8x8) over 16 ranks" in out
    assert "predicted load imbalance" in out and "bytes each rank receives" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("0 ", "15 "))]) == 2


def test_plan_json_summary():
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(["plan", "--shape", "3", "1024", "1024", "--world", "2", "--json"])
    summary = json.loads(buffer.getvalue())
    assert summary["windows_per_rank"] == [1, 1]
    assert summary["overhead"] == pytest.approx(1.0625)
    assert summary["bytes_received_per_rank"] == 3 * 512 * 1024 * 4


def test_plan_with_impossible_settings_says_which_argument():
    with pytest.raises(SystemExit, match="patch_size=4 is smaller than the network's size multiple 8"):
        main(["plan", "--shape", "3", "64", "64", "--world", "2", "--patch", "4"])


@pytest.mark.parametrize(
    "problem,args",
    [
        ("highres_blur", ["--size", "48", "40"]),
        ("tomography_2d", ["--size", "32"]),
        ("tomography_3d", ["--size", "16", "--param", "num_angles=64"]),
        ("radio", ["--size", "32", "--param", "num_antennas=8", "--param", "weighting='uniform'"]),
    ],
)
def test_preview_writes_ground_truth_measurement_and_initial_pngs(tmp_path, capsys, problem, args):
    from PIL import Image

    assert main(["preview", problem, "-o", str(tmp_path), *args]) == 0
    assert "PSNR" in capsys.readouterr().out
    for name in ("ground_truth", "measurement", "initial"):
        with Image.open(tmp_path / f"{name}.png") as image:
            assert min(image.size) >= 16
            assert image.getextrema() != ((0, 0),) * len(image.getbands())  # not blank


def test_preview_with_a_bad_parameter_names_it(tmp_path, capsys):
    with pytest.raises(SystemExit, match="num_operators=0"):
        main(["preview", "radio", "-o", str(tmp_path), "--param", "num_operators=0"])
    with pytest.raises(SystemExit):
        main(["preview", "radio", "-o", str(tmp_path), "--param", "num_operators"])
    assert "write parameters as key=value" in capsys.readouterr().err


def test_python_dash_m_distinv_runs_the_command_line():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "distinv", "plan", "--shape", "3", "256", "256", "--world", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["windows_per_rank"] == [1, 1]
