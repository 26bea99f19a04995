"""Peak memory of one call, above the level before it: CUDA peak allocated on GPU, peak resident set on CPU."""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from distinv.runtime.launch import LaunchError, detect_launch


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


def process_bytes(device: torch.device | str = "cpu") -> int:
    """What the process holds now: CUDA allocated memory on GPU; on CPU its resident set after freed heap pages
    are given back (the level a run's peak is measured above: libraries and imports included)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    _release_cached_heap()
    return _status_kib("VmRSS") * 1024


def default_memory_budget(device: torch.device | str = "cpu", fraction: float = 0.5) -> int:
    """Bytes one rank may use for a denoiser call: ``fraction`` of the device's free memory (GPU), or of the
    host's available memory shared by the ranks on this host (CPU; their number as
    :func:`~distinv.runtime.launch.detect_launch` finds it: torchrun's ``LOCAL_WORLD_SIZE``, or SLURM's tasks on
    this node under ``srun``)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(fraction * free)
    available = _meminfo_kib("MemAvailable") * 1024
    return int(fraction * available / local_ranks(os.environ))


def local_ranks(env: Mapping[str, str]) -> int:
    """Ranks of this launch on this host (1 for a single process)."""
    try:
        return max(1, detect_launch(env).local_world_size)
    except LaunchError:  # a half-configured launch fails where the process group starts, with its own message
        return 1


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/meminfo has no {field}")


def parse_bytes(value: int | float | str) -> int:
    """``2_000_000``, ``"512MB"``, ``"1.5 GiB"`` -> bytes (K/M/G/T, decimal; KiB/MiB/GiB/TiB, binary)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"memory_budget={value}: give a positive number of bytes, or e.g. '2GB'.")
        return int(value)
    text = str(value).strip().replace(" ", "")
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    units |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    match = re.fullmatch(r"([0-9.eE+-]+)([A-Za-z]*)", text)
    number, unit = (match.group(1), match.group(2).upper()) if match else ("", "")
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in units or amount <= 0:
        raise ValueError(f"memory_budget={value!r}: give bytes as a positive number with an optional unit, e.g. '2GB'.")
    return int(amount * units[unit])
