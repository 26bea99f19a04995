"""Write a synthetic cone-beam scan in the layouts ``ct_scan`` reads, to try the measured-scan path end to end
without a download: the 3D Shepp-Logan phantom projected by distinv's cone-beam pair over a full turn, turned into
raw detector counts with Poisson noise (``flat * exp(-p)`` plus a dark current), and written as

- ``OUT/tiff/``: the 42-walnuts layout (``scan_NNNNNN.tif`` raw counts as 16-bit TIFFs, ``di000000.tif``,
  ``io000000.tif``/``io000001.tif``, ``scan_geom.geom`` in mm at ``--voxel-mm`` per voxel), no reference;
- ``OUT/scan.h5`` (with ``--hdf5``): ``sinogram`` (the noisy line integrals), ``vectors`` (voxel units) and the
  phantom as ``reference``.

    python benchmarks/synthetic_scan.py --size 128 --views 180 -o results/scans/walnut128
    distinv run configs/ct_scan.yml          # reads results/scans/walnut128/tiff on 2 ranks
    python benchmarks/synthetic_scan.py --size 128 --score results/ct_scan/reconstructions/<run>

``--score DIR`` writes nothing: it reads a reconstruction's TIFF slices (``slice_NNNN.tif``, as ``distinv run`` writes
them) and prints its PSNR and relative error against the phantom the scan was made from, in the scan's units
(attenuation per voxel, data range the phantom's peak attenuation), which the run itself never saw.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from distinv import ConeBeam
from distinv.bench.problems.tomography_3d import source_distance
from distinv.images import shepp_logan_3d

DARK = 100.0
# attenuation 0.02 per voxel where the phantom is 1 (a walnut's, at 0.1 mm voxels): the thickest ray keeps ~10%
ATTENUATION = 0.02


def score(folder: Path, size: int) -> None:
    import tifffile

    slices = sorted(folder.glob("slice_*.tif"))
    if not slices:
        raise SystemExit(f"--score {folder}: no slice_NNNN.tif files there; give a run's reconstruction folder.")
    volume = torch.from_numpy(np.stack([tifffile.imread(p) for p in slices])).double()
    truth = shepp_logan_3d(size)[0, 0].double() * ATTENUATION
    if volume.shape != truth.shape:
        shape = tuple(volume.shape)
        raise SystemExit(f"--score: the slices make a {shape} volume, the phantom is {size}^3: give --size.")
    mse = ((volume.clamp(0, ATTENUATION) - truth) ** 2).mean().item()
    error = ((volume - truth).norm() / truth.norm()).item()
    psnr = 10 * math.log10(ATTENUATION**2 / mse)
    print(f"{folder}: PSNR {psnr:.2f} dB against the phantom, relative error {error:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="the phantom's side in voxels (default 128)")
    parser.add_argument("--views", type=int, default=180, help="views over a full turn (default 180)")
    parser.add_argument("--flat", type=float, default=2e4, help="flat-field counts per pixel (default 2e4)")
    parser.add_argument("--cone-angle", type=float, default=14.0, help="degrees the volume subtends (default 14)")
    parser.add_argument("--magnification", type=float, default=2.0)
    parser.add_argument("--voxel-mm", type=float, default=0.1, help="the geometry file's mm per voxel")
    parser.add_argument("--hdf5", action="store_true", help="also write scan.h5 with the phantom as reference")
    parser.add_argument("--score", type=Path, default=None, help="a reconstruction's folder of TIFF slices to score")
    parser.add_argument("-o", "--out", default=None)
    args = parser.parse_args()
    if args.score is not None:
        score(args.score, args.size)
        return
    if args.out is None:
        parser.error("-o/--out: give the folder to write the scan to (or --score a reconstruction).")
    import tifffile

    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "tiff").mkdir(parents=True, exist_ok=True)
    source = source_distance(args.size, args.cone_angle)
    angles = torch.arange(args.views, dtype=torch.float64) * (360.0 / args.views)
    op = ConeBeam(angles, args.size, args.size, source, (args.magnification - 1) * source)
    phantom = shepp_logan_3d(args.size)
    attenuation = ATTENUATION
    rng = np.random.default_rng(0)
    sinogram = np.empty((args.views, op.rows, op.columns), dtype=np.float32)
    with torch.no_grad():
        for first in range(0, args.views, 30):  # 30 views at a time: the projections are never held twice
            block = ConeBeam.from_vectors(op.vectors[first : first + 30], op.volume_shape, (op.rows, op.columns))
            p = block.A(phantom)[0, 0].permute(2, 0, 1).double().numpy() * attenuation
            for k, view in enumerate(p, start=first):
                counts = rng.poisson(args.flat * np.exp(-view)) + DARK
                tifffile.imwrite(out / "tiff" / f"scan_{k:06d}.tif", np.clip(counts, 0, 65535).astype(np.uint16))
                sinogram[k] = -np.log(np.maximum(counts - DARK, 1.0) / args.flat)
    tifffile.imwrite(out / "tiff" / "di000000.tif", np.full((op.rows, op.columns), DARK, dtype=np.uint16))
    for name in ("io000000.tif", "io000001.tif"):
        flat = np.full((op.rows, op.columns), args.flat + DARK, dtype=np.uint16)
        tifffile.imwrite(out / "tiff" / name, flat)
    np.savetxt(out / "tiff" / "scan_geom.geom", (op.vectors * args.voxel_mm).numpy())
    if args.hdf5:
        import h5py

        with h5py.File(out / "scan.h5", "w") as f:
            f.create_dataset("sinogram", data=sinogram / attenuation)  # in the phantom's units
            f.create_dataset("vectors", data=op.vectors.numpy())
            f.create_dataset("reference", data=phantom[0, 0].numpy())
    also = " and scan.h5" if args.hdf5 else ""
    print(
        f"wrote {args.views} views of {op.rows} x {op.columns} pixels to {out / 'tiff'} (cone {args.cone_angle} deg, "
        f"magnification {args.magnification}, {math.ceil(args.flat)} flat counts){also}"
    )


if __name__ == "__main__":
    main()
