"""deepinv 0.5's ``deepinv.distributed.framework`` names, so that code importing from there switches by changing
the import."""

from .context import DistributedContext
from .fidelity import DistributedDataFidelity
from .linear_physics import DistributedStackedLinearPhysics
from .physics import DistributedStackedPhysics
from .processing import DistributedProcessing
from .replicated import DistributedReplicatedParameters

__all__ = [
    "DistributedContext",
    "DistributedDataFidelity",
    "DistributedProcessing",
    "DistributedReplicatedParameters",
    "DistributedStackedLinearPhysics",
    "DistributedStackedPhysics",
]
