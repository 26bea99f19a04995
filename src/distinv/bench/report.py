"""``distinv report``: a results table as one self-contained HTML dashboard (plotly's JavaScript embedded, so
it opens anywhere, offline).

Per problem, in this order: observations computed from the data (in words), strong scaling (speedup and
parallel efficiency against the number of devices, for the whole iteration, the data-fidelity gradient and the
denoiser, one curve per image size and engine, with the ideal line), the time breakdown of an iteration per
world size (gradient and denoiser compute, their communication, the rest), PSNR against iteration and against
time, peak memory per rank (above the process's level before the run built anything, where the table records
it), bytes sent and received per iteration, and the preview images. Failed runs and world sizes without a baseline
are shown as such: listed in the runs table and the observations, never dropped silently.

Speedups are those of :func:`~distinv.bench.results.summarise`: against the untiled single-device run of the
same problem and size (engine ``none``), else distinv at its smallest world size; each plot says which.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
from collections import defaultdict
from pathlib import Path

from distinv.bench.palette import colour
from distinv.bench.results import last_line, quality_text, read_rows, run_memory, series_of, summarise
from distinv.bench.training_report import summarise_training, training_figures, training_section

ENGINE_NAMES = {  # by the summary's engine names (distinv.bench.results.series_of)
    "distinv": "distinv",
    "distinv/domain": "distinv, domain-parallel denoiser",
    "distinv-sharded": "distinv, sharded iterates",
    "distinv-sharded/domain": "distinv, sharded iterates, domain-parallel denoiser",
    "deepinv": "deepinv's module",
    "none": "untiled, 1 device",
}
ENGINE_ORDER = {
    "none": 0, "distinv": 1, "distinv/domain": 2, "distinv-sharded": 3, "distinv-sharded/domain": 4, "deepinv": 5,
}  # fmt: skip
LINE_DASH = {"distinv": "solid", "distinv/domain": "solid", "distinv-sharded": "dot", "distinv-sharded/domain": "dot"}
# others (deepinv's module, untiled): dashed
COMPONENTS = {"total": "whole iteration", "data": "data-fidelity gradient", "denoiser": "denoiser"}
MIB = 2**20


def size_label(size) -> str:
    """``256``, ``[64, 64, 64]`` or its JSON string as ``256`` / ``64x64x64``."""
    if isinstance(size, str) and size.startswith("["):
        size = json.loads(size)
    return "x".join(map(str, size)) if isinstance(size, list | tuple) else str(size)


def _median_by(entries: list[dict], key) -> dict:
    """Entries grouped by ``key(entry)``; the repetitions of a run are merged by their median."""
    groups: dict = defaultdict(list)
    for e in entries:
        groups[key(e)].append(e)
    merged = {}
    for k, group in groups.items():
        first = dict(group[0])
        for name, value in first.items():
            if isinstance(value, float):
                values = [g[name] for g in group if isinstance(g.get(name), float)]
                first[name] = statistics.median(values) if values else value
        merged[k] = first
    return merged


# ---------------------------------------------------------------------------------------------- observations


def observations(problem: str, summary: list[dict]) -> list[str]:
    """Sentences about one problem's runs, every figure in them computed from ``summary``."""
    ok = [e for e in summary if e["problem"] == problem and e["status"] == "ok"]
    failed = [e for e in summary if e["problem"] == problem and e["status"] != "ok"]
    runs = _median_by(ok, lambda e: (size_label(e["size"]), e["engine"], e["world_size"]))
    lines = []
    for size in sorted({k[0] for k in runs}, key=_size_order):
        at_size = {k[1:]: e for k, e in runs.items() if k[0] == size}
        scaled = sorted({n for (engine, n) in at_size if engine != "none"})
        if not any(e.get("baseline") for e in at_size.values()):
            lines.append(f"{size}: no baseline in the table (no untiled run, no distinv run): no speedups.")
        for n in scaled:
            ours, theirs = at_size.get(("distinv", n)), at_size.get(("deepinv", n))
            if ours is None or not ours.get("speedup_denoiser"):
                continue
            if ours.get("baseline", "").startswith("distinv") and n == min(k[1] for k in at_size if k[0] == "distinv"):
                continue  # the baseline itself
            text = (
                f"{size}, {n} device{'s' * (n > 1)}: denoiser {ours['speedup_denoiser']:.2f}x speedup, "
                f"{ours['efficiency_denoiser']:.0%} efficiency; whole iteration {ours['speedup_total']:.2f}x "
                f"({ours['efficiency_total']:.0%}); gradient {ours['speedup_data']:.2f}x"
            )
            if theirs is not None and theirs.get("speedup_denoiser"):
                text += (
                    f"; deepinv's module: denoiser {theirs['speedup_denoiser']:.2f}x, whole iteration "
                    f"{theirs['speedup_total']:.2f}x ({_faster(theirs['total_s'] / ours['total_s'])})"
                )
            lines.append(text + f" [against {ours['baseline']}].")
        untiled = at_size.get(("none", 1))
        for (engine, n), e in sorted(at_size.items(), key=lambda kv: (ENGINE_ORDER.get(kv[0][0], 9), kv[0][1])):
            if engine == "none" or not (untiled and untiled.get("peak_bytes") and e.get("peak_bytes")):
                continue
            lines.append(
                f"{size}, {ENGINE_NAMES.get(engine, engine)} at {n} device{'s' * (n > 1)}: peak memory a rank adds "
                f"{e['peak_bytes'] / MIB:.0f} MiB, {e['peak_bytes'] / untiled['peak_bytes']:.2f}x the untiled run's "
                f"{untiled['peak_bytes'] / MIB:.0f} MiB."
            )
        residuals = [e["residual"] for e in at_size.values() if e.get("psnr") is None and e.get("residual") is not None]
        if residuals:  # runs without a ground truth (a measured scan without a reference)
            lines.append(
                f"{size}: no ground truth; data residual ||Ax - y|| / ||y|| {min(residuals):.2e} to "
                f"{max(residuals):.2e} after {next(iter(at_size.values()))['iterations']} iterations."
            )
        finals = [e["psnr"] for e in at_size.values() if e.get("psnr") is not None]
        if finals:
            first = next(iter(at_size.values()))
            spread = max(finals) - min(finals)
            lines.append(
                f"{size}: PSNR {first.get('init_psnr') or float('nan'):.2f} dB at the start, {max(finals):.2f} dB "
                f"after {first['iterations']} iterations"
                + (f" (all {len(finals)} runs within {spread:.3f} dB)." if len(finals) > 1 else ".")
            )
    for e in failed:
        lines.append(
            f"FAILED: {size_label(e['size'])}, {ENGINE_NAMES.get(e['engine'], e['engine'])} at {e['world_size']} "
            f"devices ({e['run_key']}): {last_line(e.get('error'), 'no message')}"
        )
    return lines


