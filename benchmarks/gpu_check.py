"""GPU figures in one command: prepared on CPU, run whenever a GPU is at hand (issue 22).

One device, world size 1, six parts, each time-boxed (a part that runs out of time records the settings it
skipped; a part that fails records its error; either way the next part starts):

1. ``environment``: the device and its memory, torch / CUDA / cuDNN, deepinv and distinv versions;
2. ``correctness``: on the device, the distributed stacked physics against deepinv's single-process stack, the
   tiled DnCNN against the untiled one, the tiled DRUNet's error against its halo, and the plan automatic tiling
   picks;
3. ``tiling``: untiled, distinv's tiled denoiser and deepinv's module (its defaults 256/64, and 512/32) on colour
   images, for the shipped small DRUNet and deepinv's full-size DRUNet (random weights): median seconds per call
   after a warm-up (CUDA events), peak memory the call adds (CUDA peak allocated);
4. ``insights``: the two insight studies cut to fit (DRUNet; shape against memory at one height, batch against
   throughput on one image), with the memory spikes and the saturating batch they find;
5. ``pnp``: highres_blur (K blurs, HQS), untiled (engine ``none``) and distinv at world size 1: seconds per
   iteration by component (the first iteration left out) and PSNR;
6. ``knobs``: speed options against the plain tiled denoiser: channels-last, bfloat16 autocast of the denoiser
   (the data steps stay float32; the PnP's PSNR cost reported), ``torch.compile`` of the network.

    python benchmarks/gpu_check.py                          # one GPU: the published sizes, about 8 minutes
    python benchmarks/gpu_check.py --device cpu --tiny      # every part at toy sizes, about a minute

Writes ``<out>/gpu_check.json`` (every row) and ``<out>/gpu_check.md`` (the tables, also printed). How to run it
on a GPU machine that has PyTorch but no package index: benchmarks/README.md, "GPU check".
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

SIGMA = 0.05


@dataclass(frozen=True)
class Sizes:
    """What each part measures; ``TINY`` runs the same code at toy sizes."""

    budgets_s: dict = field(
        default_factory=lambda: {
            "environment": 10, "correctness": 45, "tiling": 150, "insights": 120, "pnp": 90, "knobs": 75,
        }
    )  # fmt: skip
    check_size: int = 512  # correctness images (pixels per side)
    halos: tuple[int, ...] = (8, 16, 32, 64)
    tiling_sizes: tuple[int, ...] = (2048, 4096)
    deepinv_settings: tuple[tuple[int, int], ...] = ((256, 64), (512, 32))  # (patch, overlap): its default, and 512/32
    repetitions: int = 3
    full_drunet: bool = True  # deepinv's DRUNet at its published width (64, 128, 256, 512)
    insight_height: int = 2048
    insight_widths: dict = field(default_factory=lambda: {"start": 1024, "stop": 2048, "steps": [64, 68]})
    insight_image: int = 2048
    insight_patches: tuple[int, ...] = (128, 256, 512)
    insight_batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    pnp_size: int = 2048
    pnp_operators: int = 8
    pnp_iterations: int = 5
    knob_size: int = 2048
    compile: bool = True


FULL = Sizes()
TINY = Sizes(
    budgets_s={"environment": 10, "correctness": 60, "tiling": 60, "insights": 60, "pnp": 60, "knobs": 60},
    check_size=64,
    halos=(4, 16),
    tiling_sizes=(64, 96),
    deepinv_settings=((32, 8), (48, 8)),
    repetitions=1,
    full_drunet=False,
    insight_height=32,
    insight_widths={"start": 32, "stop": 48, "steps": [8, 12]},
    insight_image=64,
    insight_patches=(16, 32),
    insight_batches=(1, 2),
    pnp_size=48,
    pnp_operators=2,
    pnp_iterations=2,
    knob_size=64,
    compile=False,  # inductor builds C++ on CPU: minutes, not a toy
)


class TimeBox:
    """A part's deadline: ``open()`` before each setting; what it refuses is recorded as skipped."""

    def __init__(self, seconds: float):
        self.deadline, self.skipped = time.monotonic() + seconds, []

    def open(self, setting: str) -> bool:
        if time.monotonic() < self.deadline:
            return True
        self.skipped.append(setting)
        return False


