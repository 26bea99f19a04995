"""Command line: ``distinv plan`` (tiles over ranks), ``distinv preview`` (PNGs of a benchmark problem)."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from typing import Any

from .tiling import TilePlan


def plan_command(args: argparse.Namespace) -> int:
    """Print the tile plan for a signal ``C x spatial...`` over ``--world`` ranks."""
    channels, *spatial = args.shape
    if not spatial:
        raise SystemExit("--shape needs the channel count and at least one spatial size, e.g. --shape 3 4096 4096")
    try:
        plan = TilePlan.build(spatial, args.world, args.patch, args.overlap, args.multiple, args.max_window_pixels)
    except ValueError as exc:
        raise SystemExit(f"distinv plan: {exc}") from None
    summary = plan.summary(batch=args.batch, channels=channels, itemsize=args.bytes_per_value)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{len(plan.windows)} windows (grid {'x'.join(map(str, plan.grid))}) over {args.world} ranks; "
        f"halo {plan.halo}, size multiple {plan.multiple}"
    )
    print(f"{'rank':>4} {'windows':>7} {'pixels processed':>17} {'pixels owned':>13} {'overhead':>8}")
    for rank in range(args.world):
        processed = summary["pixels_processed_per_rank"][rank]
        owned = summary["pixels_owned_per_rank"][rank]
        print(
            f"{rank:>4} {summary['windows_per_rank'][rank]:>7} {processed:>17,} {owned:>13,} "
            f"{processed / owned if owned else 0:>8.3f}"
        )
    print(f"pixels processed / image pixels: {summary['overhead']:.3f}")
    print(f"predicted load imbalance (max / mean processed): {summary['predicted_imbalance']:.3f}")
    print(f"bytes each rank receives in the output all-gather: {summary['bytes_received_per_rank']:,}")
    return 0


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
    """Write ground truth, measurement and initial reconstruction PNGs of a benchmark problem."""
    import warnings

    from .bench.preview import describe, write_previews
    from .bench.problems import build

    params = dict(args.param)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distinv", description="Distributed inverse problems with deepinv.")
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="print how a signal is tiled over ranks")
    plan.add_argument("--shape", type=int, nargs="+", required=True, help="C then spatial sizes, e.g. 3 4096 4096")
    plan.add_argument("--world", type=int, required=True, help="number of ranks")
    plan.add_argument("--patch", type=int, default=None, help="owned size per window (default: automatic)")
    plan.add_argument("--overlap", type=int, default=32, help="halo where windows meet (pixels)")
    plan.add_argument("--multiple", type=int, default=8, help="the network's size multiple (8 for DRUNet)")
    plan.add_argument("--max-window-pixels", type=int, default=None, help="largest window memory allows")
    plan.add_argument("--batch", type=int, default=1, help="images per call (for the bytes gathered)")
    plan.add_argument("--bytes-per-value", type=int, default=4, help="4 for float32")
    plan.add_argument("--json", action="store_true", help="print the summary as JSON")
    plan.set_defaults(run=plan_command)
    preview = commands.add_parser("preview", help="write PNG previews of a benchmark problem")
    preview.add_argument("problem", help="highres_blur, tomography_2d, tomography_3d or radio")
    preview.add_argument("--size", type=int, nargs="+", default=None, help="pixels per side, or H W")
    preview.add_argument("-o", "--output", required=True, help="folder for the PNGs")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument(
        "--param", type=_parameter, action="append", default=[], help="another problem parameter, key=value"
    )
    preview.set_defaults(run=preview_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
