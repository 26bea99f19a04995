"""Starting N local ranks of a script with ``torch.distributed.run`` (torchrun)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence


def free_port() -> int:
    """A TCP port free on localhost right now (for MASTER_PORT; torchrun's port 0 does not rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(script: str, nproc: int, script_args: Sequence[str] = ()) -> list[str]:
    """The command that runs ``script`` on ``nproc`` local ranks.

    Pass script options as ``--name=value``: torchrun's own parser would take a separate ``--nproc`` for an
    abbreviation of its ``--nproc-per-node``.
    """
    if nproc < 1:
        raise ValueError(f"nproc={nproc}: it must be at least 1.")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        script,
        *script_args,
    ]
