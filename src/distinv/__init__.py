"""distinv: distributed physics, data fidelity and tiled denoisers for very large inverse problems.

The two-call API, as in deepinv's ``deepinv.distributed`` module::

    from distinv import DistributedContext, distribute

    with DistributedContext(seed=0) as ctx:
        dphys = distribute(stacked_physics, ctx)
        x_adj = dphys.A_adjoint(dphys(x))
"""

from .context import DistributedContext
from .discovery import LaunchError
from .distribute import distribute
from .fidelity import DistributedDataFidelity
from .physics import DistributedStackedLinearPhysics, DistributedStackedPhysics
from .processing import DistributedProcessing, Shard
from .tiling import TilePlan

__all__ = [
    "DistributedContext",
    "DistributedDataFidelity",
    "DistributedProcessing",
    "DistributedStackedLinearPhysics",
    "DistributedStackedPhysics",
    "LaunchError",
    "Shard",
    "TilePlan",
    "distribute",
]
__version__ = "0.1.0"
