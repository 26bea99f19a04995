"""DistributedContext: the process group, the device and the collectives the engine needs.

The same script runs as a single process, under ``torchrun`` and under SLURM's ``srun``::

    with DistributedContext(seed=0) as ctx:
        ctx.rank, ctx.world_size, ctx.local_rank, ctx.device, ctx.is_distributed

Keyword names follow deepinv's ``deepinv.distributed.DistributedContext`` so that code written for it runs
after changing the import. Differences, each deliberate: the seed is the same on every rank unless
``seed_offset=True`` (replicated inputs must agree), a half-configured launch raises instead of silently
running one process, and a rank leaving the block with an exception does not wait in a barrier for the others.

Ranks stay in step: every collective of the engine is reached by every rank or by none. Work that can fail on one
rank only (a factory, a network on its windows, a GPU out of memory) runs through :meth:`DistributedContext.agree`
before the next collective, so a failure becomes an error on every rank (the failing rank re-raises its own, the
others raise :class:`PeerRankError` naming it) instead of a wait until the timeout.

Debugging your own script: ``DistributedContext(debug=True)`` (or ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` in the
environment) turns on PyTorch's own collective checking, which compares every collective's kind, shape and order
across ranks and raises at the first mismatch, naming both sides. It costs one extra small collective per
collective: use it to find a desync, not in production runs.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .discovery import Launch, LaunchError, detect_launch

T = TypeVar("T")


class PeerRankError(RuntimeError):
    """Raised on every rank that did not fail itself when another rank failed in the same step.

    :ivar failures: ``{rank: "ExceptionType: message"}`` of the ranks that failed.
    """

    def __init__(self, step: str, failures: dict[int, str]):
        self.step, self.failures = step, failures
        causes = "; ".join(f"rank {r}: {m}" for r, m in sorted(failures.items()))
        super().__init__(f"{step} failed on rank(s) {sorted(failures)}: {causes}")


class DistributedContext:
    """Set up (or adopt) the process group, pick the device and threads, seed, and clean up what it made.

    :param backend: ``"gloo"`` or ``"nccl"``; ``None`` picks NCCL when every local rank has a GPU of its own
        and the device mode allows GPUs, else gloo.
    :param cleanup: destroy the process group on exit (only if this context created it).
    :param seed: seed for torch's generators; ``None`` leaves them alone.
    :param seed_offset: add the rank to the seed (independent streams per rank). Default ``False``: every rank
        draws the same numbers, which keeps replicated tensors identical.
    :param deterministic: ask cuDNN for deterministic kernels.
    :param device_mode: ``"cpu"``, ``"gpu"`` or ``None`` (GPU when each local rank can have its own).
    :param num_threads: torch CPU threads for this rank; ``None`` gives ``cores // local ranks`` (at least 1)
        on CPU and leaves the setting alone on GPU.
    :param timeout: seconds a collective may wait before it fails (instead of hanging forever).
    :param env: the environment to read the launch from (default ``os.environ``).
    :param debug: check every collective's kind, shape and order across ranks with PyTorch's own checker
        (``TORCH_DISTRIBUTED_DEBUG=DETAIL``); a desynchronised script then fails at the first mismatch instead of
        hanging or summing the wrong tensors. Only for a process group this context creates.
    """

    def __init__(
        self,
        backend: str | None = None,
        cleanup: bool = True,
        seed: int | None = None,
        seed_offset: bool = False,
        deterministic: bool = False,
        device_mode: str | None = None,
        num_threads: int | None = None,
        timeout: float = 600.0,
        env: Mapping[str, str] | None = None,
        debug: bool = False,
    ):
        if backend not in (None, "gloo", "nccl"):
            raise ValueError(f"backend={backend!r}: use 'gloo', 'nccl' or None (automatic).")
        if device_mode not in (None, "cpu", "gpu"):
            raise ValueError(f"device_mode={device_mode!r}: use 'cpu', 'gpu' or None (automatic).")
        if backend == "nccl" and device_mode == "cpu":
            raise ValueError("backend='nccl' needs GPUs but device_mode='cpu': use backend='gloo'.")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads={num_threads}: it must be at least 1 (or None for automatic).")
        self.backend = backend
        self.comm_seconds = 0.0  # wall time spent in collectives, waiting for other ranks included
        self.cleanup = cleanup
        self.seed = seed
        self.seed_offset = seed_offset
        self.deterministic = deterministic
        self.device_mode = device_mode
        self.num_threads = num_threads
        self.timeout = timeout
        self._env = env
        self.debug = debug

        self.launch = Launch(source="single")
        self.rank = 0
        self.world_size = 1
        self.local_rank = 0
        self.local_world_size = 1
        self.device = torch.device("cpu")
        self.created_process_group = False
        self._threads_before: int | None = None
        self._entered = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> DistributedContext:
        env = os.environ if self._env is None else self._env
        if dist.is_available() and dist.is_initialized():
            self._adopt_existing_group(env)
        else:
            self.launch = detect_launch(env)
            self.rank, self.world_size = self.launch.rank, self.launch.world_size
            self.local_rank, self.local_world_size = self.launch.local_rank, self.launch.local_world_size
        use_gpu = self._choose_gpu()
        self.device = self._gpu_for_local_rank() if use_gpu else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._set_threads()
        if self.launch.is_distributed and not dist.is_initialized():
            backend = self.backend or ("nccl" if use_gpu else "gloo")
            if backend == "nccl" and not use_gpu:
                raise LaunchError("backend='nccl' needs one GPU per local rank; use backend='gloo' on CPU.")
            if self.debug:
                dist.set_debug_level(dist.DebugLevel.DETAIL)
            dist.init_process_group(
                backend=backend,
                init_method=self.launch.init_method,
                rank=self.rank,
                world_size=self.world_size,
                timeout=datetime.timedelta(seconds=self.timeout),
            )
            self.created_process_group = True
        self._seed()
        if self.deterministic:
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self._entered = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self.is_distributed:
            # Say which rank failed and why; the launcher (torchrun, srun, our runner) ends the others, and
            # gloo peers see the closed connection instead of waiting for a barrier we will never reach.
            print(f"[distinv] rank {self.rank}/{self.world_size} failed: {exc!r}", file=sys.stderr, flush=True)
        if self.created_process_group and self.cleanup and dist.is_initialized():
            if exc is None:
                dist.barrier()
            dist.destroy_process_group()
            self.created_process_group = False
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
        self._entered = False

    def _adopt_existing_group(self, env: Mapping[str, str]) -> None:
        """Someone else made the process group: use it, never destroy it."""
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        try:  # the launcher's own view of this host (torchrun's LOCAL_*, srun's SLURM_* variables)
            launch = detect_launch(env)
        except LaunchError:
            launch = None
        if launch is not None and launch.source != "single":
            self.local_rank, self.local_world_size = launch.local_rank, launch.local_world_size
        else:  # a group made by hand, without a launcher's variables: assume one host
            self.local_rank, self.local_world_size = self.rank, self.world_size
        self.launch = Launch("existing", self.rank, self.world_size, self.local_rank, self.local_world_size)
        if self.backend is None:
            self.backend = dist.get_backend()

    def _choose_gpu(self) -> bool:
        if self.device_mode == "cpu" or (self.backend == "gloo" and self.device_mode is None):
            return False
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        # One visible GPU per process means the launcher isolated them (CUDA_VISIBLE_DEVICES per task).
        enough = visible >= self.local_world_size or (visible == 1 and "CUDA_VISIBLE_DEVICES" in os.environ)
        if self.device_mode == "gpu" or self.backend == "nccl":
            if not enough:
                raise LaunchError(
                    f"GPUs were requested for {self.local_world_size} local rank(s) but {visible} GPU(s) are "
                    "visible: start at most one rank per GPU, or use device_mode='cpu' with backend='gloo'."
                )
            return True
        return enough and visible > 0

    def _gpu_for_local_rank(self) -> torch.device:
        visible = torch.cuda.device_count()
        return torch.device("cuda", 0 if visible == 1 else self.local_rank % visible)

    def _set_threads(self) -> None:
        threads = self.num_threads
        if threads is None and self.device.type == "cpu":
            threads = max(1, available_cores() // max(1, self.local_world_size))
        if threads is not None:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)

    def _seed(self) -> None:
        if self.seed is None:
            return
        seed = self.seed + (self.rank if self.seed_offset else 0)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)

    # ------------------------------------------------------------------ facts
    @property
    def is_distributed(self) -> bool:
        """True when there is a process group to talk to (even of size 1)."""
        return dist.is_available() and dist.is_initialized()

    @property
    def use_dist(self) -> bool:
        """deepinv's name for :attr:`is_distributed`."""
        return self.is_distributed

    def local_indices(self, num_items: int) -> list[int]:
        """Round-robin share of ``num_items`` for this rank (deepinv's sharding rule)."""
        return list(range(self.rank, num_items, self.world_size))

    # ------------------------------------------------------------------ collectives
    # No-ops (identity) in a single process, so the engine calls them unconditionally.
    @contextmanager
    def communicating(self) -> Iterator[None]:
        """Adds the block's wall time to :attr:`comm_seconds` (after the device finished its work, so that
        queued GPU kernels are not counted as communication). Every collective of the engine runs in one."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.comm_seconds += time.perf_counter() - start

    def all_reduce(self, x: torch.Tensor, op: Any = None) -> torch.Tensor:
        """Sum (or ``op``) ``x`` over ranks, in place; complex tensors are reduced as pairs of reals."""
        if self.is_distributed:
            target = torch.view_as_real(x) if x.is_complex() else x
            with self.communicating():
                dist.all_reduce(target, op=dist.ReduceOp.SUM if op is None else op)
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite ``x`` on every rank with rank ``src``'s, in place."""
        if self.is_distributed:
            with self.communicating():
                dist.broadcast(torch.view_as_real(x) if x.is_complex() else x, src=src)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Stack every rank's ``x`` (same shape everywhere): shape ``(world_size, *x.shape)``."""
        if not self.is_distributed:
            return x.unsqueeze(0)
        out = torch.empty((self.world_size, *x.shape), dtype=x.dtype, device=x.device)
        with self.communicating():
            dist.all_gather(list(out.unbind(0)), x.contiguous())
        return out

    def all_gather_object(self, obj_list: list, obj: Any) -> None:
        """Fill ``obj_list`` (length ``world_size``) with every rank's picklable ``obj``."""
        if self.is_distributed:
            with self.communicating():
                dist.all_gather_object(obj_list, obj)
        else:
            obj_list[0] = obj

    def broadcast_object_list(self, object_list: list, src: int = 0) -> list:
        if self.is_distributed:
            with self.communicating():
                dist.broadcast_object_list(object_list, src=src)
        return object_list

    def barrier(self) -> None:
        if self.is_distributed:
            with self.communicating():
                dist.barrier()

    def agree(self, step: str, error: BaseException | None = None, values: Sequence[int] = ()) -> list[tuple[int, ...]]:
        """Every rank learns whether any rank failed in ``step``, and every rank's ``values`` (one small
        all-gather of ``1 + len(values)`` integers; ``values`` must have the same length on every rank).

        Call it after work that can fail on one rank only and before the next collective.

        :param error: the exception this rank caught in ``step``, or ``None``.
        :return: each rank's ``values``, in rank order.
        :raises: ``error`` itself on a rank that failed; :class:`PeerRankError` (naming the failed ranks and their
            causes) on every other rank.
        """
        if not self.is_distributed:
            if error is not None:
                raise error
            return [tuple(int(v) for v in values)]
        mine = torch.tensor([0 if error is None else 1, *[int(v) for v in values]], dtype=torch.int64)
        gathered = self.all_gather(mine.to(self.device)).cpu()
        if int(gathered[:, 0].sum()) == 0:
            return [tuple(int(v) for v in row[1:]) for row in gathered]
        messages: list = [None] * self.world_size
        self.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        raise PeerRankError(step, {r: m for r, m in enumerate(messages) if m is not None})

    def run_agreed(self, step: str, work: Callable[[], T]) -> T:
        """``work()`` on this rank, then :meth:`agree`: its result, or an error on every rank if any rank failed."""
        try:
            result, error = work(), None
        except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
            result, error = None, exc
        self.agree(step, error)
        return result

    def assert_replicated(self, x: torch.Tensor, name: str) -> None:
        """Raise on every rank if ``x`` is not the same on all ranks (one small all-gather).

        Compares shape, dtype and two checksums of the bit pattern (so a NaN equals itself, and -0.0 differs
        from 0.0); every rank sees the same gathered values, so every rank raises together and none is left
        waiting in a later collective.
        """
        if not self.is_distributed:
            return
        signature = torch.tensor(
            [x.ndim, x.numel(), stable_hash(tuple(x.shape), str(x.dtype)), *_bit_checksums(x)],
            dtype=torch.int64,
            device=self.device,
        )
        gathered = self.all_gather(signature).cpu()
        differing = [r for r in range(self.world_size) if not torch.equal(gathered[r], gathered[0])]
        if differing:
            raise ValueError(
                f"{name} must be identical on every rank, but ranks {differing} hold a different {name} than "
                "rank 0 (shape, dtype or values). Build it from the same seed on every rank "
                "(DistributedContext(seed=..., seed_offset=False)), or broadcast it from rank 0 with "
                "ctx.broadcast(...)."
            )

    def __repr__(self) -> str:
        return (
            f"DistributedContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
            f"device={self.device}, launch={self.launch.source!r})"
        )


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks set by SLURM or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _bit_checksums(x: torch.Tensor, chunk: int = 1 << 22) -> tuple[int, int]:
    """Two checksums of ``x``'s bytes (a plain and a position-weighted sum, int64 arithmetic wrapping alike on
    every rank), computed in chunks so that a large tensor needs little extra memory."""
    raw = x.detach().contiguous().reshape(-1).view(torch.uint8)
    plain = weighted = 0
    for start in range(0, raw.numel(), chunk):
        part = raw[start : start + chunk].to(torch.int64)
        weights = torch.arange(start + 1, start + 1 + part.numel(), device=part.device, dtype=torch.int64) % 65521
        plain = (plain + int(part.sum())) % (1 << 61)
        weighted = (weighted + int((part * (weights + 1)).sum())) % (1 << 61)
    return plain, weighted


def stable_hash(*parts: Any) -> int:
    """A hash equal across processes (Python's ``hash`` of strings is salted per process)."""
    text = repr(parts).encode()
    value = 0
    for byte in text:
        value = (value * 131 + byte) % 1_000_000_007
    return value


__all__ = ["DistributedContext", "LaunchError", "PeerRankError", "available_cores"]
