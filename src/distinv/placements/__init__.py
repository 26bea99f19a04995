"""Placements: the types that say where data lives (DTensor-style).
:class:`~distinv.placements.measurements.LocalMeasurements` (sharded by operator),
:class:`~distinv.placements.row_bands.RowBands` (sharded by rows), :class:`~distinv.placements.tiles.LocalTiles`
(sharded by window)."""