def _faster(ratio: float) -> str:
    return f"distinv {ratio:.2f}x faster" if ratio >= 1 else f"distinv {1 / ratio:.2f}x slower"


def _size_order(label: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in label.split("x"))


# --------------------------------------------------------------------------------------------------- figures


def _legend_below(fig, height: int, gap: float = 0.16) -> None:
    """Legend in rows under the plot, ``gap`` (fraction of the plot's height) below its x axis title."""
    fig.update_layout(
        height=height,
        margin={"l": 70, "r": 20, "t": 70, "b": 40},
        legend={"orientation": "h", "yanchor": "top", "y": -gap, "xanchor": "left", "x": 0},
        template="plotly_white",
        font={"size": 13},
    )


def _baselines(entries: list[dict]) -> str:
    labels = sorted({e["baseline"] for e in entries if e.get("baseline")})
    return " / ".join(labels) if labels else "none in the table"


def scaling_figure(problem: str, summary: list[dict]):
    """Speedup (top row) and parallel efficiency (bottom row) against devices, per component."""
    from plotly.subplots import make_subplots

    entries = [e for e in summary if e["problem"] == problem and e["status"] == "ok" and e.get("baseline")]
    runs = _median_by(entries, lambda e: (size_label(e["size"]), e["engine"], e["world_size"]))
    fig = make_subplots(
        rows=2,
        cols=3,
        shared_xaxes=True,
        vertical_spacing=0.12,
        horizontal_spacing=0.07,
        subplot_titles=[f"speedup: {c}" for c in COMPONENTS.values()]
        + [f"efficiency: {c}" for c in COMPONENTS.values()],
    )
    devices = sorted({k[2] for k in runs}) or [1, 2]
    series = sorted({k[:2] for k in runs}, key=lambda k: (_size_order(k[0]), ENGINE_ORDER.get(k[1], 9)))
    for col, component in enumerate(COMPONENTS, 1):
        fig.add_scatter(
            x=devices, y=devices, mode="lines", line={"dash": "dot", "color": "grey"}, name="ideal",
            legendgroup="ideal", showlegend=col == 1, row=1, col=col,
        )  # fmt: skip
        fig.add_scatter(
            x=devices, y=[100.0] * len(devices), mode="lines", line={"dash": "dot", "color": "grey"}, name="ideal",
            legendgroup="ideal", showlegend=False, row=2, col=col,
        )  # fmt: skip
        for index, (size, engine) in enumerate(series):
            points = sorted((k[2], e) for k, e in runs.items() if k[:2] == (size, engine))
            name = f"{ENGINE_NAMES.get(engine, engine)}, {size}"
            style = {"color": colour(index), "dash": LINE_DASH.get(engine, "dash")}
            for row, metric, scale in ((1, "speedup", 1.0), (2, "efficiency", 100.0)):
                values = [(n, e.get(f"{metric}_{component}")) for n, e in points]
                values = [(n, v * scale) for n, v in values if v is not None]
                if not values:
                    continue
                fig.add_scatter(
                    x=[n for n, _ in values], y=[v for _, v in values], mode="lines+markers", name=name,
                    line=style, legendgroup=name, showlegend=row == 1 and col == 1, row=row, col=col,
                    hovertemplate=f"{name}<br>%{{x}} devices: %{{y:.2f}}{'x' if row == 1 else '%'}<extra></extra>",
                )  # fmt: skip
    if not runs:
        fig.add_annotation(
            text="no baseline in the table for these runs (no untiled run, no distinv run): no speedups",
            xref="paper", yref="paper", x=0.5, y=0.8, showarrow=False, font={"size": 15, "color": "#b00020"},
        )  # fmt: skip
    fig.update_xaxes(title_text="devices (ranks)", tickvals=devices, row=2)
    fig.update_yaxes(title_text="speedup (x)", row=1, col=1)
    fig.update_yaxes(title_text="parallel efficiency (%)", row=2, col=1)
    fig.update_layout(title=f"{problem}: strong scaling (baseline: {_baselines(entries)})")
    _legend_below(fig, 640)
    return fig


