"""distinv: distributed physics, data fidelity and tiled denoisers for very large inverse problems.

The two-call API, as in deepinv's ``deepinv.distributed`` module::

    from distinv import DistributedContext, distribute

    with DistributedContext(seed=0) as ctx:
        dphys = distribute(stacked_physics, ctx)
        x_adj = dphys.A_adjoint(dphys(x))
"""

from . import pnp  # the solvers module: distinv.pnp.pnp(...)
from .context import DistributedContext, PeerRankError
from .discovery import LaunchError
from .distribute import distribute
from .executor import LocalTiles
from .fidelity import DistributedDataFidelity
from .linear_physics import DistributedStackedLinearPhysics
from .physics import DistributedStackedPhysics
from .placement import LocalMeasurements
from .processing import DistributedProcessing
from .replicated import DistributedReplicatedParameters
from .strategies import DistributedSignalStrategy
from .tiling import TilePlan

__all__ = [
    "DistributedContext",
    "DistributedDataFidelity",
    "DistributedProcessing",
    "DistributedReplicatedParameters",
    "DistributedSignalStrategy",
    "DistributedStackedLinearPhysics",
    "DistributedStackedPhysics",
    "LaunchError",
    "LocalMeasurements",
    "LocalTiles",
    "PeerRankError",
    "TilePlan",
    "distribute",
    "pnp",
]
__version__ = "0.1.0"
