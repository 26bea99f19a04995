"""SSIM of replicated images and volumes: torchmetrics' (deepinv's) values, scored a few rows and slices at a
time whatever the chunk sizes."""

from __future__ import annotations

import warnings

import pytest
import torch

from distinv.numerics import metrics
from distinv.numerics.metrics import ssim


def noisy_pair(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(shape, generator=g)
    return (truth + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1), truth


@pytest.mark.parametrize("shape", [(2, 3, 300, 170), (1, 1, 40, 33), (1, 1, 7, 50, 40), (2, 1, 3, 140, 130)])
def test_ssim_is_deepinvs_on_images_and_slice_averaged_on_volumes(shape):
    from deepinv.loss.metric import SSIM

    warnings.simplefilter("ignore")
    estimate, truth = noisy_pair(shape)
    if len(shape) == 5:
        estimate, truth = (t.transpose(1, 2).flatten(0, 1) for t in (estimate, truth))
        expected = float(SSIM(max_pixel=1.0)(estimate, truth).mean())
        estimate, truth = noisy_pair(shape)
    else:
        expected = float(SSIM(max_pixel=1.0)(estimate, truth).mean())
    assert abs(ssim(estimate, truth) - expected) < 1e-6


def test_ssim_does_not_depend_on_how_many_rows_and_slices_are_scored_at_once(monkeypatch):
    estimate, truth = noisy_pair((2, 1, 5, 70, 60))
    whole = ssim(estimate, truth)
    monkeypatch.setattr(metrics, "SSIM_CHUNK_ROWS", 16)
    monkeypatch.setattr(metrics, "SSIM_CHUNK_VALUES", 1)  # one slice of 16 rows at a time
    assert abs(ssim(estimate, truth) - whole) < 1e-9
