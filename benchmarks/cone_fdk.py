"""FDK on the analytic 3D Shepp-Logan phantom (issue 29's FDK figure, where ASTRA is absent: its PSNR).

    python benchmarks/cone_fdk.py                  # 128³, 180 views, a 192² detector (the projector's target case)
    python benchmarks/cone_fdk.py --sizes 64 128   # views and detector scale as 180 * n / 128 and 1.5 n

The projections are the phantom's exact line integrals (each ray's chord through each ellipsoid, in voxel units),
not the projector's: FDK is judged on data no discretisation made. Per size, one process, float32 for FDK: the PSNR
of FDK against the phantom at the voxel centres (data range 1, the phantom's), the relative error ``||x - x*|| /
||x*||`` over the whole volume and over the central half along z (FDK's cone artefacts grow away from the
mid-plane), and for comparison the same of FDK from the projector's own projections of the voxelised phantom. The
geometry is ``benchmarks/cone_beam.py``'s: a circular orbit, source and detector 4 widths from the axis, a full turn.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from distinv import ConeBeam
from distinv.images import SHEPP_LOGAN_3D, shepp_logan_3d
from distinv.numerics.metrics import psnr
from distinv.operators.cone_geometry import circular_vectors


def shepp_logan_line_integrals(op: ConeBeam) -> torch.Tensor:
    """The exact projections ``(rows, columns, views)`` (float64, voxel units) of :func:`shepp_logan_3d` at
    ``op``'s volume: its ellipsoids over ``[-1, 1]^3`` mapped on the voxel grid as that function samples them
    (``x`` along W, ``y`` against H, ``z`` along D)."""
    depth, height, width = op.volume_shape
    to_phantom = torch.tensor([2.0 / width, -2.0 / height, 2.0 / depth], dtype=torch.float64)
    rows = torch.arange(op.rows, dtype=torch.float64) - (op.rows - 1) / 2
    columns = torch.arange(op.columns, dtype=torch.float64) - (op.columns - 1) / 2
    out = []
    for vector in op.vectors.double():
        source, middle, u, v = vector[0:3], vector[3:6], vector[6:9], vector[9:12]
        direction = middle + columns[None, :, None] * u + rows[:, None, None] * v - source
        direction = direction / direction.norm(dim=-1, keepdim=True)  # (rows, columns, 3), unit, in voxels
        start, step = source * to_phantom, direction * to_phantom
        total = torch.zeros(direction.shape[:2], dtype=torch.float64)
        for value, a, b, c, x0, y0, z0, degrees in SHEPP_LOGAN_3D:
            t = math.radians(degrees)
            cos, sin = math.cos(t), math.sin(t)

            def unit(p: torch.Tensor, shift: bool, cos=cos, sin=sin, a=a, b=b, c=c, x0=x0, y0=y0, z0=z0):
                x, y, z = p[..., 0] - x0 * shift, p[..., 1] - y0 * shift, p[..., 2] - z0 * shift
                return torch.stack([(x * cos + y * sin) / a, (-x * sin + y * cos) / b, z / c], dim=-1)

            q0, q1 = unit(start, True), unit(step, False)  # the ray in the ellipsoid's unit-sphere frame
            aa, bb, cc = (q1 * q1).sum(-1), (q0 * q1).sum(-1), (q0 * q0).sum(-1) - 1
            disc = (bb * bb - aa * cc).clamp_min(0)
            total += value * 2 * disc.sqrt() / aa  # the chord, in voxels along the unit direction
        out.append(total)
    return torch.stack(out, dim=-1)


def scores(volume: torch.Tensor, truth: torch.Tensor) -> dict:
    depth = truth.shape[2]
    middle = slice(depth // 4, depth - depth // 4)
    error = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    return {
        "psnr": psnr(volume, truth, data_range=1.0),
        "relative_error": error(volume, truth),
        "relative_error_middle": error(volume[:, :, middle], truth[:, :, middle]),
    }


def measure(size: int, views: int, detector: int) -> dict:
    angles = torch.arange(views) * (360.0 / views)
    orbit = ConeBeam(angles, size, size)
    pitch = orbit.magnification * orbit.columns / detector
    vectors = circular_vectors(angles, 4.0 * size, 4.0 * size, (detector, detector), pitch)
    op = ConeBeam.from_vectors(vectors, (size, size, size), (detector, detector))
    truth = shepp_logan_3d(size)
    row = {"size": size, "views": views, "detector": detector}
    with torch.no_grad():
        start = time.perf_counter()
        exact = shepp_logan_line_integrals(op).float()[None, None]
        row["projections_s"] = time.perf_counter() - start
        start = time.perf_counter()
        row["analytic"] = scores(op.fdk(exact), truth)
        row["fdk_s"] = time.perf_counter() - start
        ours = op.A(truth)
        row["projector_vs_analytic"] = ((ours - exact).norm() / exact.norm()).item()
        row["discrete"] = scores(op.fdk(ours), truth)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("-o", "--output", default=None, help="a JSON file for the rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for size in args.sizes:
        row = measure(size, round(180 * size / 128), round(1.5 * size))
        rows.append(row)
        a, d = row["analytic"], row["discrete"]
        print(
            f"{size}³, {row['views']} views, {row['detector']}²: FDK of the exact projections PSNR "
            f"{a['psnr']:.2f} dB, relative error {a['relative_error']:.4f} "
            f"(central half {a['relative_error_middle']:.4f}); "
            f"of the projector's: {d['psnr']:.2f} dB, {d['relative_error']:.4f}; projector against exact "
            f"{row['projector_vs_analytic']:.4f}; FDK {row['fdk_s']:.1f} s",
            flush=True,
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
