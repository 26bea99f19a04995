"""Command line: ``distinv run`` (a benchmark config), ``distinv results`` (its summary), ``distinv report`` (its
HTML dashboard), ``distinv insights`` (shape vs memory, batch vs throughput), ``distinv plan`` (tiles over ranks,
or the automatic plan), ``distinv preview`` (PNGs of a benchmark problem),
``distinv train-denoiser``."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from distinv.tiling.geometry import TilePlan
from distinv.tiling.planner import DEFAULT_OVERLAP


def plan_command(args: argparse.Namespace) -> int:
    """Print the tile plan for a signal ``C x spatial...`` over ``--world`` ranks; with ``--patch auto`` or
    ``--batch-size auto``, the plan chosen from ``--denoiser``'s measured cost, and its predictions. With
    ``--problem``, the scaling model's predicted iteration instead (:func:`model_command`)."""
    if args.problem is not None:
        return model_command(args)
    if args.shape is None or len(args.world) != 1:
        raise SystemExit("distinv plan: give --shape C H W and one --world (or --problem for the scaling model).")
    args.world = args.world[0]
    channels, *spatial = args.shape
    if not spatial:
        raise SystemExit("--shape needs the channel count and at least one spatial size, e.g. --shape 3 4096 4096")
    if args.parallel == "domain":
        return _domain_plan(args, spatial)
    patch = None if args.patch is None or args.patch == "auto" else _positive_int("--patch", args.patch)
    auto = None
    try:
        if args.patch == "auto" or args.batch_size == "auto":
            auto = _auto_plan(args, channels, spatial, patch)
            plan = auto.plan
        else:
            plan = TilePlan.build(spatial, args.world, patch, args.overlap, args.multiple, args.max_window_pixels)
    except ValueError as exc:
        raise SystemExit(f"distinv plan: {exc}") from None
    summary = plan.summary(batch=args.batch, channels=channels, itemsize=args.bytes_per_value)
    if auto is not None:
        summary |= {
            "batch_size": auto.batch,
            "predicted_seconds_per_rank": list(auto.seconds_per_rank),
            "predicted_bytes_per_rank": list(auto.bytes_per_rank),
            "memory_budget_bytes": auto.budget_bytes,
        }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{len(plan.windows)} windows (grid {'x'.join(map(str, plan.grid))}) over {args.world} ranks; "
        f"overlap {plan.overlap}, size multiple {plan.size_multiple}"
    )
    if auto is not None:
        print(f"automatic plan for {args.denoiser} on {args.device}: {auto.describe()}")
    extra = f" {'predicted s':>11} {'predicted MiB':>13}" if auto is not None else ""
    print(f"{'rank':>4} {'windows':>7} {'pixels processed':>17} {'pixels owned':>13} {'overhead':>8}{extra}")
    for rank in range(args.world):
        processed = summary["pixels_processed_per_rank"][rank]
        owned = summary["pixels_owned_per_rank"][rank]
        line = (
            f"{rank:>4} {summary['windows_per_rank'][rank]:>7} {processed:>17,} {owned:>13,} "
            f"{processed / owned if owned else 0:>8.3f}"
        )
        if auto is not None:
            line += f" {auto.seconds_per_rank[rank]:>11.3f} {auto.bytes_per_rank[rank] / 2**20:>13.0f}"
        print(line)
    print(f"pixels processed / image pixels: {summary['overhead']:.3f}")
    print(f"predicted load imbalance (max / mean processed): {summary['predicted_imbalance']:.3f}")
    print(f"bytes each rank receives in the output all-gather: {summary['bytes_received_per_rank']:,}")
    return 0


