"""The training half of the results: a summary per training run, its text table and the report's section.

A step lasts as long as its slowest rank; a run's time per step (and per component: forward, backward, optimiser,
communication) is the median over its steps, the first (a warm-up) left out when there are more. Speedup and
efficiency are against the group's one-process run (engine ``none``), else distinv at its smallest world size,
as for PnP. Memory: the most a step added above its start on any rank.
"""

from __future__ import annotations

import html
import statistics
from collections import defaultdict

from distinv.bench.palette import colour
from distinv.bench.results import last_line, size_text

COMPONENTS = ("forward_s", "backward_s", "optimizer_s", "comm_s", "step_s")
MIB = 2**20
ENGINE_ORDER = {"none": 0, "distinv": 1, "distinv-sharded": 2, "deepinv": 3}


def training_rows(rows: list[dict]) -> list[dict]:
    """The rows of training runs (the table's ``kind`` column)."""
    return [r for r in rows if r.get("kind") == "training"]


def summarise_training(rows: list[dict]) -> list[dict]:
    """One entry per training run (from :func:`training_rows`): world size, status, seconds per step by
    component, peak memory per rank, validation PSNR at the start and the end, speedup and efficiency."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for row in training_rows(rows):
        runs[row["run_key"]].append(row)
    summary = []
    for run in runs.values():
        ok = [r for r in run if r.get("status") == "ok"]
        first = (ok or run)[-1]
        entry = {k: first.get(k) for k in ("run_key", "group", "problem", "size", "engine", "world_size")}
        entry["status"] = first.get("status")
        if not ok:
            entry.update(error=first.get("error"), failed_rank=first.get("failed_rank"))
            summary.append(entry)
            continue
        steps = sorted({r["step"] for r in ok if r["step"] > 0})
        timed = steps[1:] if len(steps) > 1 else steps
        for component in COMPONENTS:
            entry[component] = statistics.median(max(r[component] for r in ok if r["step"] == s) for s in timed)
        validated = sorted((r["step"], r["val_psnr"]) for r in ok if r.get("val_psnr") is not None and r["rank"] == 0)
        entry["start_psnr"], entry["final_psnr"] = validated[0][1], validated[-1][1]
        entry["steps"] = len(steps)
        entry["peak_bytes"] = max(r.get("peak_bytes") or 0 for r in ok)
        summary.append(entry)
    for entry in summary:
        if entry["status"] != "ok":
            continue
        group = [e for e in summary if e["group"] == entry["group"] and e["status"] == "ok"]
        base = [e for e in group if e["engine"] == "none"] or sorted(
            (e for e in group if e["engine"] == "distinv"), key=lambda e: e["world_size"]
        )[:1]
        if base:
            speedup = base[0]["step_s"] / entry["step_s"] if entry["step_s"] > 0 else None
            entry["speedup"] = speedup
            entry["efficiency"] = speedup * base[0]["world_size"] / entry["world_size"] if speedup else None
    return summary


def format_training_summary(summary: list[dict]) -> str:
    """A plain-text table, one line per training run."""
    head = (
        f"{'problem':<14} {'size':>7} {'engine':<8} {'ranks':>5} {'PSNR start':>10} {'end':>6} {'s/step':>7} "
        f"{'fwd':>6} {'bwd':>6} {'optim':>6} {'comm':>6} {'MB/rank':>8} {'speedup':>7} {'eff.':>5}"
    )
    lines = [head, "-" * len(head)]
    for e in sorted(summary, key=_order):
        if e["status"] != "ok":
            failed = f" on rank {e['failed_rank']}" if e.get("failed_rank") is not None else ""
            lines.append(
                f"{e['problem']:<14} {size_text(e['size']):>7} {e['engine']:<8} {e['world_size']:>5} FAILED"
                f"{failed}: {last_line(e.get('error'))}"
            )
            continue
        speedup = f"{e['speedup']:.2f}x" if e.get("speedup") else "n/a"
        eff = f"{e['efficiency']:.0%}" if e.get("efficiency") else "n/a"
        lines.append(
            f"{e['problem']:<14} {size_text(e['size']):>7} {e['engine']:<8} {e['world_size']:>5} "
            f"{e['start_psnr']:10.2f} {e['final_psnr']:6.2f} {e['step_s']:6.2f}s {e['forward_s']:5.2f}s "
            f"{e['backward_s']:5.2f}s {e['optimizer_s']:5.2f}s {e['comm_s']:5.2f}s {e['peak_bytes'] / MIB:8.0f} "
            f"{speedup:>7} {eff:>5}"
        )
    lines.append(
        "training: median seconds per step (slowest rank, first step left out); validation PSNR (dB) before the "
        "first and after the last step; memory: the most a step added on any rank; speedup against one process"
    )
    return "\n".join(lines)


def _order(e: dict) -> tuple:
    return (e["problem"], str(e["size"]), ENGINE_ORDER.get(e["engine"], 3), e["world_size"])


def _label(e: dict) -> str:
    return f"{e['engine']} {size_text(e['size'])}"


def training_figures(rows: list[dict], summary: list[dict]) -> dict[str, object]:
    """The training section's figures by id: time per step by component, strong scaling, memory per rank, and
    loss and validation PSNR against steps and time."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ok = sorted((e for e in summary if e["status"] == "ok"), key=_order)
    if not ok:
        return {}
    names = [f"{_label(e)}, {e['world_size']} rank{'s' * (e['world_size'] > 1)}" for e in ok]
    breakdown = go.Figure()
    for component, label in (
        ("forward_s", "forward"),
        ("backward_s", "backward"),
        ("optimizer_s", "optimiser"),
        ("comm_s", "communication (within the others)"),
    ):
        breakdown.add_bar(x=names, y=[e[component] for e in ok], name=label)
    breakdown.update_layout(title="training: seconds per step by component (median, slowest rank)", barmode="group")

    scaling = make_subplots(rows=1, cols=2, subplot_titles=["speedup per step", "parallel efficiency"])
    for key in sorted({(e["engine"], size_text(e["size"])) for e in ok if e.get("speedup")}):
        runs = sorted((e for e in ok if (e["engine"], size_text(e["size"])) == key), key=lambda e: e["world_size"])
        worlds = [e["world_size"] for e in runs]
        style, name = {"color": colour(ENGINE_ORDER.get(key[0], 3))}, " ".join(key)
        speedups = [e["speedup"] for e in runs]
        scaling.add_scatter(x=worlds, y=speedups, name=name, legendgroup=name, line=style, row=1, col=1)
        scaling.add_scatter(
            x=worlds,
            y=[e["efficiency"] for e in runs],
            name=name,
            legendgroup=name,
            showlegend=False,
            line=style,
            row=1,
            col=2,
        )
    scaling.update_layout(title="training: strong scaling against one process")
    scaling.update_xaxes(title_text="ranks", tickvals=sorted({e["world_size"] for e in ok}))

    memory = go.Figure(go.Bar(x=names, y=[e["peak_bytes"] / MIB for e in ok]))
    memory.update_layout(title="training: peak memory a step adds per rank (MiB, largest rank)")

    curves = make_subplots(
        rows=1, cols=3, subplot_titles=["training loss vs step", "validation PSNR vs step", "validation PSNR vs time"]
    )
    for e, name in zip(ok, names, strict=True):
        mine = sorted((r for r in rows if r["run_key"] == e["run_key"] and r.get("rank") == 0), key=lambda r: r["step"])
        trained = [r for r in mine if r["step"] > 0]
        validated = [r for r in mine if r.get("val_psnr") is not None]
        style = {"color": colour(ENGINE_ORDER.get(e["engine"], 3)), "dash": "solid" if e["world_size"] == 1 else "dot"}
        curves.add_scatter(
            x=[r["step"] for r in trained], y=[r["loss"] for r in trained], name=name, line=style, row=1, col=1
        )
        for col, x in ((2, [r["step"] for r in validated]), (3, [r["elapsed_s"] for r in validated])):
            curves.add_scatter(
                x=x, y=[r["val_psnr"] for r in validated], name=name, showlegend=False, line=style, row=1, col=col
            )
    curves.update_xaxes(title_text="step", row=1, col=1)
    curves.update_xaxes(title_text="step", row=1, col=2)
    curves.update_xaxes(title_text="seconds of training (rank 0)", row=1, col=3)
    curves.update_layout(title="training: loss and validation PSNR")
    return {
        "training-breakdown": breakdown,
        "training-scaling": scaling,
        "training-memory": memory,
        "training-curves": curves,
    }


def training_section(rows: list[dict]) -> str:
    """The report's training section (empty when the table has no training runs)."""
    summary = summarise_training(rows)
    if not summary:
        return ""
    plots = "".join(
        f'<div class="figure" data-figure="{fid}">'
        + fig.to_html(full_html=False, include_plotlyjs=False, div_id=fid, config={"displaylogo": False})
        + "</div>"
        for fid, fig in training_figures(rows, summary).items()
    )
    table = html.escape(format_training_summary(summary))
    return f'<section class="problem" id="training"><h2>training</h2><pre>{table}</pre>{plots}</section>'
