"""Where a distributed stack's measurements live: a marked list of this rank's entries.

A list of measurements is either **replicated** (all ``K`` entries, the same on every rank, as ``A(x)``
returns them) or **sharded by operator** (this rank's entries only, as ``A(x, gather=False)`` returns them).
The two can have the same length (a rank owning ``K`` operators, or ``K`` = the rank's count by chance), so the
placement is never guessed from a length: a sharded list is a :class:`LocalMeasurements`, which carries its
partition, as PyLops-MPI's ``DistributedArray`` carries its own. Any other list must hold all ``K`` entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


class LocalMeasurements(list):
    """This rank's measurements of a distributed stack, in the order of ``indexes``.

    A plain ``list`` (deepinv's ``gather=False`` returns one), marked with its partition.

    :param items: one tensor per operator this rank owns.
    :param indexes: the global index of each item's operator (``physics.local_indexes``).
    :param num_operators: ``K``, the number of operators of the whole stack.
    """

    def __init__(self, items: Iterable[torch.Tensor], indexes: Sequence[int], num_operators: int):
        super().__init__(items)
        self.indexes = tuple(int(i) for i in indexes)
        self.num_operators = int(num_operators)
        if len(self) != len(self.indexes):
            raise ValueError(
                f"LocalMeasurements got {len(self)} tensors for {len(self.indexes)} operator indexes: give one "
                "tensor per index."
            )

    def __repr__(self) -> str:
        return f"LocalMeasurements(indexes={self.indexes}, num_operators={self.num_operators}, items={len(self)})"
