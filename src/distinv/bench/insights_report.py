"""The insight studies in the report: one figure and observations computed from the data for each study."""

from __future__ import annotations

from collections import defaultdict

from distinv.bench.palette import colour

MiB = 2**20
SATURATION = 0.9  # a batch "saturates" once it reaches this fraction of the best throughput


def _ok(rows: list[dict], study: str) -> list[dict]:
    return [r for r in rows if r.get("study") == study and r.get("status") == "ok"]


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return dict(groups)


def _where(rows: list[dict]) -> str:
    r = rows[0]
    return f"{r['device_name']} ({r['device']}, {r['threads']} thread{'s' if r['threads'] > 1 else ''})"


def shape_memory_observations(rows: list[dict]) -> list[str]:
    """Per denoiser and width series: the memory range, the largest jump between neighbouring widths, and the
    widths not divisible by 8 against the aligned ones (memory per pixel)."""
    rows = _ok(rows, "shape-memory")
    notes = []
    for (name, height), group in sorted(_by(rows, "denoiser", "height").items()):
        series = sorted({s for r in group for s in r["series"].split(",")})
        for label in series:
            points = sorted((r for r in group if label in r["series"].split(",")), key=lambda r: r["width"])
            if not points:
                continue
            low = min(points, key=lambda r: r["peak_bytes"])
            high = max(points, key=lambda r: r["peak_bytes"])
            jumps = [
                (b["peak_bytes"] / max(a["peak_bytes"], 1), a, b) for a, b in zip(points, points[1:], strict=False)
            ]
            jump, a, b = max(jumps, key=lambda t: t[0]) if jumps else (1.0, points[0], points[0])
            notes.append(
                f"{name}, height {height}, {label} widths {points[0]['width']}-{points[-1]['width']}: peak memory "
                f"{low['peak_bytes'] / MiB:.0f} MiB (width {low['width']}) to {high['peak_bytes'] / MiB:.0f} MiB "
                f"(width {high['width']}); largest step between neighbours {jump:.2f}x ({a['width']} -> {b['width']})"
            )
        aligned = [r["peak_bytes"] / (r["height"] * r["width"]) for r in group if r["multiple_of_8"]]
        odd = [r["peak_bytes"] / (r["height"] * r["width"]) for r in group if not r["multiple_of_8"]]
        if aligned and odd:
            ratio = (sum(odd) / len(odd)) / (sum(aligned) / len(aligned))
            notes.append(
                f"{name}: widths not divisible by 8 use {ratio:.2f}x the memory per pixel of aligned widths "
                f"(mean over {len(odd)} and {len(aligned)} widths; worst {max(odd) / min(aligned):.2f}x the best "
                f"aligned)"
            )
    if rows:
        notes.append(f"measured on {_where(rows)}; the engine's windows are always aligned to the network's multiple")
    return notes


def batch_throughput_observations(rows: list[dict]) -> list[str]:
    """Per denoiser and patch size: the best throughput and the smallest batch within 90% of it."""
    rows = _ok(rows, "batch-throughput")
    notes = []
    for (name, patch), group in sorted(_by(rows, "denoiser", "patch").items()):
        group = sorted(group, key=lambda r: r["batch"])
        best = max(group, key=lambda r: r["patches_per_s"])
        enough = next(r for r in group if r["patches_per_s"] >= SATURATION * best["patches_per_s"])
        first = group[0]
        notes.append(
            f"{name}, patch {patch}: throughput saturates at batch {enough['batch']} ({SATURATION:.0%} of the best, "
            f"{best['patches_per_s']:.1f} patches/s at batch {best['batch']}; batch {first['batch']}: "
            f"{first['patches_per_s']:.1f}); {best['images_per_s']:.3g} images/s of "
            f"{best['image_size']}x{best['image_size']}; peak memory {first['peak_bytes'] / MiB:.0f} MiB at batch "
            f"{first['batch']}, {group[-1]['peak_bytes'] / MiB:.0f} MiB at batch {group[-1]['batch']}"
        )
    best_per_denoiser = {}
    for (name,), group in _by(rows, "denoiser").items():
        top = max(group, key=lambda r: r["images_per_s"])
        best_per_denoiser[name] = f"{name}: patch {top['patch']}, batch {top['batch']}"
    if best_per_denoiser:
        notes.append("most images per second: " + "; ".join(best_per_denoiser[k] for k in sorted(best_per_denoiser)))
        notes.append(f"measured on {_where(rows)}")
    return notes


