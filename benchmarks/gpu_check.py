"""GPU figures in one command: prepared on CPU, run whenever a GPU is at hand (issues 22 and 32).

One GPU, under ``torchrun --nproc-per-node 1`` (``make gpu-check``): the script joins torchrun's process group
(NCCL on a GPU), so every collective of the engine, the halo exchanges' point-to-point calls included, goes through
NCCL. Eleven parts, each time-boxed, and all of them within ``--limit-s`` (default 480 s: a part gets what is left
when its own budget is more; a part that runs out of time records the settings it skipped; a part that fails
records its error; either way the next part starts, and the JSON is written after each part):

1. ``environment``: the device and its memory, torch / CUDA / cuDNN / NCCL, deepinv and distinv versions, the
   process group's backend and world size;
2. ``correctness``: on the device, the distributed stacked physics against deepinv's single-process stack, the
   tiled DnCNN against the untiled one, the tiled DRUNet's error against its halo, and the plan automatic tiling
   picks;
3. ``tiling``: untiled, distinv's tiled denoiser and deepinv's module (its defaults 256/64, and 512/32) on colour
   images, for the shipped small DRUNet and deepinv's full-size DRUNet (random weights): median seconds per call
   after a warm-up (CUDA events), peak memory the call adds (CUDA peak allocated);
4. ``tf32``: untiled against tiled DRUNet with TF32 off and on (cuDNN convolutions and matmuls): seconds and the
   tiled output's distance to the untiled one under each;
5. ``insights``: the two insight studies cut to fit (DRUNet; shape against memory at one height, batch against
   throughput on one image), with the memory spikes and the saturating batch they find;
6. ``pnp``: highres_blur (K blurs, HQS) untiled (engine ``none``), distinv and distinv-sharded (row bands: the
   sharded blur and denoiser, halo exchanges), and tomography_3d (cone of slabs: ``SlabStack``) sharded: seconds per
   iteration by component (the first iteration left out) and PSNR;
7. ``radio``: the radio problem with its NUFFT on the device, PnP through distinv;
8. ``training``: steps of an unrolled PGD (the shipped DRUNet, trainable) on highres_blur through distinv, with
   forward, backward and optimiser seconds;
9. ``parallel_beam``: ``ParallelBeam`` A and A^T at 256² to 2048² (180 angles): seconds per call and the dot
   test's error;
10. ``knobs``: speed options against the plain tiled denoiser: channels-last, bfloat16 autocast of the denoiser
    (the data steps stay float32; the PnP's PSNR cost reported), ``torch.compile`` of the network.

    make gpu-check                                          # one GPU, the published sizes, under 8 minutes
    python -m torch.distributed.run --standalone --nproc-per-node 1 benchmarks/gpu_check.py   # the same
    python benchmarks/gpu_check.py --device cpu --tiny      # every part at toy sizes, one process (the CPU test
                                                            # also runs it under torchrun, on gloo)

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
            "environment": 10, "correctness": 40, "tiling": 90, "tf32": 30, "insights": 50, "pnp": 80,
            "radio": 30, "training": 40, "parallel_beam": 40, "knobs": 50,
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
    tf32_size: int = 2048
    volume_size: int = 128  # tomography_3d's volume side (sharded slabs)
    volume_angles: int = 60
    radio_size: int = 512
    training_size: int = 512
    training_steps: int = 3
    beam_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    beam_angles: int = 180


FULL = Sizes()
TINY = Sizes(
    budgets_s={
        "environment": 10,
        "correctness": 60,
        "tiling": 60,
        "tf32": 30,
        "insights": 60,
        "pnp": 90,
        "radio": 40,
        "training": 40,
        "parallel_beam": 30,
        "knobs": 60,
    },  # fmt: skip
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
    tf32_size=64,
    volume_size=16,
    volume_angles=12,
    radio_size=32,
    training_size=32,
    training_steps=2,
    beam_sizes=(32, 48),
    beam_angles=12,
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
        "process_group": ctx.is_distributed,
        "backend": torch.distributed.get_backend() if ctx.is_distributed else None,
        "world_size": ctx.world_size,
    }
    if device.type == "cuda" and torch.distributed.is_nccl_available():
        row["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
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


def pnp_run(
    ctx,
    sizes: Sizes,
    denoiser_wrapper: Callable | None = None,
    engine: str = "distinv",
    problem_name: str = "highres_blur",
    params: dict | None = None,
    step: float | None = 1.0,
) -> dict:
    """One PnP (HQS) of ``problem_name`` with the problem's shipped denoiser; returns its row (seconds per iteration
    by component, PSNR)."""
    from distinv.bench.engines import build_engine
    from distinv.bench.problems import build
    from distinv.bench.spec import TilingSpec
    from distinv.bench.worker import model_from_source
    from distinv.pnp import pnp, sigma_schedule

    params = params or {"size": sizes.pnp_size, "num_operators": sizes.pnp_operators}
    problem = build(problem_name, **params)
    truth = problem.ground_truth
    model = model_from_source("auto", problem_name, truth.shape[1], truth.ndim == 5).to(ctx.device).eval()
    built = build_engine(engine, ctx, problem, model, TilingSpec())  # distinv plans its windows, default overlap
    denoiser = denoiser_wrapper(built.denoiser) if denoiser_wrapper else built.denoiser
    with torch.no_grad():
        y = built.measure(problem)
        x0 = built.initial(problem, y)
        _, records = pnp(
            "hqs", built.physics, denoiser, y, x0, sigma_schedule(0.1, 0.02, sizes.pnp_iterations),
            iterations=sizes.pnp_iterations, step=step, cg_iterations=5, ctx=ctx,
            ground_truth=built.ground_truth(problem),
        )  # fmt: skip
    timed_records = records[1:] or records
    return {
        "problem": problem_name,
        "engine": engine,
        "size": params["size"],
        "operators": params.get("num_operators"),
        "iterations": len(records),
        **{
            f"{k}_s": statistics.median(getattr(r, f"{k}_s") for r in timed_records)
            for k in ("total", "data", "denoiser")
        },
        "psnr": records[-1].psnr,
        "data_solver": records[-1].data_solver,
    }


def pnp_part(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    rows = [
        pnp_run(ctx, sizes, engine=engine)
        for engine in ("none", "distinv", "distinv-sharded")
        if box.open(f"pnp highres_blur {engine}")
    ]
    if box.open("pnp tomography_3d distinv-sharded"):
        volume = {"size": sizes.volume_size, "num_angles": sizes.volume_angles, "num_operators": 4}
        rows.append(pnp_run(ctx, sizes, engine="distinv-sharded", problem_name="tomography_3d", params=volume))
    return rows


def radio_part(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    if not box.open("radio distinv"):
        return []
    params = {"size": sizes.radio_size}
    row = pnp_run(ctx, sizes, engine="distinv", problem_name="radio", params=params, step=None)
    from distinv.bench.problems import build

    return [{**row, "nufft_backend": build("radio", **params).shared.get("backend")}]


def training_part(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    """Steps of an unrolled PGD through distinv: forward, backward and optimiser seconds (the first step left out of
    the median), and the loss."""
    from distinv.bench.problems import build
    from distinv.bench.spec import TilingSpec, TrainingSpec
    from distinv.bench.training import build_trainee
    from distinv.bench.worker import model_from_source

    if not box.open("training distinv"):
        return []
    problem = build("highres_blur", size=sizes.training_size, num_operators=4)
    network = model_from_source("auto", "highres_blur", 3, False).to(ctx.device)
    trainee = build_trainee("distinv", ctx, problem, network, TrainingSpec(iterations=2), TilingSpec())
    optimiser = torch.optim.Adam(trainee.model.parameters(), lr=1e-4)
    x = problem.ground_truth.to(ctx.device)
    steps = []
    for step in range(sizes.training_steps):
        y = trainee.measure(x, step)
        marks = [time.perf_counter()]
        loss = torch.nn.functional.mse_loss(trainee.model(y, trainee.physics), x)
        _synchronise(ctx.device)
        marks.append(time.perf_counter())
        optimiser.zero_grad()
        loss.backward()
        _synchronise(ctx.device)
        marks.append(time.perf_counter())
        optimiser.step()
        _synchronise(ctx.device)
        marks.append(time.perf_counter())
        steps.append((float(loss), *(b - a for a, b in zip(marks, marks[1:], strict=False))))
    timed_steps = steps[1:] or steps
    forward, backward, optimiser_s = (statistics.median(s[i] for s in timed_steps) for i in (1, 2, 3))
    return [{
        "problem": "highres_blur", "size": sizes.training_size, "steps": len(steps), "forward_s": forward,
        "backward_s": backward, "optimizer_s": optimiser_s, "first_loss": steps[0][0], "last_loss": steps[-1][0],
    }]  # fmt: skip


def tf32_part(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    """Untiled and tiled DRUNet with TF32 off, then on (convolutions and matmuls), restored after."""
    from distinv import distribute

    model = network("drunet-small", ctx.device, sizes)
    x = colour_image(sizes.tf32_size, ctx.device)
    tiled = distribute(model, ctx, type_object="denoiser")
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    rows = []
    try:
        for tf32 in (False, True):
            if not box.open(f"tf32 {tf32}"):
                continue
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            with torch.no_grad():
                whole, ours = model(x, SIGMA), tiled(x, SIGMA)
                untiled_row = timed(lambda: model(x, SIGMA), ctx.device, sizes.repetitions)
                tiled_row = timed(lambda: tiled(x, SIGMA), ctx.device, sizes.repetitions)
            rows.append({
                "tf32": tf32, "size": sizes.tf32_size, "untiled_s": untiled_row["seconds"],
                "tiled_s": tiled_row["seconds"], "tiled_vs_untiled": relative(ours, whole),
            })  # fmt: skip
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    return rows


def parallel_beam_part(ctx, sizes: Sizes, box: TimeBox) -> list[dict]:
    """``ParallelBeam``'s pair at each size: median seconds of A and of A^T, and the dot test's error."""
    from distinv.operators.parallel_beam import ParallelBeam

    rows = []
    angles = torch.linspace(0, 180, sizes.beam_angles + 1)[:-1]
    for size in sizes.beam_sizes:
        if not box.open(f"ParallelBeam {size}"):
            continue
        beam = ParallelBeam(angles, size, device=ctx.device)
        generator = torch.Generator().manual_seed(size)
        x = torch.rand(1, 1, size, size, generator=generator).to(ctx.device)
        y = torch.rand(1, 1, beam.detectors, len(angles), generator=generator).to(ctx.device)
        with torch.no_grad():
            forward = timed(lambda beam=beam, x=x: beam.A(x), ctx.device, sizes.repetitions)
            adjoint = timed(lambda beam=beam, y=y: beam.A_adjoint(y), ctx.device, sizes.repetitions)
            lhs, rhs = (beam.A(x) * y).double().sum(), (x * beam.A_adjoint(y)).double().sum()
        rows.append({
            "size": size, "angles": len(angles), "A_s": forward["seconds"], "A_adjoint_s": adjoint["seconds"],
            "A_peak_mib": forward["peak_mib"], "dot_test": float((lhs - rhs).abs() / rhs.abs()),
        })  # fmt: skip
    return rows


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


PARTS = (
    "environment", "correctness", "tiling", "tf32", "insights", "pnp", "radio", "training", "parallel_beam", "knobs",
)  # fmt: skip


def run_part(name: str, ctx, sizes: Sizes, left_s: float = math.inf) -> dict:
    """One part within its time box (its budget, or ``left_s`` of the whole check when less):
    ``{"rows", "skipped", "seconds", "error"}``."""
    box = TimeBox(min(sizes.budgets_s[name], left_s))
    start = time.monotonic()
    functions = {
        "environment": environment,
        "correctness": correctness,
        "tiling": tiling,
        "tf32": tf32_part,
        "insights": insights,
        "pnp": pnp_part,
        "radio": radio_part,
        "training": training_part,
        "parallel_beam": parallel_beam_part,
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
    parser.add_argument("--limit-s", type=float, default=480.0, help="the whole check's time (default 480 s)")
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
    deadline = time.monotonic() + args.limit_s
    # the launcher's group when run under torchrun (NCCL on a GPU), else one process without a group
    threads = None if args.device == "cuda" else 1
    with DistributedContext(device_mode=device_mode, num_threads=threads, time_collectives=True) as ctx:
        for name in args.parts:
            print(f"[{name}] ...", flush=True)
            results["parts"][name] = run_part(name, ctx, sizes, max(0.0, deadline - time.monotonic()))
            _write_atomically(out / "gpu_check.json", json.dumps(results, indent=1, default=str))
    table = markdown(results)
    _write_atomically(out / "gpu_check.md", table)
    print(table)
    return results


if __name__ == "__main__":
    main()
