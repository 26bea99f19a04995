"""Cone-beam projections on ASTRA's CUDA projectors: a clear error where ASTRA or its CUDA is missing; where they
are present (a GPU machine), the matched pair (dot test), the parallel-beam limit and a centred volume's symmetry."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from distinv.operators.cone_beam import ConeBeam
from distinv.testing import dot_test

ANGLES = torch.arange(0, 360, 30.0)


def astra_cuda() -> bool:
    if importlib.util.find_spec("astra") is None:
        return False
    import astra

    return bool(astra.use_cuda())


def blob(depth: int, width: int, centre: tuple[float, float, float], sigma: float) -> torch.Tensor:
    z, y, x = torch.meshgrid(torch.arange(depth), torch.arange(width), torch.arange(width), indexing="ij")
    distance = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return torch.exp(-distance / (2 * sigma**2))[None, None].float()


@pytest.mark.skipif(astra_cuda(), reason="ASTRA with CUDA is here: the operator builds")
def test_without_astras_cuda_the_operator_says_what_is_missing():
    missing = ImportError if importlib.util.find_spec("astra") is None else RuntimeError
    with pytest.raises(missing, match="astra-toolbox|ASTRA built with CUDA"):
        ConeBeam(ANGLES, 8, 16)


def test_sources_inside_the_volume_are_clear_errors():
    with pytest.raises(ValueError, match="source_distance=5.0"):
        ConeBeam(ANGLES, 8, 16, source_distance=5.0)


@pytest.mark.skipif(not astra_cuda(), reason="needs ASTRA built with CUDA and a GPU")
def test_the_pair_is_matched_and_tends_to_parallel_beam():
    op = ConeBeam(ANGLES, 12, 24)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 12, 24, 24, generator=g)
    y = torch.rand(1, 1, op.rows, op.columns, len(ANGLES), generator=g)
    dot_test(op, x, y, rtol=1e-4)
    # far source: each angle's projections sum to the volume's mass (rays one voxel apart, unit length per voxel)
    far = ConeBeam(ANGLES, 12, 24, source_distance=1e5, detector_distance=0.0)
    volume = blob(12, 24, (5.5, 11.5, 11.5), 2.5)
    per_angle = far.A(volume).sum(dim=(0, 1, 2, 3))
    assert torch.allclose(per_angle, volume.sum().expand_as(per_angle), rtol=0.02)
    # a volume centred on the axis projects to the detector's centre at every angle
    centred = op.A(blob(12, 24, (5.5, 11.5, 11.5), 2.0))[0, 0]
    rows, columns = torch.arange(op.rows, dtype=torch.float32), torch.arange(op.columns, dtype=torch.float32)
    weights = centred.sum(dim=(1, 2))
    assert abs((weights * rows).sum() / weights.sum() - (op.rows - 1) / 2) < 0.5
    weights = centred.sum(dim=(0, 2))
    assert abs((weights * columns).sum() / weights.sum() - (op.columns - 1) / 2) < 0.5
