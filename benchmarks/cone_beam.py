"""The PyTorch cone-beam pair's speed and memory on one core (issue 29's target: a 128³ volume, 180 views, a 192²
detector, forward plus adjoint under 30 s and 300 MB), and how both scale with the volume's side.

    python benchmarks/cone_beam.py                    # 128³ (the target), then 64³ and 96³ for the scaling
    python benchmarks/cone_beam.py --sizes 128 256    # any sides; views and detector scale as 180 * n / 128, 1.5 n
    python benchmarks/cone_beam.py --sizes 512 --measured-views 16   # 16 of the 720 views, evenly over the turn

With ``--measured-views M`` only ``M`` of a size's views are projected (every ``views / M``-th, so the views' mix of
orientations is the whole orbit's) and the seconds are also given scaled to all views (``A_s_all_views``,
``A_adjoint_s_all_views``: the work is the same per view); the memory is the ``M`` views' (the measurements then
are ``M / views`` of the whole; the workspace is per block of views, the same).

Per size, in one process, one thread, float32: seconds of ``A`` and of ``A^T`` (the second of two calls, the first
a warm-up), and the memory each call adds above the process's level before it (Linux's peak resident set). The
geometry: a circular orbit, source and detector 4 widths from the axis (magnification 2), a full turn.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from distinv import ConeBeam
from distinv.operators.cone_geometry import circular_vectors
from distinv.runtime.memory import PeakMemory


def measure(
    size: int, views: int, detector: int, workspace_bytes: int | None = None, measured_views: int | None = None
) -> dict:
    angles = torch.arange(views) * (360.0 / views)
    if measured_views is not None:
        if not 1 <= measured_views <= views:
            raise ValueError(f"measured_views={measured_views}: give between 1 and the size's {views} views.")
        angles = angles[torch.linspace(0, views, measured_views + 1)[:-1].long()]
    orbit = ConeBeam(angles, size, size)  # the default circular orbit; its detector's width over `detector` pixels
    pitch = orbit.magnification * orbit.columns / detector
    vectors = circular_vectors(angles, 4.0 * size, 4.0 * size, (detector, detector), pitch)
    options = {} if workspace_bytes is None else {"workspace_bytes": workspace_bytes}
    op = ConeBeam.from_vectors(vectors, (size, size, size), (detector, detector), **options)
    x = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    row = {"size": size, "views": views, "detector": detector, "measured_views": len(angles)}
    with torch.no_grad():
        y = op.A(x)
        for name, call in (("A", lambda: op.A(x)), ("A_adjoint", lambda: op.A_adjoint(y))):
            with PeakMemory("cpu") as memory:
                start = time.perf_counter()
                call()
                seconds = time.perf_counter() - start
            row[f"{name}_s"], row[f"{name}_mib"] = seconds, memory.peak_bytes / 2**20
    row["total_s"] = row["A_s"] + row["A_adjoint_s"]
    if len(angles) < views:
        for name in ("A", "A_adjoint", "total"):
            row[f"{name}_s_all_views"] = row[f"{name}_s"] * views / len(angles)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 64, 96])
    parser.add_argument("--workspace-mib", type=float, default=None, help="the pair's workspace (default its own)")
    parser.add_argument("--measured-views", type=int, default=None, help="project only this many of the views")
    parser.add_argument("-o", "--output", default=None, help="a JSON file for the rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for size in args.sizes:
        workspace = None if args.workspace_mib is None else int(args.workspace_mib * 2**20)
        rows.append(measure(size, round(180 * size / 128), round(1.5 * size), workspace, args.measured_views))
        print(json.dumps(rows[-1]), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
