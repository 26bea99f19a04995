"""One device-synchronised timer: wall seconds of a block after the device finished the block's work."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


class DeviceTimer:
    """``with DeviceTimer(device) as t: ...`` then ``t.seconds``: the device is synchronised before the start and
    at the end (queued CUDA kernels are counted in the block that queued them; a no-op on CPU)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> DeviceTimer:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._start


def timed_calls(fn: Callable[[], Any], device: torch.device | str, repetitions: int) -> tuple[list[float], int]:
    """``fn()`` once to warm up (lazy initialisation, algorithm choice), then ``repetitions`` timed calls (at least
    one): their seconds, and the peak bytes the first one added (:class:`~distinv.runtime.memory.PeakMemory`)."""
    from distinv.runtime.memory import PeakMemory

    fn()
    times, peak = [], 0
    for i in range(max(1, repetitions)):
        with PeakMemory(device) as memory, DeviceTimer(device) as timer:
            fn()
        times.append(timer.seconds)
        if i == 0:
            peak = memory.peak_bytes
    return times, peak
