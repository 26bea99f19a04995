"""The collectives the engine uses, as methods of :class:`~distinv.DistributedContext`, and the agreement that
keeps ranks in step.

Every method is a no-op (the identity) in a single process, so the engine calls them unconditionally, and each
collective runs inside :meth:`Collectives.communicating`, which counts its wall time in ``comm_seconds`` and the
bytes this rank sends and receives in ``bytes_sent`` and ``bytes_received``.

Bytes are counted as a bandwidth-optimal (ring) algorithm moves them for this rank, whatever the backend does
internally, so they compare engines and world sizes: an all-reduce of ``n`` bytes sends and receives
``2 (p - 1) / p * n``; an all-gather of ``n`` bytes per rank sends and receives ``(p - 1) * n``; a broadcast of
``n`` bytes is ``n`` sent by its source and ``n`` received by every other rank; point-to-point calls count
exactly what they carry; objects count their pickled size the same way.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from distinv.runtime.timing import DeviceTimer

T = TypeVar("T")


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def ring_all_reduce_bytes(nbytes: int, world_size: int) -> int:
    """Bytes one rank sends (and receives) in a ring all-reduce of ``nbytes``: ``2 (p - 1) / p * nbytes``."""
    return 2 * (world_size - 1) * int(nbytes) // world_size


def ring_all_gather_bytes(nbytes: int, world_size: int) -> int:
    """Bytes one rank sends (and receives) in an all-gather of ``nbytes`` per rank: ``(p - 1) * nbytes``."""
    return (world_size - 1) * int(nbytes)


class PeerRankError(RuntimeError):
    """Raised on every rank that did not fail itself when another rank failed in the same step.

    :ivar failures: ``{rank: "ExceptionType: message"}`` of the ranks that failed.
    """

    def __init__(self, step: str, failures: dict[int, str]):
        self.step, self.failures = step, failures
        causes = "; ".join(f"rank {r}: {m}" for r, m in sorted(failures.items()))
        super().__init__(f"{step} failed on rank(s) {sorted(failures)}: {causes}")


class Collectives:
    """Mixed into :class:`~distinv.DistributedContext`, which provides ``is_distributed``, ``rank``,
    ``world_size``, ``device``, ``comm_seconds``, ``bytes_sent`` and ``bytes_received``."""

    @contextmanager
    def communicating(self, sent: int = 0, received: int = 0) -> Iterator[None]:
        """Adds the block's wall time to :attr:`comm_seconds` (after the device finished its work, so that
        queued GPU kernels are not counted as communication; only where ``time_collectives``) and ``sent`` /
        ``received`` bytes to :attr:`bytes_sent` / :attr:`bytes_received`. Every collective of the engine runs in
        one."""
        self.bytes_sent += int(sent)
        self.bytes_received += int(received)
        if not getattr(self, "time_collectives", True):  # no synchronisation (a GPU context by default)
            yield
            return
        timer = DeviceTimer(self.device)
        try:
            with timer:
                yield
        finally:
            self.comm_seconds += timer.seconds

    def check_device(self, collective: str, *tensors: torch.Tensor) -> None:
        """In debug mode (``DistributedContext(debug=True)``), refuse a tensor handed to ``collective`` that is not
        on this rank's device: NCCL takes only tensors on the rank's GPU, and gloo, which takes any, would hide such
        a tensor until the run moves to GPUs.

        :raises RuntimeError: naming the collective and both devices.
        """
        if getattr(self, "debug", False):
            for t in tensors:
                if t.device != self.device:
                    raise RuntimeError(
                        f"{collective}: a tensor on {t.device} was handed to a collective of a rank on {self.device} "
                        "(NCCL takes only tensors on the rank's GPU): move it to ctx.device first."
                    )

    def all_reduce_bytes(self, nbytes: int) -> int:
        """Bytes one rank sends (and receives) in an all-reduce of ``nbytes`` (ring: ``2 (p - 1) / p``)."""
        return ring_all_reduce_bytes(nbytes, self.world_size)

    def all_gather_bytes(self, nbytes: int) -> int:
        """Bytes one rank sends (and receives) in an all-gather of ``nbytes`` per rank (``(p - 1) * nbytes``)."""
        return ring_all_gather_bytes(nbytes, self.world_size)

    def all_reduce(self, x: torch.Tensor, op: Any = None) -> torch.Tensor:
        """Sum (or ``op``) ``x`` over ranks, in place; complex tensors are reduced as pairs of reals."""
        if self.is_distributed:
            self.check_device("all_reduce", x)
            target = torch.view_as_real(x) if x.is_complex() else x
            moved = self.all_reduce_bytes(_nbytes(target))
            with self.communicating(moved, moved):
                dist.all_reduce(target, op=dist.ReduceOp.SUM if op is None else op)
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite ``x`` on every rank with rank ``src``'s, in place."""
        if self.is_distributed:
            self.check_device("broadcast", x)
            mine = self.rank == src
            with self.communicating(_nbytes(x) if mine else 0, 0 if mine else _nbytes(x)):
                dist.broadcast(torch.view_as_real(x) if x.is_complex() else x, src=src)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Stack every rank's ``x`` (same shape everywhere): shape ``(world_size, *x.shape)``."""
        if not self.is_distributed:
            return x.unsqueeze(0)
        self.check_device("all_gather", x)
        out = torch.empty((self.world_size, *x.shape), dtype=x.dtype, device=x.device)
        moved = self.all_gather_bytes(_nbytes(x))
        with self.communicating(moved, moved):
            dist.all_gather(list(out.unbind(0)), x.contiguous())
        return out

    def all_gather_object(self, obj_list: list, obj: Any) -> None:
        """Fill ``obj_list`` (length ``world_size``) with every rank's picklable ``obj``."""
        if self.is_distributed:
            with self.communicating():
                dist.all_gather_object(obj_list, obj)
            # torch pads every rank's pickle to the largest one
            moved = self.all_gather_bytes(max(len(pickle.dumps(o)) for o in obj_list))
            self.bytes_sent, self.bytes_received = self.bytes_sent + moved, self.bytes_received + moved
        else:
            obj_list[0] = obj

    def broadcast_object_list(self, object_list: list, src: int = 0) -> list:
        if self.is_distributed:
            with self.communicating():
                dist.broadcast_object_list(object_list, src=src)
            size = sum(len(pickle.dumps(o)) for o in object_list)
            if self.rank == src:
                self.bytes_sent += size
            else:
                self.bytes_received += size
        return object_list

    def broadcast_shared(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (a factory's shared object): ``src`` keeps its own; the others
        receive a copy whose tensors lie on their own GPU where the sender's lay on a GPU (a plain pickle would put
        them on the sender's GPU index), and on the CPU otherwise."""
        if not self.is_distributed:
            return obj
        payload = [None]
        if self.rank == src:
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            payload = [buffer.getvalue()]
        received = self.broadcast_object_list(payload, src=src)[0]
        if self.rank == src:
            return obj
        device = self.device

        def place(storage: Any, location: str) -> Any:
            return storage.cuda(device.index) if location.startswith("cuda") and device.type == "cuda" else storage

        return torch.load(io.BytesIO(received), map_location=place, weights_only=False)

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
        result, error = attempt(work)
        self.agree(step, error)
        return result

    def run_agreeing(
        self, step: str, work: Callable[[], tuple[T, Sequence[int]]], width: int
    ) -> tuple[T, list[tuple[int, ...]]]:
        """``work()`` on this rank, returning its result and ``width`` integers for the others (e.g. a flag every
        rank must combine), then :meth:`agree` on them: the result and every rank's integers, or an error on every
        rank if any rank failed (a failed rank contributes zeros)."""
        outcome, error = attempt(work)
        result, values = (None, [0] * width) if error is not None else outcome
        return result, self.agree(step, error, values)

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


def attempt(work: Callable[[], T]) -> tuple[T | None, Exception | None]:
    """``(work(), None)``, or ``(None, the exception)``: a failure kept to be agreed on (:meth:`Collectives.agree`)
    instead of raised on this rank alone before the other ranks' next collective."""
    try:
        return work(), None
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        return None, exc


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