def shape_memory_figure(rows: list[dict]):
    """Peak memory against width: one colour per denoiser, one marker and dash per width series."""
    import plotly.graph_objects as go

    rows = _ok(rows, "shape-memory")
    fig = go.Figure()
    names = sorted({r["denoiser"] for r in rows})
    dashes, symbols = ["solid", "dot", "dash"], ["circle", "x", "diamond"]
    for i, name in enumerate(names):
        group = [r for r in rows if r["denoiser"] == name]
        for j, label in enumerate(sorted({s for r in group for s in r["series"].split(",")})):
            points = sorted((r for r in group if label in r["series"].split(",")), key=lambda r: r["width"])
            fig.add_trace(
                go.Scatter(
                    x=[r["width"] for r in points],
                    y=[r["peak_bytes"] / MiB for r in points],
                    mode="lines+markers",
                    name=f"{name}, {label}",
                    line={"color": colour(i), "dash": dashes[j % 3]},
                    marker={"symbol": symbols[j % 3]},
                    customdata=[[r["seconds"] * 1e3, r["multiple_of_8"]] for r in points],
                    hovertemplate="width %{x}: %{y:.0f} MiB, %{customdata[0]:.1f} ms, multiple of 8: "
                    "%{customdata[1]}<extra></extra>",
                )
            )
    height = rows[0]["height"] if rows else "?"
    fig.update_layout(
        title=f"Peak memory vs image width (height {height})",
        xaxis_title="image width (pixels)",
        yaxis_title="peak memory (MiB)",
        height=420,
    )
    return fig


def batch_throughput_figure(rows: list[dict]):
    """Patches per second and peak memory against the batch, one line per (denoiser, patch)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = _ok(rows, "batch-throughput")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("throughput", "peak memory"))
    names = sorted({r["denoiser"] for r in rows})
    dashes = ["solid", "dot", "dash", "dashdot"]
    patches = sorted({r["patch"] for r in rows})
    for i, name in enumerate(names):
        for j, patch in enumerate(patches):
            points = sorted(
                (r for r in rows if r["denoiser"] == name and r["patch"] == patch), key=lambda r: r["batch"]
            )
            if not points:
                continue
            style = {"line": {"color": colour(i), "dash": dashes[j % 4]}, "mode": "lines+markers"}
            label = f"{name}, patch {patch}"
            fig.add_trace(
                go.Scatter(
                    x=[r["batch"] for r in points],
                    y=[r["patches_per_s"] for r in points],
                    name=label,
                    legendgroup=label,
                    **style,
                ),
                row=1,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=[r["batch"] for r in points],
                    y=[r["peak_bytes"] / MiB for r in points],
                    name=label,
                    legendgroup=label,
                    showlegend=False,
                    **style,
                ),
                row=1,
                col=2,
            )
    fig.update_xaxes(type="log", dtick=0.30103, title_text="batch (patches per call)")
    fig.update_yaxes(title_text="patches per second", row=1, col=1)
    fig.update_yaxes(title_text="peak memory (MiB)", row=1, col=2)
    fig.update_layout(title="Batch size vs throughput and memory", height=440)
    return fig


FIGURES = {
    "shape-memory": (shape_memory_figure, shape_memory_observations, "Image shape vs memory"),
    "batch-throughput": (batch_throughput_figure, batch_throughput_observations, "Batch size vs throughput"),
}
