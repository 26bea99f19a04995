"""A reconstructed volume written as a stack of TIFF slices, each rank its own slab: ``slice_NNNN.tif`` (one
float32 image ``(H, W)`` per z-slice, ``NNNN`` its index), the layout every volume viewer opens as an image sequence
(ImageJ/Fiji, napari, 3D Slicer) and the one laboratory CT reconstructions are published in. Ranks write disjoint
files, so no rank waits for another and no rank holds more than its slab; each file is written under a temporary
name and renamed, so a slice is either whole or absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distinv.comm.context import DistributedContext
from distinv.placements.row_bands import RowBands, rows_of_rank


def write_slices(folder: str | Path, x: RowBands | torch.Tensor, ctx: DistributedContext) -> list[Path]:
    """Write this rank's slices of the volume ``x`` (``(1, 1, D, H, W)``: sharded in slabs, each rank its own;
    replicated, each rank a balanced share) to ``folder``; returns the files this rank wrote.

    :raises ValueError: for anything but one single-channel volume.
    """
    import tifffile

    shape = x.shape if isinstance(x, RowBands) else tuple(x.shape)
    if len(shape) != 5 or shape[0] != 1 or shape[1] != 1:
        raise ValueError(f"a volume of shape {tuple(shape)}: write_slices takes one (1, 1, D, H, W) volume.")
    first, stop, slab = rows_of_rank(ctx, x)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(shape[2] - 1)))
    written = []
    for k, image in zip(range(first, stop), slab[0, 0].detach().float().cpu().numpy(), strict=True):
        path = folder / f"slice_{k:0{digits}d}.tif"
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tifffile.imwrite(temporary, np.ascontiguousarray(image))
        temporary.replace(path)
        written.append(path)
    return written
