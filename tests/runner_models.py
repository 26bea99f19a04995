"""Denoisers a test config names as ``python:runner_models:NAME`` (imported by the spawned ranks)."""

from __future__ import annotations

import os
import time

import torch
from deepinv.models import DRUNet


def tiny(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return DRUNet(in_channels=channels, out_channels=channels, nc=(8, 8, 8, 8), nb=1, pretrained=None).eval()


def fails_on_rank_1(channels: int) -> torch.nn.Module:
    if os.environ.get("RANK") == "1":
        raise RuntimeError("rank 1 broke on purpose")
    return tiny(channels)


class _Slow(torch.nn.Module):
    def forward(self, x, sigma=None):
        started = os.environ.get("DISTINV_TEST_SLOW_STARTED")  # a file to touch: a rank is in the network
        if started:
            open(started, "a").close()
        time.sleep(60)
        return x


def slow(channels: int) -> torch.nn.Module:
    return _Slow()
