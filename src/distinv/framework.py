"""deepinv 0.5's ``deepinv.distributed.framework`` names, so that code importing from there switches by changing
the import."""

from distinv.comm.context import DistributedContext
from distinv.comm.replicated import DistributedReplicatedParameters
from distinv.physics.fidelity import DistributedDataFidelity
from distinv.physics.linear import DistributedStackedLinearPhysics
from distinv.physics.stack import DistributedStackedPhysics
from distinv.tiling.processing import DistributedProcessing

__all__ = [
    "DistributedContext",
    "DistributedDataFidelity",
    "DistributedProcessing",
    "DistributedReplicatedParameters",
    "DistributedStackedLinearPhysics",
    "DistributedStackedPhysics",
]
