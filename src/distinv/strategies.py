"""deepinv 0.5's ``deepinv.distributed.strategies`` names, so that code importing from there switches by changing
the import. The strategy interface and the built-in tiling live in :mod:`distinv.tiling.strategies`."""

from distinv.tiling.strategies import DistributedSignalStrategy, TilingStrategy, create_strategy

__all__ = ["DistributedSignalStrategy", "TilingStrategy", "create_strategy"]