def breakdown_figure(problem: str, summary: list[dict]):
    """Seconds per iteration (median, slowest rank) stacked by component, per size, engine and world size."""
    import plotly.graph_objects as go

    entries = [e for e in summary if e["problem"] == problem and e["status"] == "ok"]
    runs = _median_by(entries, lambda e: (size_label(e["size"]), e["engine"], e["world_size"]))
    keys = sorted(runs, key=lambda k: (_size_order(k[0]), ENGINE_ORDER.get(k[1], 9), k[2]))
    x = [[f"size {k[0]}" for k in keys], [f"{ENGINE_NAMES.get(k[1], k[1])} ×{k[2]}" for k in keys]]
    parts = {
        "gradient compute": lambda e: e["data_s"] - (e.get("data_comm_s") or 0.0),
        "gradient communication": lambda e: e.get("data_comm_s") or 0.0,
        "denoiser compute": lambda e: e["denoiser_s"] - (e.get("denoiser_comm_s") or 0.0),
        "denoiser communication": lambda e: e.get("denoiser_comm_s") or 0.0,
        "other (metrics, bookkeeping)": lambda e: max(0.0, e["total_s"] - e["data_s"] - e["denoiser_s"]),
    }
    colours = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#c7c7c7"]
    fig = go.Figure()
    for (name, part), shade in zip(parts.items(), colours, strict=True):
        fig.add_bar(
            x=x, y=[max(0.0, part(runs[k])) for k in keys], name=name, marker_color=shade,
            hovertemplate=f"{name}: %{{y:.3f}} s<extra></extra>",
        )  # fmt: skip
    fig.update_layout(barmode="stack", title=f"{problem}: time per iteration by component (median, slowest rank)")
    fig.update_xaxes(title_text="image size, engine × devices")
    fig.update_yaxes(title_text="seconds per iteration")
    _legend_below(fig, 520, gap=0.3)
    return fig


