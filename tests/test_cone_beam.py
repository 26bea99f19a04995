"""Cone-beam projections: the torch pair against closed-form line integrals of Gaussian blobs (off-centre, several
views), the exact transpose (dot test in float32 and float64), gradients (gradcheck), batches and channels,
measured-style vectors, and clear errors; ASTRA's CUDA pair against the torch one where ASTRA has CUDA."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from distinv import ConeBeam
from distinv.operators.cone_geometry import circular_vectors
from distinv.testing import dot_test

ANGLES = torch.arange(0, 360, 30.0)


def astra_cuda() -> bool:
    if importlib.util.find_spec("astra") is None:
        return False
    import astra

    return bool(astra.use_cuda())


def blob(shape: tuple[int, int, int], centre: tuple[float, float, float], sigma: float) -> torch.Tensor:
    """A Gaussian blob ``exp(-|p - c|^2 / (2 sigma^2))`` of ``(D, H, W)`` voxels, ``centre`` ``(x, y, z)`` in the
    volume's coordinates (its centre at the origin)."""
    depth, height, width = shape
    axes = [torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in (depth, height, width)]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    cx, cy, cz = centre
    return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))[None, None]


def blob_line_integrals(op: ConeBeam, centre, sigma: float) -> torch.Tensor:
    """The exact projections ``(rows, columns, views)`` of :func:`blob`: ``sqrt(2 pi) sigma exp(-d^2 / (2
    sigma^2))`` for a ray passing ``d`` from the centre."""
    c = torch.tensor(centre, dtype=torch.float64)
    r = torch.arange(op.rows, dtype=torch.float64) - (op.rows - 1) / 2
    k = torch.arange(op.columns, dtype=torch.float64) - (op.columns - 1) / 2
    out = []
    for vector in op.vectors:
        source, middle, u, v = vector[0:3], vector[3:6], vector[6:9], vector[9:12]
        direction = middle + k[None, :, None] * u + r[:, None, None] * v - source
        direction = direction / direction.norm(dim=-1, keepdim=True)
        offset = c - source
        along = (offset * direction).sum(-1, keepdim=True)
        distance2 = ((offset - along * direction) ** 2).sum(-1)
        out.append(math.sqrt(2 * math.pi) * sigma * torch.exp(-distance2 / (2 * sigma**2)))
    return torch.stack(out, dim=-1)


def test_projections_of_smooth_off_centre_blobs_are_their_line_integrals_within_one_percent():
    shape, detector = (40, 48, 48), (48, 64)
    vectors = circular_vectors(torch.arange(0, 360, 40.0), 80.0, 60.0, detector, 1.5)
    op = ConeBeam.from_vectors(vectors, shape, detector)
    for centre in [(4.0, -5.0, 3.0), (-6.0, 3.0, -4.0)]:
        exact = blob_line_integrals(op, centre, 6.0)
        ours = op.A(blob(shape, centre, 6.0))[0, 0]
        where = exact > 0.25 * exact.max()  # the blob's core, where linear interpolation's error is small
        assert where.sum() > 200 * 9  # a few hundred detector pixels per view
        assert ((ours - exact).abs()[where] / exact[where]).max() < 0.01


def test_the_adjoint_is_the_exact_transpose_and_each_direction_is_the_others_gradient():
    op = ConeBeam(ANGLES, 8, 12)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 1, 8, 12, 12, generator=g), torch.rand(1, 1, op.rows, op.columns, op.views, generator=g)
    dot_test(op, x, y, rtol=1e-5)
    dot_test(op, x.double(), y.double(), rtol=1e-12)
    small = ConeBeam(torch.tensor([0.0, 100.0, 230.0]), 3, 4, source_distance=20.0, detector_distance=10.0)
    x = torch.rand(1, 1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 1, small.rows, small.columns, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small.A, (x,)) and torch.autograd.gradcheck(small.A_adjoint, (y,))
    assert torch.autograd.gradgradcheck(small.A, (x,))