# ---------------------------------------------------------------------------------------------- shared helpers
def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def timed(fn: Callable[[], object], device: torch.device, repetitions: int) -> dict:
    """Median seconds of ``fn()`` after a warm-up (CUDA events on GPU), and the peak MiB the first call added;
    ``status`` "out of memory" when the device runs out."""
    from distinv.runtime.timing import timed_calls

    try:
        times, peak = timed_calls(fn, device, repetitions)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"status": "out of memory", "seconds": None, "peak_mib": None}
    return {"status": "ok", "seconds": statistics.median(times), "peak_mib": peak / 2**20}


def colour_image(size: int, device: torch.device) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)


def network(name: str, device: torch.device, sizes: Sizes) -> torch.nn.Module:
    """``"drunet-small"`` (shipped, trained) or ``"drunet-full"`` (deepinv's DRUNet, random weights; narrower in
    ``--tiny``); ``"dncnn"`` (deepinv's DnCNN, random weights)."""
    from deepinv.models import DnCNN, DRUNet

    from distinv.denoisers import load_denoiser

    torch.manual_seed(0)
    if name == "drunet-small":
        return load_denoiser("shipped:drunet-small-colour", device=device)
    if name == "drunet-full":
        nc = (64, 128, 256, 512) if sizes.full_drunet else (16, 32, 64, 128)
        return DRUNet(in_channels=3, out_channels=3, nc=nc, pretrained=None).to(device).eval()
    return DnCNN(in_channels=3, out_channels=3, depth=20, pretrained=None).to(device).eval()


def deepinv_module(model: torch.nn.Module, ctx, patch: int, overlap: int):
    import deepinv.distributed as theirs

    from distinv.bench.engines import deepinv_context

    return theirs.distribute(model, deepinv_context(ctx.device, ctx.local_rank), patch_size=patch, overlap=overlap)


