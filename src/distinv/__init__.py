"""distinv: distributed physics, data fidelity and tiled denoisers for very large inverse problems.

The two-call API, as in deepinv's ``deepinv.distributed`` module::

    from distinv import DistributedContext, distribute

    with DistributedContext(seed=0) as ctx:
        dphys = distribute(stacked_physics, ctx)
        x_adj = dphys.A_adjoint(dphys(x))
"""

from distinv import pnp  # the solvers module: distinv.pnp.pnp(...)
from distinv.comm.context import DistributedContext, PeerRankError
from distinv.comm.replicated import DistributedReplicatedParameters
from distinv.distribute import distribute
from distinv.operators.cone_beam import ConeBeam
from distinv.physics.fidelity import DistributedDataFidelity
from distinv.physics.linear import DistributedStackedLinearPhysics
from distinv.physics.stack import DistributedStackedPhysics
from distinv.placements.measurements import LocalMeasurements
from distinv.placements.tiles import LocalTiles
from distinv.runtime.launch import LaunchError
from distinv.tiling.geometry import TilePlan
from distinv.tiling.processing import DistributedProcessing
from distinv.tiling.strategies import DistributedSignalStrategy

__all__ = [
    "ConeBeam",
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