def _domain_plan(args: argparse.Namespace, spatial: list[int]) -> int:
    """``distinv plan --shape ... --parallel domain``: the domain-parallel denoiser's bands and the pixels each
    rank computes against those it owns (:func:`distinv.domain.denoiser.band_work`)."""
    from distinv.domain.denoiser import band_work

    try:
        work = band_work(spatial, args.world, args.multiple)
    except ValueError as exc:
        raise SystemExit(f"distinv plan: {exc}") from None
    processed, owned = work["pixels_processed_per_rank"], work["pixels_owned_per_rank"]
    if args.json:
        print(json.dumps(work | {"overhead": sum(processed) / sum(owned)}))
        return 0
    print(f"{args.world} bands of rows starting at multiples of {args.multiple}; no halo recomputed")
    print(f"{'rank':>4} {'rows':>11} {'pixels processed':>17} {'pixels owned':>13} {'overhead':>8}")
    bounds = work["bounds"]
    for rank in range(args.world):
        rows = f"{bounds[rank]}:{bounds[rank + 1]}"
        print(f"{rank:>4} {rows:>11} {processed[rank]:>17,} {owned[rank]:>13,} {processed[rank] / owned[rank]:>8.3f}")
    print(f"pixels processed / image pixels: {sum(processed) / sum(owned):.3f}")
    print(f"largest processed / owned of a rank: {max(p / o for p, o in zip(processed, owned, strict=True)):.3f}")
    print(f"predicted load imbalance (max / mean processed): {max(processed) / (sum(processed) / args.world):.3f}")
    return 0


def model_command(args: argparse.Namespace) -> int:
    """The scaling model (:mod:`distinv.bench.scaling_model`) for ``--problem`` at ``--size``: per world size and
    engine, the predicted seconds per PGD iteration and bytes per rank, from costs measured here (one rank's share)
    or the published V100 figures."""
    from distinv.bench.costs import measure_costs, published_v100, workload
    from distinv.bench.scaling_model import format_predictions

    size = args.size[0] if args.size and len(args.size) == 1 else tuple(args.size) if args.size else None
    params = dict(args.param)
    check_problem(args.parser, args.problem, args.size, params)
    try:
        if args.costs == "published-v100":
            costs, work = published_v100(workload(args.problem, size, params, args.denoiser_model, "cuda")[0])
        else:
            costs, work = measure_costs(
                args.problem, size, params, args.denoiser_model, args.device, args.threads, args.overlap, args.cores
            )
        table = format_predictions(costs, work, args.world, args.engine)
    except ValueError as exc:
        raise SystemExit(f"distinv plan: {exc}") from None
    print(table)
    return 0


def check_problem(
    parser: argparse.ArgumentParser, problem: str, size: Sequence[int] | None, params: dict[str, Any]
) -> None:
    """Refuse, in ``parser``'s words (``parser.error``: one line, exit code 2), a ``--problem`` that is not a
    benchmark problem, a ``--size`` it does not take (how many values, how large) or a ``--param`` it does not
    have or refuses, before anything is built."""
    from distinv.bench.problems import BUILDERS, check

    if problem not in BUILDERS:
        parser.error(f"argument --problem: problem={problem!r}: choose one of {sorted(BUILDERS)}.")
    check_size_count(parser, problem, size)
    sized = {} if size is None else {"size": size[0] if len(size) == 1 else tuple(size)}
    if sized:
        try:
            check(problem, **sized)
        except (ValueError, TypeError) as exc:
            parser.error(f"argument --size: {exc}")
    try:
        check(problem, **sized, **params)
    except (ValueError, TypeError) as exc:
        parser.error(f"argument --param: {exc}")


def check_size_count(parser: argparse.ArgumentParser, problem: str, size: Sequence[int] | None) -> None:
    """Refuse (``parser.error``) more ``--size`` values than ``problem`` takes: one, or two (height width) for a
    problem whose builder takes a pair. Unknown problems are left to the builder's own error."""
    from distinv.bench.problems import BUILDERS

    if size is None or problem not in BUILDERS:
        return
    pair = "tuple" in str(inspect.signature(BUILDERS[problem]).parameters["size"].annotation)
    if len(size) > (2 if pair else 1):
        also, example = (" or two (height width)", " or --size 512 768") if pair else ("", "")
        parser.error(
            f"argument --size: {problem} takes one size (pixels per side){also}, e.g. --size 512{example}; "
            f"got {len(size)}: {' '.join(map(str, size))}."
        )


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``minimum``, else the argument's error (exit code 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text}: give a whole number >= {minimum}.")
        return value

    return parse


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SystemExit(f"{name}={text!r}: give a positive number of pixels, or 'auto'.")
    return value