def quality_figure(problem: str, rows: list[dict]):
    """PSNR against iteration and against elapsed time, one line per run (iteration 0: the start); for a problem
    whose runs have no ground truth (a measured scan without a reference), the data residual ``||A x - y|| /
    ||y||`` instead, on a log axis, from iteration 1."""
    from plotly.subplots import make_subplots

    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["problem"] == problem and r.get("status") == "ok":
            by_run[r["run_key"]].append(r)
    mine = [r for run in by_run.values() for r in run]
    metric = "psnr" if any(r.get("psnr") is not None for r in mine) else "measurement_residual"
    label = "PSNR" if metric == "psnr" else "data residual"
    titles = [f"{label} vs iteration", f"{label} vs time"]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=titles)
    ordered = sorted(
        by_run.items(),
        key=lambda kv: (_size_order(size_label(kv[1][0]["size"])), ENGINE_ORDER.get(series_of(kv[1][0]), 9),
                        kv[1][0]["world_size"], kv[0]),
    )  # fmt: skip
    for index, (_key, run) in enumerate(ordered):
        first, series = run[0], series_of(run[0])
        iterations = sorted({r["iteration"] for r in run})
        score = {r["iteration"]: r[metric] for r in run if r.get(metric) is not None}
        slowest = [max(r["total_s"] for r in run if r["iteration"] == i) for i in iterations]
        elapsed = [sum(slowest[: i + 1]) for i in range(len(slowest))]
        start = [0] if metric == "psnr" else []  # the start's PSNR is known; its residual is not measured
        its = start + [i for i in iterations if i in score]
        times = [0.0] * len(start) + [t for i, t in zip(iterations, elapsed, strict=True) if i in score]
        values = [first.get("init_psnr")] * len(start) + [score[i] for i in its[len(start) :]]
        name = f"{ENGINE_NAMES.get(series, series)} ×{first['world_size']}, {size_label(first['size'])}" + (
            f" (rep {first['repetition']})" if first.get("repetition") else ""
        )
        style = {"color": colour(index), "dash": LINE_DASH.get(series, "dash")}
        fig.add_scatter(x=its, y=values, mode="lines+markers", name=name, line=style, legendgroup=name, row=1, col=1)
        fig.add_scatter(
            x=times, y=values, mode="lines+markers", name=name, line=style, legendgroup=name, showlegend=False,
            row=1, col=2,
        )  # fmt: skip
    fig.update_xaxes(title_text="iteration (0: the start)", row=1, col=1)
    fig.update_xaxes(title_text="elapsed seconds (slowest rank)", row=1, col=2)
    if metric == "psnr":
        fig.update_yaxes(title_text="PSNR (dB)", row=1, col=1)
    else:
        fig.update_yaxes(title_text="||A x - y|| / ||y||", type="log", row=1, col=1)
        fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(title=f"{problem}: reconstruction quality")
    _legend_below(fig, 500)
    return fig


def bytes_figure(problem: str, summary: list[dict]):
    """Bytes sent plus received per iteration by the busiest rank (median over iterations), per engine and
    world size, one group of bars per image size."""
    import plotly.graph_objects as go

    ok = [e for e in summary if e["problem"] == problem and e["status"] == "ok" and e.get("bytes_moved") is not None]
    fig = go.Figure()
    for engine in sorted({e["engine"] for e in ok}, key=lambda n: ENGINE_ORDER.get(n, 9)):
        runs = sorted(
            (e for e in ok if e["engine"] == engine),
            key=lambda e: (_size_order(size_label(e["size"])), e["world_size"]),
        )
        fig.add_bar(
            x=[[f"size {size_label(e['size'])}" for e in runs], [f"×{e['world_size']}" for e in runs]],
            y=[e["bytes_moved"] / MIB for e in runs], name=ENGINE_NAMES.get(engine, engine),
            marker_color=colour(ENGINE_ORDER.get(engine, 9)),
        )  # fmt: skip
    fig.update_layout(title=f"{problem}: MiB sent + received per iteration (busiest rank, median)", barmode="group")
    fig.update_xaxes(title_text="image size, devices")
    fig.update_yaxes(title_text="MiB per iteration", rangemode="tozero")
    _legend_below(fig, 450, gap=0.3)
    return fig


