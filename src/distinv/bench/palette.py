"""The dashboard's colours: one per series, the same in every figure."""

from __future__ import annotations

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def colour(index: int) -> str:
    """The colour of series ``index`` (the palette repeats)."""
    return PALETTE[index % len(PALETTE)]
