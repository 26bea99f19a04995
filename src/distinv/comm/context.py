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
import socket
import sys
from collections.abc import Mapping

import torch
import torch.distributed as dist

from distinv.comm.collectives import Collectives, PeerRankError, stable_hash
from distinv.runtime.launch import Launch, LaunchError, detect_launch


class DistributedContext(Collectives):
    """Set up (or adopt) the process group, pick the device and threads, seed, and clean up what it made.

    :param backend: ``"gloo"`` or ``"nccl"``; ``None`` picks NCCL when every local rank has a GPU of its own
        and the device mode allows GPUs, else gloo.
    :param cleanup: destroy the process group on exit (only if this context created it).
    :param seed: seed for torch's generators; ``None`` leaves them alone.
    :param seed_offset: add the rank to the seed (independent streams per rank). Default ``False``: every rank
        draws the same numbers, which keeps replicated tensors identical.
    :param deterministic: ask cuDNN for deterministic kernels.
    :param device_mode: ``"cpu"``, ``"gpu"`` or ``None`` (GPU when each local rank can have its own).
    :param num_threads: torch CPU threads for this rank; ``None`` gives ``cores // local ranks`` (at least 1),
        on GPU too (the ranks of a node share its cores for their host work).
    :param timeout: seconds a collective may wait before it fails (instead of hanging forever).
    :param env: the environment to read the launch from (default ``os.environ``).
    :param time_collectives: count each collective's wall time in ``comm_seconds``, the device synchronised before
        and after it so that queued kernels are not counted as communication. ``None`` (default): on CPU (where
        it costs nothing), not on GPU, where two synchronisations per collective stall the queue (``comm_seconds``
        then stays 0; bytes are counted either way). The benchmark's runs ask for it.
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
        time_collectives: bool | None = None,
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
        self.bytes_sent = 0  # bytes this rank sent and received in collectives (see distinv.comm.collectives)
        self.bytes_received = 0
        self.cleanup = cleanup
        self.seed = seed
        self.seed_offset = seed_offset
        self.deterministic = deterministic
        self.device_mode = device_mode
        self.num_threads = num_threads
        self.timeout = timeout
        self._env = env
        self.debug = debug
        self._time_collectives = time_collectives

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
            )  # no device_id: NCCL's communicators come with the first collectives, after refuse_shared_gpus
            self.created_process_group = True
        try:
            if self.device.type == "cuda" and self.is_distributed:
                refuse_shared_gpus(gpu_identity(self.device), self.timeout)
            self.p2p_group = self._point_to_point_group() if self.is_distributed else None
        except BaseException:
            if self.created_process_group:  # __exit__ will not run: leave no group behind
                dist.destroy_process_group()
                self.created_process_group = False
            raise
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

    def _point_to_point_group(self) -> dist.ProcessGroup:
        """The group halo exchanges use: their counts differ by rank, and on the default group they would shift
        its sequence numbers, which PyTorch's collective checking compares. Every rank reduces one number on it
        first: NCCL requires the first call on a group to involve all of its ranks, and a rank with no windows
        takes no part in a halo exchange."""
        group = dist.new_group(list(range(self.world_size)), timeout=datetime.timedelta(seconds=self.timeout))
        dist.all_reduce(torch.zeros(1, device=self.device), group=group)
        return group

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
        if threads is None:  # on GPU too: the ranks of a node share its cores for their host work
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
    def time_collectives(self) -> bool:
        """Whether collectives are timed (device-synchronised) into ``comm_seconds``: as asked, else on CPU only."""
        if self._time_collectives is not None:
            return self._time_collectives
        return self.device.type != "cuda"

    @property
    def use_dist(self) -> bool:
        """deepinv's name for :attr:`is_distributed`."""
        return self.is_distributed

    def local_indices(self, num_items: int) -> list[int]:
        """Round-robin share of ``num_items`` for this rank (deepinv's sharding rule)."""
        return list(range(self.rank, num_items, self.world_size))

    def __repr__(self) -> str:
        return (
            f"DistributedContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
            f"device={self.device}, launch={self.launch.source!r})"
        )


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """``(host, GPU UUID)`` of ``device``: what tells two ranks' GPUs apart across ``CUDA_VISIBLE_DEVICES``
    masks (both see their GPU as ``cuda:0``)."""
    properties = torch.cuda.get_device_properties(device)
    uuid = getattr(properties, "uuid", None)
    return socket.gethostname(), str(uuid) if uuid is not None else f"{properties.name} pci {properties.pci_bus_id}"


def refuse_shared_gpus(identity: tuple[str, str], timeout: float = 600.0) -> None:
    """Raise on every rank if two ranks of the default group run on one GPU (NCCL would fail at its first
    collective with its duplicate-GPU error, or hang): the ranks' ``identity`` (:func:`gpu_identity`) is
    gathered over a gloo group made for the purpose, so the check works before any NCCL collective.

    :raises LaunchError: naming the ranks that share a GPU and the fix.
    """
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
    identities: list = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(identities, tuple(identity), group=group)
    finally:
        dist.destroy_process_group(group)
    ranks_of: dict[tuple[str, str], list[int]] = {}
    for rank, gpu in enumerate(identities):
        ranks_of.setdefault(tuple(gpu), []).append(rank)
    shared = {gpu: ranks for gpu, ranks in ranks_of.items() if len(ranks) > 1}
    if shared:
        which = "; ".join(f"ranks {ranks} on GPU {uuid} of {host}" for (host, uuid), ranks in shared.items())
        raise LaunchError(
            f"Two ranks share a GPU ({which}): start at most one rank per GPU (torchrun --nproc-per-node <= the "
            "GPUs of the node, srun with --gpus-per-task=1), or use device_mode='cpu' with backend='gloo'."
        )


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks set by SLURM or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


__all__ = [
    "DistributedContext",
    "LaunchError",
    "PeerRankError",
    "available_cores",
    "gpu_identity",
    "refuse_shared_gpus",
    "stable_hash",
]
