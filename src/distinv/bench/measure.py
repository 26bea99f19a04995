"""Peak memory of one call, above the level before it: CUDA peak allocated on GPU, peak resident set on CPU."""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_cached_heap() -> None:
    """Give freed heap pages back to the OS so that the 'before' level is what is really in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_bytes``: the most memory the block held above the
    level at its start, and ``m.peak_total_bytes``: the most the process (CPU) or torch (GPU) held in all.

    On CPU this reads Linux's peak resident set (``VmHWM``) after resetting it (``/proc/self/clear_refs``), so
    it counts every allocation of the process (torch's and the rest), sampled by the kernel, not polled.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes = self.peak_total_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            _release_cached_heap()
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self._before = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _status_kib("VmHWM") * 1024
        self.peak_total_bytes = peak
        self.peak_bytes = max(0, peak - self._before)
