"""Reading a Measurement Set in parts: the ranks plan the selection together (the subtables, and each rank the five
scalar columns of its stripe of the rows, all-gathered: :func:`~distinv.bench.radio.measurement_set.
open_measurement_set` with the ranks' context) and each reads only its block of integrations
(:func:`~distinv.bench.radio.measurement_set.read_block`: ``UVW``, ``DATA``, ``FLAG``, ``FLAG_ROW``, ``WEIGHT`` of
its rows and channels), against one process reading every row the same way.

The set (written once by ``benchmarks/synthetic_observation.py --rows``, default 1e6 rows of 8 channels, two
correlations) is read at 1 and at ``--world`` ranks (gloo ranks of one thread, launched with
``torch.distributed.run``, started together after a barrier), alternately, ``--reps`` times each after a warm-up
read. Per rank: the rows and bytes its block holds, the plan's and the block's seconds (median), and its peak
memory above its level before the read (peak resident set). With ``--cold`` (root only), the page cache is dropped
before each read, so the files come from the disk; otherwise they are in memory and the figure is casacore's
decoding and copying.

    python benchmarks/measurement_set_reading.py                       # writes the set first (about a minute)
    python benchmarks/measurement_set_reading.py --cold --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distinv.bench.launch import torchrun_command
from distinv.runtime.memory import PeakMemory


def read_rank(args) -> None:
    """One rank: plan, read its block, report (rank 0 writes every rank's row to ``--worker-out``)."""
    import torch.distributed as dist

    from distinv import DistributedContext
    from distinv.bench.problems.radio import block_bounds
    from distinv.bench.radio.measurement_set import block_rows, open_measurement_set, read_block

    with DistributedContext(seed=0, device_mode="cpu", num_threads=1) as ctx:
        dist.barrier()
        started = time.perf_counter()
        with PeakMemory("cpu") as memory:
            ms = open_measurement_set(args.ms, ctx=ctx)
            planned = time.perf_counter()
            bounds = block_bounds(len(ms.time_steps), ctx.world_size)
            rows, channels = block_rows(ms, "time", ctx.rank, bounds)
            block = read_block(ms, rows, channels)
            finished = time.perf_counter()
        moved = sum(t.numel() * t.element_size() for t in (block.uvw_m, block.visibilities, block.weights))
        mine = {
            "rank": ctx.rank,
            "rows": int(len(rows)),
            "visibilities": int(block.visibilities.numel()),
            "block_bytes": int(moved),
            "plan_s": planned - started,
            "read_s": finished - planned,
            "total_s": finished - started,
            "peak_bytes": memory.peak_bytes,
        }
        every = [None] * ctx.world_size
        dist.all_gather_object(every, mine)
        if ctx.rank == 0:
            Path(args.worker_out).write_text(json.dumps(every))


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3")


def run(ms: Path, world: int, cold: bool, tmp: Path) -> list[dict]:
    if cold:
        drop_page_cache()
    out = tmp / f"w{world}.json"
    command = torchrun_command(__file__, world, ["read-rank", f"--ms={ms}", f"--worker-out={out}"])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "read-rank"])
    parser.add_argument("--ms", default="results/observations/reading/observation.ms")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the set written if it is missing")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each read (root)")
    parser.add_argument("--worker-out")
    parser.add_argument("--output", default="results/benchmarks/measurement_set_reading.json")
    args = parser.parse_args()
    if args.mode == "read-rank":
        return read_rank(args)
    ms = Path(args.ms)
    if not ms.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from synthetic_observation import write_points_observation

        started = time.perf_counter()
        _, facts = write_points_observation(ms.parent, args.rows, args.channels, 0)
        print(f"wrote {ms}: {facts} in {time.perf_counter() - started:.0f} s", flush=True)
    size = sum(p.stat().st_size for p in ms.rglob("*") if p.is_file())
    measured: dict[int, list[list[dict]]] = {1: [], args.world: []}
    with tempfile.TemporaryDirectory() as tmp:
        for world in measured:  # warm-up: the page cache, the imports
            run(ms, world, False, Path(tmp))
        for _ in range(args.reps):
            for world in measured:
                measured[world].append(run(ms, world, args.cold, Path(tmp)))
    summary = {}
    for world, reps in measured.items():
        summary[world] = [{k: statistics.median(rep[r][k] for rep in reps) for k in reps[0][r]} for r in range(world)]
    single = summary[1][0]
    print(f"{ms}: {size / 2**20:.0f} MiB on disk, {single['rows']} rows, {single['visibilities']} visibilities; "
          f"page cache {'dropped' if args.cold else 'warm'}; median of {args.reps}")  # fmt: skip
    print("| ranks | rank | rows read | plan s | block s | total s | total vs one process | peak MiB above baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for world, rows in summary.items():
        for r in rows:
            print(
                f"| {world} | {int(r['rank'])} | {int(r['rows'])} ({r['rows'] / single['rows']:.0%}) | "
                f"{r['plan_s']:.2f} | {r['read_s']:.2f} | {r['total_s']:.2f} | {r['total_s'] / single['total_s']:.2f}x"
                f" | {r['peak_bytes'] / 2**20:.0f} ({r['peak_bytes'] / single['peak_bytes']:.2f}x) |"
            )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"ms": str(ms), "bytes_on_disk": size, "cold": args.cold, "reps": args.reps, "ranks": summary}
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
