"""Where a distributed stack's measurements live: a marked list of this rank's entries.

A list of measurements is either **replicated** (all ``K`` entries, the same on every rank, as ``A(x)``
returns them) or **sharded by operator** (this rank's entries only, as ``A(x, gather=False)`` returns them).
The two can have the same length (a rank owning ``K`` operators, or ``K`` = the rank's count by chance), so the
placement is never guessed from a length: a sharded list is a :class:`LocalMeasurements`, which carries its
partition, as PyLops-MPI's ``DistributedArray`` carries its own. Any other list must hold all ``K`` entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from deepinv.utils.tensorlist import TensorList


class LocalMeasurements(list):
    """This rank's measurements of a distributed stack, in the order of ``indexes``.

    A plain ``list`` (deepinv's ``gather=False`` returns one), marked with its partition.

    :param items: one tensor per operator this rank owns.
    :param indexes: the global index of each item's operator (``physics.local_indexes``).
    :param num_operators: ``K``, the number of operators of the whole stack.
    :param gatherer: how the stack that made them gathers all ``K`` (their :meth:`gather`).
    """

    def __init__(
        self,
        items: Iterable[torch.Tensor],
        indexes: Sequence[int],
        num_operators: int,
        gatherer: Callable[[LocalMeasurements], TensorList] | None = None,
    ):
        super().__init__(items)
        self.indexes = tuple(int(i) for i in indexes)
        self.num_operators = int(num_operators)
        self.gatherer = gatherer
        if len(self) != len(self.indexes):
            raise ValueError(
                f"LocalMeasurements got {len(self)} tensors for {len(self.indexes)} operator indexes: give one "
                "tensor per index."
            )

    def gather(self) -> TensorList:
        """All ``K`` measurements on every rank, in operator order (replicated; one all-gather). Call it on every
        rank.

        :raises ValueError: for measurements marked by hand without their physics (``physics.local_measurements``
            marks them with it).
        """
        if self.gatherer is None:
            raise ValueError(
                "these LocalMeasurements do not know their physics: mark them with physics.local_measurements(list)."
            )
        return self.gatherer(self)

    def __repr__(self) -> str:
        return f"LocalMeasurements(indexes={self.indexes}, num_operators={self.num_operators}, items={len(self)})"


def select_local(
    y: Any, local_indexes: Sequence[int], num_operators: int, name: str = "y"
) -> tuple[list[torch.Tensor], tuple | None]:
    """This rank's entries of measurements ``y`` (replicated, all ``K``; or this rank's
    :class:`LocalMeasurements`), and a signature of ``y`` that every rank shares: the shapes and dtypes of all
    ``K`` entries of a replicated ``y``; ``None`` for a ``LocalMeasurements``, whose shapes differ between ranks,
    so that nothing derived from them may be cached.

    :raises TypeError: for a single tensor or a non-list.
    :raises ValueError: for a plain list of another length than ``K``, or another partition's ``LocalMeasurements``.
    """
    if isinstance(y, LocalMeasurements):
        if y.num_operators != num_operators or list(y.indexes) != list(local_indexes):
            raise ValueError(
                f"{name} holds this rank's measurements of operators {list(y.indexes)} of {y.num_operators}, but "
                f"this rank owns operators {list(local_indexes)} of {num_operators}: pass the LocalMeasurements "
                "that this physics' A(x, gather=False) returned."
            )
        return list(y), None
    if isinstance(y, torch.Tensor) and not isinstance(y, TensorList):
        raise TypeError(
            f"{name} must be a TensorList or list with one tensor per operator ({num_operators}), got a single tensor."
        )
    if not isinstance(y, (list, tuple, TensorList)):
        raise TypeError(f"{name} must be a list or TensorList of measurements, got {type(y).__name__}.")
    if len(y) != num_operators:
        raise ValueError(
            f"{name} has {len(y)} entries but there are {num_operators} operators: pass all of them (as A(x) "
            "returns), or this rank's part as A(x, gather=False) returns it (a LocalMeasurements; mark a list of "
            "your own with physics.local_measurements(list))."
        )
    return [y[i] for i in local_indexes], tuple(call_signature(t) for t in y)


def call_signature(x: torch.Tensor) -> tuple:
    """Shape and dtype: what a call's cached layouts depend on."""
    return (tuple(x.shape), x.dtype)


@dataclass
class LocalRun:
    """A rank's results of one call: ``terms`` (one per operator it owns), ``key`` (the signature of a replicated
    ``y``; ``None`` for a local one) and ``anchor`` (set when the call is differentiable: see
    :mod:`distinv.comm.autograd`)."""

    terms: list[torch.Tensor]
    key: tuple | None
    anchor: torch.Tensor | None