def test_batches_and_channels_are_projected_each_on_their_own_and_blocks_change_nothing():
    op, blocked = ConeBeam(ANGLES, 6, 10), ConeBeam(ANGLES, 6, 10, workspace_bytes=1)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 6, 10, 10, generator=g)
    y = op.A(x)
    assert y.shape == (2, 3, op.rows, op.columns, len(ANGLES))
    assert torch.allclose(y[1, 2], op.A(x[1:2, 2:3])[0, 0])
    assert torch.allclose(blocked.A(x), y, atol=1e-6) and torch.allclose(blocked.A_adjoint(y), op.A_adjoint(y))
    assert sum(b.numel() for b in op.buffers()) + sum(p.numel() for p in op.parameters()) <= 1  # geometry only


def test_a_centred_volume_projects_to_the_detector_centre_and_a_far_source_keeps_the_mass():
    op = ConeBeam(ANGLES, 12, 24)
    centred = op.A(blob((12, 24, 24), (0.0, 0.0, 0.0), 2.0).float())[0, 0]
    rows = torch.arange(op.rows, dtype=torch.float32)
    columns = torch.arange(op.columns, dtype=torch.float32)
    for view in range(op.views):
        image = centred[..., view]
        assert abs((image.sum(1) * rows).sum() / image.sum() - (op.rows - 1) / 2) < 0.05
        assert abs((image.sum(0) * columns).sum() / image.sum() - (op.columns - 1) / 2) < 0.05
    far = ConeBeam(ANGLES, 12, 24, source_distance=1e5, detector_distance=0.0)
    volume = blob((12, 24, 24), (1.0, -2.0, 0.5), 2.5).float()
    per_view = far.A(volume).sum(dim=(0, 1, 2, 3))  # rays one voxel apart: each view holds the mass
    assert torch.allclose(per_view, volume.sum().expand_as(per_view), rtol=0.01)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ConeBeam(ANGLES, 8, 16, source_distance=5.0), "source_distance=5.0"),
        (lambda: ConeBeam(ANGLES, 8, 16, backend="cuda"), "backend='cuda'"),
        (lambda: ConeBeam(ANGLES, 8, 16, scale=0.0), "scale=0.0"),
        (lambda: ConeBeam(ANGLES, 1, 16), "at least 2 x 2 x 2"),
        (lambda: ConeBeam.from_vectors(torch.zeros(3, 11), (4, 4, 4), (4, 4)), r"\(views, 12\)"),
        (lambda: ConeBeam.from_vectors(torch.full((2, 12), float("nan")), (4, 4, 4), (4, 4)), "NaN"),
        (lambda: ConeBeam.from_vectors(circular_vectors(ANGLES, 50, 50, (4, 4)), (4, 4), (4, 4)), "volume_shape"),
    ],
)
def test_geometry_the_operator_cannot_take_is_a_clear_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_inputs_of_the_wrong_shape_are_clear_errors():
    op = ConeBeam(ANGLES, 4, 8)
    with pytest.raises(ValueError, match=r"x has shape \(1, 1, 4, 8\)"):
        op.A(torch.zeros(1, 1, 4, 8))
    with pytest.raises(ValueError, match="y has shape"):
        op.A_adjoint(torch.zeros(1, 1, 3, 3, 3))


@pytest.mark.skipif(astra_cuda(), reason="ASTRA with CUDA is here: the operator builds")
def test_the_astra_backend_without_astras_cuda_says_what_is_missing():
    missing = ImportError if importlib.util.find_spec("astra") is None else RuntimeError
    with pytest.raises(missing, match="astra-toolbox|ASTRA built with CUDA"):
        ConeBeam(ANGLES, 8, 16, backend="astra")


@pytest.mark.skipif(not astra_cuda(), reason="needs ASTRA built with CUDA and a GPU")
def test_astras_cuda_pair_is_matched_and_agrees_with_the_torch_pair():
    ours, theirs = ConeBeam(ANGLES, 12, 24), ConeBeam(ANGLES, 12, 24, backend="astra")
    g = torch.Generator().manual_seed(0)
    y = torch.rand(1, 1, theirs.rows, theirs.columns, len(ANGLES), generator=g)
    dot_test(theirs, torch.rand(1, 1, 12, 24, 24, generator=g), y, rtol=1e-4)
    volume = blob((12, 24, 24), (2.0, -1.0, 1.0), 3.0).float()
    a, b = ours.A(volume), theirs.A(volume)
    assert (a - b).norm() / b.norm() < 0.05
