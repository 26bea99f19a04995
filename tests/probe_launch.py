"""Run under a launcher (torchrun, or SLURM variables): report what DistributedContext saw, as JSON lines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from distinv import DistributedContext

parser = argparse.ArgumentParser()
parser.add_argument("--fail-rank", type=int, default=-1)
parser.add_argument("--seed-offset", action="store_true")
parser.add_argument("--out", required=True, help="folder for one JSON report per rank")
args = parser.parse_args()

with DistributedContext(seed=7, seed_offset=args.seed_offset, device_mode="cpu", timeout=60) as ctx:
    if ctx.rank == args.fail_rank:
        raise RuntimeError("deliberate failure in the probe")
    total = ctx.all_reduce(torch.tensor([float(ctx.rank + 1)]))
    report = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "local_rank": ctx.local_rank,
        "local_world_size": ctx.local_world_size,
        "source": ctx.launch.source,
        "threads": torch.get_num_threads(),
        "backend": dist.get_backend(),
        "device": str(ctx.device),
        "random": torch.rand(1).item(),
        "sum_of_ranks_plus_one": total.item(),
    }
report["group_destroyed"] = not dist.is_initialized()
Path(args.out, f"rank{report['rank']}.json").write_text(json.dumps(report))