def _auto_plan(args: argparse.Namespace, channels: int, spatial: list[int], patch: int | None):
    """Measure ``--denoiser`` here (one process, ``--threads`` threads: one rank's share) and choose the plan
    for ``--world`` such ranks, with the planner ``distribute()`` uses."""
    import torch

    from distinv.denoisers import load_denoiser
    from distinv.runtime.memory import default_memory_budget, parse_bytes
    from distinv.tiling.planner import TilingKnobs, measured_profile, plan_from_profile, size_multiple_of

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    network = load_denoiser(args.denoiser, device=device, channels=channels)
    budget = parse_bytes(args.memory_budget) if args.memory_budget else default_memory_budget(device)
    img_size = (args.batch, channels, *spatial)
    dims = tuple(range(2, 2 + len(spatial)))
    knobs = TilingKnobs(
        patch_size="auto" if args.patch == "auto" else patch,
        overlap=args.overlap,
        size_multiple=max(args.multiple, size_multiple_of(network)),
        max_batch_size=args.batch_size if args.batch_size in (None, "auto") else int(args.batch_size),
        max_window_pixels=args.max_window_pixels,
        memory_budget=budget,
    )
    profile, _ = measured_profile(
        network, lambda x: network(x, 0.05), img_size, dims, knobs.size_multiple, device, torch.float32, budget
    )
    return plan_from_profile(profile, img_size, dims, args.world, knobs, budget, device, args.bytes_per_value).auto


def _parameter(text: str) -> tuple[str, Any]:
    """``key=value``; the value read as a Python literal when it is one (``3``, ``0.01``, ``(64, 48)``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: write parameters as key=value, e.g. num_operators=8")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def preview_command(args: argparse.Namespace) -> int:
    """Write ground truth, measurement and initial reconstruction PNGs of a benchmark problem (for ``radio`` with
    ``--param ms=PATH``, also the dirty image and PSF as PNG and FITS)."""
    import warnings

    from distinv.bench.preview import describe, write_previews
    from distinv.bench.problems import build

    params = dict(args.param)
    check_size_count(args.parser, args.problem, args.size)
    if args.size is not None:
        params["size"] = args.size[0] if len(args.size) == 1 else tuple(args.size)
    try:
        problem = build(args.problem, seed=args.seed, **params)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"distinv preview: {exc}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deepinv's warnings about optional packages
        paths, psnr = write_previews(problem, args.output)
    print(describe(problem, psnr))
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def train_denoiser_command(args: argparse.Namespace) -> int:
    """Train (or resume) a denoiser, export its float16 weights and record it in a manifest."""
    import shlex
    from pathlib import Path

    import torch

    from distinv.denoisers.training import TrainConfig, export_weights, manifest_entry, train, update_manifest

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        arch_kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"distinv train-denoiser: --arch-kwargs is not JSON ({exc}): e.g. '{{\"nb\": 2}}'") from None
    config = TrainConfig(
        arch=args.arch,
        arch_kwargs=arch_kwargs,
        channels=args.channels,
        steps=args.steps,
        batch=args.batch,
        patch=args.patch,
        lr=args.lr,
        sigma_max=args.sigma_max / 255,
        image_dir=args.image_dir,
        pool=args.pool,
        source_size=args.source_size,
        min_radius=args.min_radius,
        seed=args.seed,
        residual=not args.no_residual,
        loss=args.loss,
        init=args.init,
        synthetic=args.synthetic,
    )
    output = Path(args.output)
    checkpoint = Path(args.checkpoint) if args.checkpoint else output.with_suffix(".checkpoint.pt")
    try:
        model, history = train(config, checkpoint, device=args.device, log=lambda line: print(line, flush=True))
    except ValueError as exc:
        raise SystemExit(f"distinv train-denoiser: {exc}") from None
    size = export_weights(model, output)
    print(f"wrote {output} ({size / 1e6:.1f} MB)")
    if args.name:
        command = "distinv train-denoiser " + shlex.join(args.argv)
        manifest = Path(args.manifest) if args.manifest else output.parent / "manifest.json"
        update_manifest(manifest, args.name, manifest_entry(config, history, command, output))
        print(f"recorded {args.name!r} in {manifest}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Validate the config, then run (or plan, or submit) its grid of runs. Returns the exit status (130 after
    Ctrl-C, which says how to resume); raises ``SystemExit`` with one line for a bad config or a results folder
    this runner cannot use."""
    import shlex

    config = None
    try:
        from distinv.bench.config import ConfigError, load_config
        from distinv.bench.runner import OutputFolderError, run_config

        if args.wait and not args.slurm:
            raise SystemExit("distinv run: --wait waits for SLURM jobs: give it with --slurm (local runs always wait).")
        overrides = {"output": args.output} if args.output else {}
        try:
            config = load_config(args.config, slurm=args.slurm, overrides=overrides)
        except ConfigError as exc:
            raise SystemExit(f"distinv run: {args.config}: {exc}") from None
        try:
            return run_config(
                config,
                only=args.only,
                redo=args.redo,
                dry_run=args.dry_run,
                slurm=args.slurm,
                srun=args.srun,
                wait=args.wait,
            )
        except OutputFolderError as exc:
            raise SystemExit(f"distinv run: {exc}") from None
    except KeyboardInterrupt:
        again = ["distinv", "run", *[a for a in args.argv if a != "--redo"]]  # --redo would start over
        where = f" in {config.output}" if config is not None else ""
        print(
            f"distinv run: interrupted; the runs that finished are kept{where}: run `{shlex.join(again)}` to resume.",
            file=sys.stderr,
        )
        return 130