def memory_figure(problem: str, rows: list[dict]):
    """Peak memory of each rank (the larger of the gradient's and the denoiser's), bars at the largest rank."""
    import plotly.graph_objects as go

    peaks: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["problem"] != problem or r.get("status") != "ok":
            continue
        key = (size_label(r["size"]), series_of(r), r["world_size"], r.get("repetition") or 0)
        peaks[key][r["rank"]] = max(peaks[key].get(r["rank"], 0.0), run_memory(r) / MIB)
    keys = sorted(peaks, key=lambda k: (_size_order(k[0]), ENGINE_ORDER.get(k[1], 9), k[2], k[3]))
    label = lambda k: [f"size {k[0]}", f"{ENGINE_NAMES.get(k[1], k[1])} ×{k[2]}"]  # noqa: E731
    fig = go.Figure()
    fig.add_bar(
        x=[[label(k)[0] for k in keys], [label(k)[1] for k in keys]], y=[max(peaks[k].values()) for k in keys],
        name="largest rank", marker_color="#9ecae1", hovertemplate="largest rank: %{y:.0f} MiB<extra></extra>",
    )  # fmt: skip
    points = [(k, rank, value) for k in keys for rank, value in sorted(peaks[k].items())]
    fig.add_scatter(
        x=[[label(k)[0] for k, _, _ in points], [label(k)[1] for k, _, _ in points]],
        y=[v for _, _, v in points], mode="markers", name="each rank", marker={"color": "#08519c", "size": 9},
        text=[f"rank {rank}" for _, rank, _ in points], hovertemplate="%{text}: %{y:.0f} MiB<extra></extra>",
    )  # fmt: skip
    mine = [r for r in rows if r["problem"] == problem]
    device = next((r.get("device_type") for r in mine), "cpu")
    if all(r.get("memory_baseline_bytes") is not None for r in mine if r.get("status") == "ok"):
        what = "CUDA" if device == "cuda" else "resident set"
        what = f"{what} peak above the process's level before the run built anything (imports excluded)"
    else:  # tables written before the baseline was recorded
        what = "CUDA peak allocated" if device == "cuda" else "peak resident set of the process, libraries included"
    fig.update_layout(title=f"{problem}: peak memory per rank ({what})")
    fig.update_xaxes(title_text="image size, engine × devices")
    fig.update_yaxes(title_text="peak memory (MiB)", rangemode="tozero")
    _legend_below(fig, 500, gap=0.3)
    return fig


# ------------------------------------------------------------------------------------------------------ page


