"""Real gloo process groups on localhost, kept alive across many checks.

Spawning ranks costs seconds (torch and deepinv imports), so a :class:`RankPool` starts ``world_size``
processes once; each joins the group through :class:`distinv.DistributedContext` as under torchrun, then runs
the check functions it is sent. A check is a module-level function ``check(ctx, *args)`` (spawned processes
import it by name); it runs on every rank and its per-rank return values come back as a list.

A rank that raises fails the call with its rank and traceback; the pool is then replaced, since the others
may be stuck in a collective until the group's timeout.

Every group runs with PyTorch's own collective checking (``TORCH_DISTRIBUTED_DEBUG=DETAIL``): each collective's
kind, shape and order are compared across ranks, so a rank out of step fails the test at once, naming both sides,
instead of pairing with another collective or waiting for the timeout.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any

from distinv.bench.launch import free_port

GROUP_TIMEOUT_S = 60.0


class RankFailure(AssertionError):
    """A check raised (or timed out) on at least one rank."""


def _worker(rank: int, world_size: int, port: int, inbox, outbox) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        TORCH_DISTRIBUTED_DEBUG="DETAIL",
    )
    import torch.distributed as dist

    from distinv import DistributedContext

    # torch read TORCH_DISTRIBUTED_DEBUG when this process imported it (unpickling this function imports torch),
    # before the line above set it: set the level itself, or the groups would run unchecked
    dist.set_debug_level(dist.DebugLevel.DETAIL)
    try:
        with DistributedContext(device_mode="cpu", num_threads=1, timeout=GROUP_TIMEOUT_S) as ctx:
            outbox.put((rank, True, "ready"))
            while True:
                job = inbox.get()
                if job is None:
                    break
                fn, args = job
                try:
                    outbox.put((rank, True, fn(ctx, *args)))
                except BaseException:  # noqa: BLE001 - report everything to the parent
                    outbox.put((rank, False, traceback.format_exc()))
    except BaseException:  # noqa: BLE001
        outbox.put((rank, False, traceback.format_exc()))


class RankPool:
    """``world_size`` live ranks in one gloo process group."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        context = mp.get_context("spawn")
        port = free_port()
        self.inboxes = [context.Queue() for _ in range(world_size)]
        self.outbox = context.Queue()
        self.processes = [
            context.Process(target=_worker, args=(r, world_size, port, self.inboxes[r], self.outbox), daemon=True)
            for r in range(world_size)
        ]
        for p in self.processes:
            p.start()
        self._collect(timeout=180.0)
        self.healthy = True

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 120.0) -> list[Any]:
        """Run ``fn(ctx, *args)`` on every rank; return the results in rank order."""
        for inbox in self.inboxes:
            inbox.put((fn, args))
        return self._collect(timeout)

    def _collect(self, timeout: float) -> list[Any]:
        results: dict[int, Any] = {}
        failures: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while len(results) + len(failures) < self.world_size:
            try:
                rank, ok, value = self.outbox.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.healthy = False
                missing = sorted(set(range(self.world_size)) - set(results) - set(failures))
                answered = "".join(
                    f"\n--- rank {r} of {self.world_size} failed:\n{tb}" for r, tb in sorted(failures.items())
                )
                raise RankFailure(f"ranks {missing} did not answer within {timeout:.0f} s{answered}") from None
            (results if ok else failures)[rank] = value
        if failures:
            self.healthy = False
            text = "\n".join(f"--- rank {r} of {self.world_size} failed:\n{tb}" for r, tb in sorted(failures.items()))
            raise RankFailure(text)
        return [results[r] for r in range(self.world_size)]

    def close(self) -> None:
        for inbox in self.inboxes:
            try:
                inbox.put(None)
            except (OSError, ValueError):
                pass
        for p in self.processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
