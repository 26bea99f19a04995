"""Command line: ``distinv plan`` (more subcommands come with the benchmark runner)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