def results_command(args: argparse.Namespace) -> int:
    """Print the per-run summary of a results folder."""
    from distinv.bench.results import format_summary, read_rows, summarise, table_path
    from distinv.bench.training_report import format_training_summary, summarise_training

    if not table_path(args.directory).exists():
        raise SystemExit(f"distinv results: no {table_path(args.directory)}; run `distinv run CONFIG` first.")
    pnp = summarise(args.directory)
    trained = summarise_training(read_rows(args.directory))
    if pnp or not trained:
        print(format_summary(pnp))
    if trained:
        print(format_training_summary(trained))
    return 0


def report_command(args: argparse.Namespace) -> int:
    """Write the HTML dashboard of a results folder (and, with ``--static``, every figure as an image)."""
    from distinv.bench.insights import TABLE
    from distinv.bench.report import export_static, write_report
    from distinv.bench.results import table_path

    if not (table_path(args.directory).exists() or table_path(args.directory, TABLE).exists()):
        raise SystemExit(
            f"distinv report: no {table_path(args.directory)}; run `distinv run CONFIG` (or `distinv insights "
            "STUDY`) first."
        )
    print(f"wrote {write_report(args.directory, args.output)}")
    if args.static:
        try:
            paths = export_static(args.directory, args.static, args.format)
        except RuntimeError as exc:
            raise SystemExit(f"distinv report --static: {exc}") from exc
        print(f"wrote {len(paths)} figures to {args.static}")
    return 0


