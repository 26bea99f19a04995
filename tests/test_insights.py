"""The insight studies run from their configs, land in the insights table and appear in the report."""

from __future__ import annotations

import html

import pytest
import yaml

from distinv.bench.config import ConfigError
from distinv.bench.insights import TABLE, load_insight_config, run_study
from distinv.bench.insights_report import batch_throughput_observations, shape_memory_observations
from distinv.bench.report import write_report
from distinv.bench.results import read_rows
from distinv.cli import main

TINY_DENOISERS = [
    {"name": "DRUNet", "model": "untrained:DRUNet", "arch_kwargs": {"nc": [8, 16, 16, 16]}},
    {"name": "DnCNN", "model": "untrained:DnCNN", "arch_kwargs": {"depth": 3, "nf": 8}},
]


def write_config(path, **values):
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Both studies, tiny, run through the CLI into one folder."""
    folder = tmp_path_factory.mktemp("insights")
    shape = write_config(
        folder / "shape.yml",
        study="shape-memory",
        output=str(folder),
        height=16,
        widths={"start": 64, "stop": 200, "steps": [64, 68]},
        denoisers=TINY_DENOISERS,
    )
    batch = write_config(
        folder / "batch.yml",
        study="batch-throughput",
        output=str(folder),
        image_size=64,
        patches=[16, 32],
        batches=[1, 2, 4],
        denoisers=TINY_DENOISERS,
    )
    assert main(["insights", "shape-memory", "--config", str(shape)]) == 0
    assert main(["insights", "batch-throughput", "--config", str(batch)]) == 0
    return folder, shape


def test_shape_study_measures_both_width_series_for_every_denoiser(studies):
    folder, _ = studies
    rows = [r for r in read_rows(folder, TABLE) if r["study"] == "shape-memory"]
    for name in ("DRUNet", "DnCNN"):
        mine = {r["width"]: r for r in rows if r["denoiser"] == name}
        assert sorted(mine) == [64, 128, 132, 192, 200]  # 64, 128, 192 and 64, 132, 200
        assert mine[64]["series"] == "64-step,68-step" and mine[132]["series"] == "68-step"
        assert not mine[132]["multiple_of_8"] and mine[128]["multiple_of_8"]
        assert all(r["status"] == "ok" and r["peak_bytes"] >= 0 and r["seconds"] > 0 for r in mine.values())


def test_batch_study_reports_patches_and_images_per_second(studies):
    folder, _ = studies
    rows = [r for r in read_rows(folder, TABLE) if r["study"] == "batch-throughput"]
    assert len(rows) == 2 * 2 * 3
    for r in rows:
        assert r["patches_per_s"] == pytest.approx(r["batch"] / r["seconds"])
        assert r["images_per_s"] == pytest.approx(r["patches_per_s"] / (64 // r["patch"]) ** 2)


def test_a_second_run_resumes_and_measures_nothing_again(studies):
    folder, shape = studies
    before = len(read_rows(folder, TABLE))
    run_study(load_insight_config(shape, "shape-memory"), progress=lambda line: pytest.fail(f"measured {line}"))
    assert len(read_rows(folder, TABLE)) == before


def test_report_has_a_section_per_study_with_observations_from_the_data(studies):
    folder, _ = studies
    page = write_report(folder).read_text()
    assert 'id="shape-memory"' in page and 'id="batch-throughput"' in page
    assert 'data-figure="insight-shape-memory"' in page and 'data-figure="insight-batch-throughput"' in page
    rows = read_rows(folder, TABLE)
    for note in shape_memory_observations(rows) + batch_throughput_observations(rows):
        assert html.escape(note) in page
    saturation = [n for n in batch_throughput_observations(rows) if "saturates at batch" in n]
    assert len(saturation) == 4  # each denoiser and patch
    series = [n for n in shape_memory_observations(rows) if "-step widths" in n]
    assert len(series) == 4  # each denoiser and series


def test_saturation_is_the_smallest_batch_within_90_percent_of_the_best():
    rows = [
        {
            "study": "batch-throughput",
            "status": "ok",
            "denoiser": "N",
            "patch": 128,
            "batch": b,
            "image_size": 2048,
            "patches_per_s": p,
            "images_per_s": p / 256,
            "peak_bytes": b * 2**20,
            "device": "cuda",
            "device_name": "GPU",
            "threads": 1,
        }
        for b, p in [(1, 10.0), (2, 18.0), (4, 37.0), (8, 40.0), (16, 41.0)]
    ]
    (note, *_) = batch_throughput_observations(rows)
    assert "saturates at batch 4" in note and "41.0 patches/s at batch 16" in note


def test_config_errors_name_the_key(tmp_path):
    bad = write_config(tmp_path / "bad.yml", study="shape-memory", hieght=16, patches=[0], denoisers=[{"name": "x"}])
    with pytest.raises(ConfigError) as error:
        load_insight_config(bad, "shape-memory")
    text = str(error.value)
    assert "hieght is not a config key: did you mean height?" in text
    assert "patches=[0]" in text and "denoisers[0]" in text
    with pytest.raises(ConfigError, match="for 'shape-memory', not 'batch-throughput'"):
        load_insight_config(bad, "batch-throughput")