# ---------------------------------------------------------------------------------------------- the six parts
def environment(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    import deepinv

    import distinv

    device = ctx.device
    row = {
        "device": device.type,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "deepinv": deepinv.__version__,
        "distinv": distinv.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        row |= {
            "name": props.name,
            "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}",
        }
    else:
        row["name"] = platform.processor() or platform.machine()
    return [row]


def correctness(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    from deepinv.physics import StackedLinearPhysics

    from distinv import distribute
    from distinv.bench.problems import build

    device, rows, n = ctx.device, [], sizes.check_size
    if box.open("stacked physics"):
        problem = build("highres_blur", size=n, num_operators=3)
        operators = [problem.factory(i, device, problem.shared) for i in range(3)]
        ours, theirs = distribute(operators, ctx), StackedLinearPhysics(operators)
        x = problem.ground_truth.to(device)
        y = theirs.A(x)
        rows.append({
            "check": "distributed stacked physics = deepinv's stack (3 blurs)",
            "A": max(relative(a, b) for a, b in zip(ours.A(x), y, strict=True)),
            "A_adjoint": relative(ours.A_adjoint(y), theirs.A_adjoint(y)),
            "A_adjoint_A": relative(ours.A_adjoint_A(x), theirs.A_adjoint_A(x)),
        })  # fmt: skip
    x = colour_image(n, device)
    with torch.no_grad():
        if box.open("tiled DnCNN"):
            dncnn = network("dncnn", device, sizes)
            tiled = distribute(dncnn, ctx, type_object="denoiser", patch_size=n // 2, overlap=32)(x, SIGMA)
            rows.append(
                {"check": "tiled DnCNN = untiled (reach 20 < halo 32)", "error": relative(tiled, dncnn(x, SIGMA))}
            )
        drunet = network("drunet-small", device, sizes)
        whole = drunet(x, SIGMA)
        for halo in sizes.halos:
            if box.open(f"DRUNet halo {halo}"):
                tiled = distribute(drunet, ctx, type_object="denoiser", patch_size=n // 2, overlap=halo)(x, SIGMA)
                rows.append({"check": f"tiled DRUNet (small), halo {halo}", "error": relative(tiled, whole)})
        if box.open("automatic tiling"):
            auto = distribute(drunet, ctx, type_object="denoiser", patch_size="auto", max_batch_size="auto")
            out = auto(x, SIGMA)
            plan = auto.layout_for(x.shape).plan
            rows.append({
                "check": "automatic tiling's plan",
                "grid": list(plan.grid),
                "owned": list(plan.windows[0].owned_size),
                "halo": list(plan.overlap),
                "error": relative(out, whole),
            })  # fmt: skip
    return rows


def tiling(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    from distinv import distribute

    device, rows = ctx.device, []
    for model_name in ("drunet-small", "drunet-full"):
        model = network(model_name, device, sizes)
        for size in sizes.tiling_sizes:
            x = colour_image(size, device)
            settings = {"untiled": model, "distinv": distribute(model, ctx, type_object="denoiser")}
            for patch, overlap in sizes.deepinv_settings:
                settings[f"deepinv {patch}/{overlap}"] = deepinv_module(model, ctx, patch, overlap)
            for name, fn in settings.items():
                if not box.open(f"{model_name} {size} {name}"):
                    continue
                with torch.no_grad():
                    row = timed(lambda fn=fn, x=x: fn(x, SIGMA), device, sizes.repetitions)
                rows.append({"model": model_name, "size": size, "setting": name, **row})
            del x, settings
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def insights(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    from distinv.bench.insights import InsightConfig, measure_cases, study_cases

    rows, denoiser = [], {"name": "DRUNet", "model": "untrained:DRUNet"}
    common = {"device": ctx.device.type, "repetitions": max(1, sizes.repetitions - 1), "denoisers": [denoiser]}

    def measured(config: InsightConfig) -> list[dict]:
        cases, done = study_cases(config), []
        for first in range(0, len(cases), 4):  # a few shapes at a time, within the part's time
            if box.open(f"{config.study} from {cases[first]['input_shape']}"):
                done += measure_cases(config, denoiser, cases[first : first + 4], progress=lambda _: None)
        return [r for r in done if r["status"] == "ok"]

    shapes = measured(
        InsightConfig(study="shape-memory", height=sizes.insight_height, widths=sizes.insight_widths, **common)
    )
    peaks = [r["peak_bytes"] for r in shapes]
    typical = statistics.median(peaks) if peaks else 0
    rows.append({
        "study": "shape-memory", "height": sizes.insight_height, "widths": len(shapes),
        "median_peak_mib": typical / 2**20, "largest_peak_mib": max(peaks, default=0) / 2**20,
        "spike_widths": [r["width"] for r in shapes if typical and r["peak_bytes"] > 1.5 * typical],
    })  # fmt: skip
    batches = measured(
        InsightConfig(
            study="batch-throughput", image_size=sizes.insight_image, patches=list(sizes.insight_patches),
            batches=list(sizes.insight_batches), **common,
        )
    )  # fmt: skip
    for patch in sizes.insight_patches:
        series = sorted((r for r in batches if r["patch"] == patch), key=lambda r: r["batch"])
        best = max((r["patches_per_s"] for r in series), default=0)
        rows.append({
            "study": "batch-throughput", "image": sizes.insight_image, "patch": patch,
            "best_patches_per_s": best,
            "saturating_batch": next((r["batch"] for r in series if r["patches_per_s"] >= 0.9 * best), None),
        })  # fmt: skip
    return rows


def pnp_run(ctx, sizes: Sizes, denoiser_wrapper: Callable | None = None, engine: str = "distinv") -> dict:
    """One PnP of highres_blur; returns its row (seconds per iteration by component, PSNR)."""
    from distinv.bench.engines import build_engine
    from distinv.bench.problems import build
    from distinv.bench.spec import TilingSpec
    from distinv.pnp import pnp, sigma_schedule

    problem = build("highres_blur", size=sizes.pnp_size, num_operators=sizes.pnp_operators)
    model = network("drunet-small", ctx.device, sizes)
    built = build_engine(engine, ctx, problem, model, TilingSpec())  # distinv plans its windows, default overlap
    denoiser = denoiser_wrapper(built.denoiser) if denoiser_wrapper else built.denoiser
    with torch.no_grad():
        y = built.measure(problem)
        x0 = built.initial(problem, y)
        _, records = pnp(
            "hqs", built.physics, denoiser, y, x0, sigma_schedule(0.1, 0.02, sizes.pnp_iterations),
            iterations=sizes.pnp_iterations, step=1.0, cg_iterations=5, ctx=ctx,
            ground_truth=built.ground_truth(problem),
        )  # fmt: skip
    timed_records = records[1:] or records
    return {
        "engine": engine,
        "size": sizes.pnp_size,
        "operators": sizes.pnp_operators,
        "iterations": len(records),
        **{
            f"{k}_s": statistics.median(getattr(r, f"{k}_s") for r in timed_records)
            for k in ("total", "data", "denoiser")
        },
        "psnr": records[-1].psnr,
        "data_solver": records[-1].data_solver,
    }


def pnp_part(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    return [pnp_run(ctx, sizes, engine=engine) for engine in ("none", "distinv") if box.open(f"pnp {engine}")]


def knobs(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    from distinv import distribute

    device, rows = ctx.device, []
    model = network("drunet-small", device, sizes)
    x = colour_image(sizes.knob_size, device)
    autocast_dtype = torch.bfloat16

    def bf16(fn):
        def call(t, sigma):
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                return fn(t, sigma).float()

        return call

    plain = distribute(model, ctx, type_object="denoiser")
    options = {"plain": plain, "channels-last": None, "bfloat16 autocast": bf16(plain), "torch.compile": None}
    for name in options:
        if not box.open(f"knob {name}"):
            continue
        fn, first_s = options[name], None
        if name == "channels-last":
            fn = distribute(
                network("drunet-small", device, sizes).to(memory_format=torch.channels_last),
                ctx,
                type_object="denoiser",
            )
        if name == "torch.compile":
            if not sizes.compile:
                box.skipped.append("torch.compile (--tiny: inductor would build C++ for minutes)")
                continue
            fn = distribute(torch.compile(network("drunet-small", device, sizes)), ctx, type_object="denoiser")
            start = time.perf_counter()
            with torch.no_grad():
                fn(x, SIGMA)  # compilation
            first_s = time.perf_counter() - start
        with torch.no_grad():
            row = timed(lambda fn=fn: fn(x, SIGMA), device, sizes.repetitions)
        rows.append({"knob": name, "size": sizes.knob_size, "first_call_s": first_s, **row})
    if box.open("bfloat16 PnP"):
        plain_run = pnp_run(ctx, sizes)
        half_run = pnp_run(ctx, sizes, denoiser_wrapper=bf16)
        rows.append({
            "knob": "bfloat16 PnP (data steps float32)", "size": sizes.pnp_size, "status": "ok",
            "seconds": half_run["denoiser_s"], "plain_denoiser_s": plain_run["denoiser_s"],
            "psnr": half_run["psnr"], "plain_psnr": plain_run["psnr"],
            "psnr_cost_db": plain_run["psnr"] - half_run["psnr"],
        })  # fmt: skip
    return rows


PARTS = ("environment", "correctness", "tiling", "insights", "pnp", "knobs")


def run_part(name: str, ctx, sizes: Sizes) -> dict:
    """One part within its time box: ``{"rows", "skipped", "seconds", "error"}``."""
    box = TimeBox(sizes.budgets_s[name])
    start = time.monotonic()
    functions = {
        "environment": environment,
        "correctness": correctness,
        "tiling": tiling,
        "insights": insights,
        "pnp": pnp_part,
        "knobs": knobs,
    }
    try:
        rows = functions[name](ctx, sizes, box)
        error = None
    except Exception as failure:  # noqa: BLE001 - a broken part is recorded; the others still run
        rows, error = [], "".join(traceback.format_exception(failure))[-3000:]
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"rows": rows, "skipped": box.skipped, "seconds": time.monotonic() - start, "error": error}


# ---------------------------------------------------------------------------------------------- the report
def markdown(results: dict) -> str:
    lines = [f"# GPU check ({results['mode']}, {results['date']})", ""]
    for name in PARTS:
        part = results["parts"].get(name)
        if part is None:
            continue
        lines.append(f"## {name} ({part['seconds']:.0f} s)")
        if part["rows"]:
            keys = list(dict.fromkeys(k for row in part["rows"] for k in row))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in part["rows"]]
        if part["skipped"]:
            lines.append(f"skipped (out of time or not run): {', '.join(part['skipped'])}")
        if part["error"]:
            lines.append(f"FAILED: {part['error'].strip().splitlines()[-1]}")
        lines.append("")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3g}"
    return "" if value is None else str(value)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where to run (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="every part at toy sizes (the CPU test)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="parts to run (default all)")
    parser.add_argument("--out", default="results/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible here; run on a GPU machine, or --device cpu --tiny")

    from distinv import DistributedContext

    warnings.simplefilter("ignore")
    sizes = TINY if args.tiny else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "mode": f"{args.device}{' tiny' if args.tiny else ''}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "sizes": asdict(sizes),
        "parts": {},
    }
    device_mode = "gpu" if args.device == "cuda" else "cpu"
    with DistributedContext(env={}, device_mode=device_mode, num_threads=None if args.device == "cuda" else 1) as ctx:
        for name in args.parts:
            print(f"[{name}] ...", flush=True)
            results["parts"][name] = run_part(name, ctx, sizes)
            _write_atomically(out / "gpu_check.json", json.dumps(results, indent=1, default=str))
    table = markdown(results)
    _write_atomically(out / "gpu_check.md", table)
    print(table)
    return results


if __name__ == "__main__":
    main()