def insights_command(args: argparse.Namespace) -> int:
    """Run an insight study from its config, then print its observations and write the report."""
    from distinv.bench.config import ConfigError
    from distinv.bench.insights import DEFAULT_CONFIGS, TABLE, load_insight_config, run_study
    from distinv.bench.insights_report import FIGURES
    from distinv.bench.report import write_report
    from distinv.bench.results import read_rows

    try:
        config = load_insight_config(args.config or DEFAULT_CONFIGS[args.study], args.study)
    except ConfigError as exc:
        raise SystemExit(f"distinv insights {args.study}: {exc}") from None
    if args.output:
        config.output = args.output
    run_study(config, redo=args.redo)
    for note in FIGURES[args.study][1](read_rows(config.output, TABLE)):
        print(f"  {note}")
    print(f"report: {write_report(config.output)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distinv", description="Distributed inverse problems with deepinv.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a benchmark config (configs/quick.yml) and print its summary")
    run.add_argument("config", help="a YAML config, e.g. configs/quick.yml")
    run.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    run.add_argument("--only", nargs="+", default=None, help="runs whose key contains all these words")
    run.add_argument(
        "--redo",
        action="store_true",
        help="run again what the table has; a rerun that finishes replaces its rows (default: resume)",
    )
    run.add_argument("--slurm", action="store_true", help="submit each run as a SLURM job (submitit)")
    run.add_argument("--srun", action="store_true", help="run each as a job step of the current SLURM allocation")
    run.add_argument("--wait", action="store_true", help="with --slurm: wait for the jobs, then print the summary")
    run.add_argument("-o", "--output", default=None, help="results folder (default: the config's output)")
    run.set_defaults(run=run_command)
    results = commands.add_parser("results", help="summarise a results folder")
    results.add_argument("directory", help="the folder holding results.parquet")
    results.set_defaults(run=results_command)
    report = commands.add_parser("report", help="write a results folder's HTML dashboard")
    report.add_argument("directory", help="the folder holding results.parquet")
    report.add_argument("-o", "--output", default=None, help="HTML file (default: DIRECTORY/report.html)")
    report.add_argument("--static", default=None, help="also export every figure to this folder (needs kaleido)")
    report.add_argument("--format", choices=("png", "svg", "pdf"), default="png", help="static figures' format")
    report.set_defaults(run=report_command)
    insights = commands.add_parser("insights", help="a GPU insight study: shape vs memory, batch vs throughput")
    insights.add_argument("study", choices=("shape-memory", "batch-throughput"))
    insights.add_argument("--config", default=None, help="YAML (default: configs/insights_<study>.yml)")
    insights.add_argument("-o", "--output", default=None, help="results folder (default: the config's output)")
    insights.add_argument("--redo", action="store_true", help="measure again what the table already has")
    insights.set_defaults(run=insights_command)
    plan = commands.add_parser("plan", help="print how a signal is tiled over ranks")
    plan.add_argument(
        "--shape", type=whole_number(1), nargs="+", default=None, help="C then spatial sizes, e.g. 3 4096 4096"
    )
    plan.add_argument(
        "--world", type=whole_number(1), nargs="+", required=True, help="number of ranks (several with --problem)"
    )
    plan.add_argument("--problem", default=None, help="the scaling model for a benchmark problem, e.g. highres_blur")
    plan.add_argument(
        "--size", type=whole_number(1), nargs="+", default=None, help="with --problem: pixels per side, or H W"
    )
    plan.add_argument(
        "--param", type=_parameter, action="append", default=[], help="with --problem: a problem parameter, key=value"
    )
    plan.add_argument(
        "--engine",
        nargs="+",
        default=["distinv", "distinv-sharded", "distinv-sharded/domain"],
        choices=["distinv", "distinv-sharded", "distinv-sharded/domain"],
    )
    plan.add_argument(
        "--costs", default="measured", choices=["measured", "published-v100"], help="with --problem: whose costs"
    )
    plan.add_argument(
        "--cores", type=whole_number(1), default=None, help="with --problem: cores the ranks share (default: one each)"
    )
    plan.add_argument("--denoiser-model", default="auto", help="with --problem: the benchmark's denoiser.model")
    plan.add_argument(
        "--patch", default=None, help="owned size per window; default: fewest windows; 'auto': fastest measured"
    )
    plan.add_argument("--batch-size", default=None, help="windows per network call, or 'auto' (with --denoiser)")
    plan.add_argument(
        "--denoiser",
        default="shipped:drunet-small-colour",
        help="for 'auto': shipped:NAME, a weights file, or untrained:ARCH (e.g. untrained:DRUNet)",
    )
    plan.add_argument("--device", default="cpu", help="for 'auto': where to measure (cpu, cuda)")
    plan.add_argument("--threads", type=whole_number(1), default=1, help="for 'auto' on CPU: threads per rank")
    plan.add_argument("--memory-budget", default=None, help="for 'auto': per rank, e.g. 2GB (default: half free)")
    plan.add_argument(
        "--overlap", type=whole_number(0), default=DEFAULT_OVERLAP, help="halo where windows meet (pixels)"
    )
    plan.add_argument("--multiple", type=whole_number(1), default=8, help="the network's size multiple (8 for DRUNet)")
    plan.add_argument(
        "--parallel",
        default="windows",
        choices=["windows", "domain"],
        help="with --shape: the tiled denoiser's windows, or the domain-parallel denoiser's bands",
    )
    plan.add_argument("--max-window-pixels", type=whole_number(1), default=None, help="largest window memory allows")
    plan.add_argument("--batch", type=whole_number(1), default=1, help="images per call (for the bytes gathered)")
    plan.add_argument("--bytes-per-value", type=whole_number(1), default=4, help="4 for float32")
    plan.add_argument("--json", action="store_true", help="print the summary as JSON")
    plan.set_defaults(run=plan_command, parser=plan)
    preview = commands.add_parser("preview", help="write PNG previews of a benchmark problem")
    preview.add_argument("problem", help="highres_blur, tomography_2d, tomography_3d or radio")
    preview.add_argument("--size", type=whole_number(1), nargs="+", default=None, help="pixels per side, or H W")
    preview.add_argument(
        "-o", "--output", required=True, help="folder for the PNGs (and a Measurement Set's dirty.fits and psf.fits)"
    )
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument(
        "--param", type=_parameter, action="append", default=[], help="another problem parameter, key=value"
    )
    preview.set_defaults(run=preview_command, parser=preview)
    train = commands.add_parser("train-denoiser", help="train a Gaussian denoiser on synthetic images")
    train.add_argument("--arch", default="DRUNet", help="a deepinv denoiser class (DRUNet, DnCNN, UNet, ...)")
    train.add_argument("--arch-kwargs", default='{"nc": [16, 32, 64, 128], "nb": 2}', help="JSON constructor args")
    train.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 grey, 3 colour")
    train.add_argument("--steps", type=int, default=10_000)
    train.add_argument("--batch", type=int, default=8)
    train.add_argument("--patch", type=int, default=64, help="crop size in pixels")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam's first learning rate (decays to 1e-5)")
    train.add_argument("--sigma-max", type=float, default=60.0, help="largest noise level, in /255 units")
    train.add_argument("--pool", type=int, default=48, help="synthetic images kept at a time")
    train.add_argument("--source-size", type=int, default=256, help="side of the synthetic images (pixels)")
    train.add_argument(
        "--min-radius", type=float, default=2.0, help="smallest dead leaf's radius in pixels (smaller look like noise)"
    )
    train.add_argument(
        "--loss",
        choices=("l1", "l1_per_sigma"),
        default="l1",
        help="l1_per_sigma divides each crop's L1 error by sigma + 1/255: every noise level counts alike",
    )
    train.add_argument("--init", default=None, help="fine-tune from these weights: shipped:NAME or a .pt file")
    train.add_argument(
        "--synthetic",
        choices=("dead-leaves", "radio-sky"),
        default="dead-leaves",
        help="the synthetic training images: dead leaves (grey or colour) or radio skies (grey)",
    )
    train.add_argument("--image-dir", default=None, help="a folder of your images to add to the synthetic ones")
    train.add_argument("-o", "--output", required=True, help="the exported weights (.pt, float16)")
    train.add_argument("--checkpoint", default=None, help="resumable state (default: OUTPUT.checkpoint.pt)")
    train.add_argument("--name", default=None, help="record the model under this name in the manifest")
    train.add_argument("--manifest", default=None, help="manifest file (default: manifest.json beside OUTPUT)")
    train.add_argument("--device", default="cpu")
    train.add_argument("--threads", type=int, default=None, help="CPU threads")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--no-residual", action="store_true", help="the network outputs the image (default: it predicts the noise)"
    )
    train.set_defaults(run=train_denoiser_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