def _image_tag(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure class="preview"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def previews_html(problem: str, summary: list[dict], directory: Path) -> str:
    """Per image size: ground truth, one measurement, the start, and each engine's reconstruction (its largest
    world size), from the PNGs the runs wrote; missing pictures are skipped."""
    folder = directory / "previews"
    ok = [e for e in summary if e["problem"] == problem and e["status"] == "ok"]
    blocks = []
    for size in sorted({size_label(e["size"]) for e in ok}, key=_size_order):
        at_size = [e for e in ok if size_label(e["size"]) == size]
        tags = []
        group = folder / at_size[0]["group"]
        init = at_size[0].get("init_psnr")
        start = "start" + (f", {init:.2f} dB" if init is not None else "")
        for name, caption in (("ground_truth", "ground truth"), ("measurement", "one measurement"),
                              ("initial", start)):  # fmt: skip
            if (group / f"{name}.png").exists():
                tags.append(_image_tag(group / f"{name}.png", caption))
        for engine in sorted({e["engine"] for e in at_size}, key=lambda e: ENGINE_ORDER.get(e, 9)):
            e = max((e for e in at_size if e["engine"] == engine), key=lambda e: e["world_size"])
            path = folder / f"{e['run_key']}.png"
            if path.exists():
                psnr = f", {e['psnr']:.2f} dB" if e.get("psnr") is not None else ""
                if e.get("psnr") is None and e.get("residual") is not None:
                    psnr = f", residual {e['residual']:.2e}"
                tags.append(_image_tag(path, f"{ENGINE_NAMES.get(engine, engine)} ×{e['world_size']}{psnr}"))
        if tags:
            blocks.append(f'<h3>size {html.escape(size)}</h3><div class="previews">{"".join(tags)}</div>')
    return "".join(blocks)


def runs_table_html(summary: list[dict]) -> str:
    head = (
        "<tr><th>run</th><th>status</th><th>ranks</th><th>PSNR (dB) or residual</th><th>s / iteration</th>"
        "<th>speedup</th></tr>"
    )
    body = []
    for e in sorted(summary, key=lambda e: (e["problem"], e["run_key"])):
        if e["status"] != "ok":
            body.append(
                f'<tr class="failed"><td>{html.escape(e["run_key"])}</td><td>FAILED</td><td>{e["world_size"]}</td>'
                f'<td colspan="3">{html.escape(last_line(e.get("error")))}</td></tr>'
            )
            continue
        psnr = quality_text(e)
        speedup = f"{e['speedup_total']:.2f}x" if e.get("speedup_total") else "no baseline"
        body.append(
            f"<tr><td>{html.escape(e['run_key'])}</td><td>ok</td><td>{e['world_size']}</td><td>{psnr}</td>"
            f"<td>{e['total_s']:.3f}</td><td>{speedup}</td></tr>"
        )
    return f'<table class="runs">{head}{"".join(body)}</table>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1280px; color: #222; }
h1 { margin-bottom: 4px; } .meta { color: #555; margin-top: 0; }
section.problem { border-top: 2px solid #ddd; margin-top: 32px; }
ul.observations li { margin: 4px 0; } li.failed { color: #b00020; }
.previews { display: flex; flex-wrap: wrap; gap: 12px; }
figure.preview { margin: 0; }
figure.preview img { width: 220px; height: 220px; object-fit: contain; background: #f4f4f4; border: 1px solid #ccc; }
figcaption { font-size: 13px; color: #444; text-align: center; }
table.runs { border-collapse: collapse; font-size: 13px; } table.runs td, table.runs th { padding: 3px 8px;
border-bottom: 1px solid #eee; text-align: left; } tr.failed td { color: #b00020; }
"""


def build_figures(rows: list[dict], summary: list[dict]) -> dict[str, object]:
    """Every figure of the report by id (``<kind>-<problem>``), in page order."""
    figures = {}
    for problem in sorted({e["problem"] for e in summary}):
        if not any(e["problem"] == problem and e["status"] == "ok" for e in summary):
            continue
        figures[f"scaling-{problem}"] = scaling_figure(problem, summary)
        figures[f"breakdown-{problem}"] = breakdown_figure(problem, summary)
        figures[f"quality-{problem}"] = quality_figure(problem, rows)
        figures[f"memory-{problem}"] = memory_figure(problem, rows)
        figures[f"bytes-{problem}"] = bytes_figure(problem, summary)
    return figures


def write_report(results_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the dashboard of ``results_dir``'s table to ``output`` (default ``results_dir/report.html``),
    atomically; returns its path."""
    from plotly.offline import get_plotlyjs

    directory = Path(results_dir)
    rows = read_rows(directory)
    insight_sections = insights_html(directory)
    if not rows and not insight_sections:
        raise ValueError(
            f"results_dir={str(results_dir)!r} has no results table: run `distinv run CONFIG` (or `distinv "
            "insights STUDY`) first."
        )
    summary = summarise(directory) if rows else []
    figures = build_figures([r for r in rows if r.get("kind") != "training"], summary)
    sections = []
    for problem in sorted({e["problem"] for e in summary}):
        notes = observations(problem, summary)
        items = "".join(
            f'<li class="{"failed" if n.startswith("FAILED") else ""}">{html.escape(n)}</li>' for n in notes
        )
        plots = "".join(
            f'<div class="figure" data-figure="{fid}">'
            + fig.to_html(full_html=False, include_plotlyjs=False, div_id=fid, config={"displaylogo": False})
            + "</div>"
            for fid, fig in figures.items()
            if fid.endswith(f"-{problem}")
        )
        sections.append(
            f'<section class="problem" id="{problem}"><h2>{html.escape(problem)}</h2>'
            f'<h3>Observations</h3><ul class="observations">{items}</ul>{plots}'
            f"<h3>Previews</h3>{previews_html(problem, summary, directory) or '<p>no preview images</p>'}</section>"
        )
    if rows:
        env = rows[0]
        trained = summarise_training(rows)
        meta = (
            f"{len(summary)} PnP runs ({sum(e['status'] != 'ok' for e in summary)} failed), {len(trained)} training "
            f"runs ({sum(e['status'] != 'ok' for e in trained)} failed) from "
            f"{html.escape(str(directory))}; torch {env.get('torch_version')}, deepinv {env.get('deepinv_version')}, "
            f"distinv {env.get('distinv_version')}, commit {str(env.get('git_commit') or 'unknown')[:10]}, "
            f"{env.get('device_name')} ({env.get('backend')})"
        )
        runs = f"<h2>All runs</h2>{runs_table_html(summary)}"
    else:
        meta, runs = f"insight studies from {html.escape(str(directory))}", ""
    sections.append(training_section(rows))
    sections += insight_sections
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>distinv benchmark report</title>"
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
        f"<h1>distinv benchmark report</h1><p class='meta'>{meta}</p>{''.join(sections)}"
        f"{runs}</body></html>"
    )
    out = Path(output) if output else directory / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def studies_in(insight_rows: list[dict]) -> list[str]:
    """The insight studies with at least one measurement."""
    from distinv.bench.insights import STUDIES

    return [s for s in STUDIES if any(r.get("study") == s and r.get("status") == "ok" for r in insight_rows)]


def insights_html(directory: Path) -> list[str]:
    """One section per insight study in ``directory/insights.parquet``: observations, then its figure."""
    from distinv.bench.insights import TABLE
    from distinv.bench.insights_report import FIGURES

    rows = read_rows(directory, TABLE)
    sections = []
    for study in studies_in(rows):
        figure, observe, title = FIGURES[study]
        fid = f"insight-{study}"
        items = "".join(f"<li>{html.escape(n)}</li>" for n in observe(rows))
        plot = figure(rows).to_html(full_html=False, include_plotlyjs=False, div_id=fid, config={"displaylogo": False})
        sections.append(
            f'<section class="insight" id="{study}"><h2>{html.escape(title)}</h2>'
            f'<h3>Observations</h3><ul class="observations">{items}</ul>'
            f'<div class="figure" data-figure="{fid}">{plot}</div></section>'
        )
    return sections


def export_static(results_dir: str | Path, folder: str | Path, fmt: str = "png") -> list[Path]:
    """Every figure as ``<id>.<fmt>`` (png, svg or pdf) for papers; needs the ``kaleido`` package."""
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"fmt={fmt!r}: choose png, svg or pdf.")
    try:
        import kaleido  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("static export needs kaleido: pip install kaleido (it drives a local Chrome).") from exc
    from distinv.bench.insights import TABLE
    from distinv.bench.insights_report import FIGURES

    rows = read_rows(results_dir)
    figures = build_figures([r for r in rows if r.get("kind") != "training"], summarise(results_dir) if rows else [])
    figures |= training_figures(rows, summarise_training(rows))
    insight_rows = read_rows(results_dir, TABLE)
    figures |= {f"insight-{s}": FIGURES[s][0](insight_rows) for s in studies_in(insight_rows)}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fid, fig in figures.items():
        path = out / f"{fid}.{fmt}"
        fig.write_image(path, width=1200)
        paths.append(path)
    return paths
