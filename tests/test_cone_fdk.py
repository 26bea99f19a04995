"""FDK for cone beam: from closed-form projections of a smooth off-centre blob it gives the blob back, each view
weighted by its share of the turn (interleaved blocks sum to the whole), and the operator's scale undone."""

from __future__ import annotations

import math

import torch

from distinv import ConeBeam
from distinv.operators.cone_fdk import view_angle_weights
from distinv.operators.cone_geometry import circular_vectors
from test_cone_beam import blob, blob_line_integrals


def test_fdk_of_the_closed_form_projections_of_a_blob_gives_the_blob():
    shape = (40, 40, 40)
    op = ConeBeam(torch.arange(120) * 3.0, 40, 40)
    centre = (4.0, -3.0, 3.0)
    exact = blob_line_integrals(op, centre, 5.0).float()[None, None]
    truth = blob(shape, centre, 5.0).float()
    volume = op.fdk(exact)
    assert volume.shape == truth.shape
    inner = (slice(None), slice(None), slice(10, 30), slice(10, 30), slice(10, 30))
    assert (volume - truth)[inner].abs().max() < 0.03 * truth.max()  # FDK's cone error, off the mid-plane too
    assert ((volume - truth)[inner].norm() / truth[inner].norm()).item() < 0.02


def test_views_are_weighted_by_their_share_of_the_turn_so_interleaved_blocks_sum_to_the_whole():
    angles = torch.arange(24) * 15.0
    whole = ConeBeam(angles, 16, 16)
    assert torch.allclose(view_angle_weights(whole.vectors), torch.full((24,), 2 * math.pi / 24, dtype=torch.float64))
    uneven = ConeBeam(torch.tensor([0.0, 90.0, 135.0, 270.0]), 16, 16)
    assert torch.allclose(view_angle_weights(uneven.vectors) * 4 / math.pi, torch.tensor([2.0, 1.5, 2.0, 2.5]).double())
    x = blob((16, 16, 16), (1.0, 2.0, -1.0), 3.0).float()
    blocks = [ConeBeam(angles[k::4], 16, 16, scale=0.1 * (k + 1)) for k in range(4)]
    summed = sum(b.A_dagger(b.A(x), fbp=True) / 4 for b in blocks)
    assert torch.allclose(summed, whole.fdk(whole.A(x)), atol=1e-5)


def test_the_norm_estimated_on_a_small_copy_of_the_scene_is_the_operators_within_two_percent():
    from distinv.bench.problems.tomography_3d import estimated_sqnorm
    from distinv.numerics.linalg import power_iteration

    vectors = circular_vectors(torch.arange(24) * 15.0, 50.0, 40.0, (36, 44), 1.5)
    jitter = torch.randn(vectors[:, 0:6].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vectors[:, 0:6] += jitter
    op = ConeBeam.from_vectors(vectors, (20, 28, 28), (36, 44))
    exact, _ = power_iteration(op.A_adjoint_A, torch.zeros(1, 1, 20, 28, 28, dtype=torch.float64), 200, 1e-5)
    assert abs(estimated_sqnorm(vectors, (20, 28, 28), (36, 44)) / float(exact) - 1) < 0.02
