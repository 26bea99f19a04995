"""The HTML report: built from a real (tiny) results table with a failed run and a world size without a
baseline; self-contained; observations computed from the data; rendered in headless Chromium offline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from distinv.bench.config import validate
from distinv.bench.report import build_figures, export_static, observations, write_report
from distinv.bench.results import read_rows, summarise
from distinv.bench.runner import run_config

TESTS = Path(__file__).parent
SOLVER = {"algorithm": "hqs", "iterations": 3, "step": 5.0, "sigma": [0.1, 0.05], "cg_iterations": 2}
TOMO = {"name": "tomography_2d", "sizes": [32], "params": {"num_angles": 12, "num_operators": 2}}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Tomography 32: untiled, distinv and deepinv at 1 and 2 ranks; size 40 fails on rank 1; radio 32 run by
    deepinv's module alone at 2 ranks (no baseline)."""
    folder = tmp_path_factory.mktemp("report")
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), old])
    try:
        common = {"output": str(folder / "results"), "timeout_s": 60, "oversubscribe": True, "solver": SOLVER}
        tiny = {"model": "python:runner_models:tiny"}
        main = {
            "name": "report-main",
            "world_sizes": [1, 2],
            "engines": ["none", "distinv", "deepinv"],
            "problems": [
                {**TOMO, "denoiser": tiny},
                {**TOMO, "sizes": [40], "denoiser": {"model": "python:runner_models:fails_on_rank_1"}},
            ],
            "tiling": {"overlap": 8},
            **common,
        }
        run_config(validate(main), out=lambda _: None, live=False)
        alone = {
            "name": "report-alone",
            "world_sizes": [2],
            "engines": ["deepinv"],
            "problems": [{"name": "radio", "sizes": [32], "denoiser": tiny}],
            "tiling": {"overlap": 8},
            **common,
        }
        run_config(validate(alone), out=lambda _: None, live=False)
    finally:
        os.environ["PYTHONPATH"] = old
    return folder / "results"


def test_the_report_is_one_self_contained_file_with_every_figure(results):
    path = write_report(results, results / "out" / "report.html")
    page = path.read_text()
    assert path.stat().st_size > 3_000_000  # plotly's JavaScript is inside
    assert _external_resources(page) == []
    for kind in ("scaling", "breakdown", "quality", "memory", "bytes"):
        for problem in ("tomography_2d", "radio"):
            assert f'data-figure="{kind}-{problem}"' in page
    assert page.count("data:image/png;base64,") >= 4  # truth, measurement, start, reconstructions
    assert "untiled single device" in page  # the baseline is stated


def _external_resources(page: str) -> list[str]:
    """``src``/``href`` attributes of the page's tags that point outside it (data: URIs and anchors are inside)."""
    from html.parser import HTMLParser

    found = []

    class Links(HTMLParser):
        def handle_starttag(self, tag, attrs):
            for name, value in attrs:
                if name in ("src", "href") and value and not value.startswith(("data:", "#")):
                    found.append(f"<{tag} {name}={value}>")

    Links().feed(page)
    return found


def test_a_failed_run_and_a_world_size_without_baseline_are_shown_not_dropped(results):
    summary = summarise(results)
    failed = [e for e in summary if e["status"] != "ok"]
    assert failed and all(e["world_size"] == 2 for e in failed)
    notes = observations("tomography_2d", summary)
    assert any(n.startswith("FAILED") and "rank 1 broke on purpose" in n for n in notes)
    assert any("no baseline" in n for n in observations("radio", summary))
    page = write_report(results).read_text()
    assert "rank 1 broke on purpose" in page and "no baseline" in page


def test_observations_quote_the_measured_speedups(results):
    summary = summarise(results)
    ours = next(e for e in summary if e["engine"] == "distinv" and e["world_size"] == 2 and e["status"] == "ok")
    theirs = next(
        e for e in summary if e["engine"] == "deepinv" and e["world_size"] == 2 and e["problem"] == ours["problem"]
    )
    sentence = next(n for n in observations("tomography_2d", summary) if n.startswith("32, 2 devices"))
    assert f"denoiser {ours['speedup_denoiser']:.2f}x speedup" in sentence
    assert f"{ours['efficiency_denoiser']:.0%} efficiency" in sentence
    assert f"deepinv's module: denoiser {theirs['speedup_denoiser']:.2f}x" in sentence


def test_figures_carry_data_and_labelled_axes(results):
    figures = build_figures(read_rows(results), summarise(results))
    scaling = figures["scaling-tomography_2d"]
    assert any(t.name.startswith("distinv") for t in scaling.data) and any(t.name == "ideal" for t in scaling.data)
    assert scaling.layout.yaxis.title.text == "speedup (x)" and "devices" in scaling.layout.xaxis4.title.text
    memory = figures["memory-tomography_2d"]
    assert memory.layout.yaxis.title.text == "peak memory (MiB)"
    assert "above the process's level before the run built anything" in memory.layout.title.text
    moved = figures["bytes-tomography_2d"]
    assert moved.layout.yaxis.title.text == "MiB per iteration"
    distributed = [t for t in moved.data if t.name == "distinv"]
    assert distributed and max(distributed[0].y) > 0  # two ranks move bytes
    assert figures["quality-radio"].layout.yaxis.title.text == "PSNR (dB)"
    assert figures["breakdown-tomography_2d"].layout.yaxis.title.text == "seconds per iteration"


def test_a_folder_without_a_table_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="has no results table: run `distinv run CONFIG`"):
        write_report(tmp_path)


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_the_report_renders_in_headless_chromium_offline_with_every_figure_and_no_javascript_error(results):
    found = _chromium()
    if found is None:
        if os.environ.get("DISTINV_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are missing: `make test` installs them (Debian: apt-get install "
                        "chromium chromium-driver).")  # fmt: skip
        pytest.skip("no chromium/chromedriver here (make test installs them on Debian)")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    path = write_report(results)
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
        )
        record_errors = "window.__errors = []; addEventListener('error', e => window.__errors.push(String(e.message)));"
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": record_errors})
        driver.get(path.resolve().as_uri())
        rendered = driver.execute_script(
            """return Array.from(document.querySelectorAll('div.figure')).map(box => {
                 const plot = box.querySelector('.js-plotly-plot');
                 return [box.dataset.figure, plot ? plot.data.length : 0,
                         box.querySelectorAll('.main-svg .trace').length,
                         box.querySelectorAll('text[class$="title"]:not(.gtitle)').length];
               });"""
        )
        errors = driver.execute_script("return window.__errors")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(height, 16000))
        shot = results / "report-screenshot.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    expected = {
        f"{kind}-{p}"
        for kind in ("scaling", "breakdown", "quality", "memory", "bytes")
        for p in ("tomography_2d", "radio")
    }
    assert {name for name, *_ in rendered} == expected
    for name, traces, drawn, titles in rendered:
        assert traces > 0 and drawn > 0, f"{name} has no data drawn"
        assert titles >= 2, f"{name} lacks axis titles"
    assert errors == [] and severe == []
    assert shot.stat().st_size > 50_000
    keep = os.environ.get("DISTINV_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_every_figure_exports_as_an_image_for_papers(results, tmp_path):
    if _chromium() is None:  # kaleido draws with a local Chrome/Chromium
        pytest.skip("no chromium here (make test installs it on Debian)")
    paths = export_static(results, tmp_path / "figures", "svg")
    assert len(paths) == 10 and all(p.read_text().lstrip().startswith("<svg") for p in paths)  # 5 panels x 2
