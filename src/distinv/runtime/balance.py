"""Assign work items (operators, tiles) to ranks so that the most loaded rank finishes first possible.

The assignment is a pure function of its arguments, so every rank computes the same one without talking.
"""

from __future__ import annotations

from collections.abc import Sequence


def assign_by_cost(costs: Sequence[float] | None, num_items: int, world_size: int) -> list[list[int]]:
    """Split items ``0..num_items-1`` over ``world_size`` ranks; returns each rank's sorted item indices.

    With ``costs`` (one non-negative number per item, any unit), the longest-processing-time rule: items in
    decreasing cost go to the least loaded rank (ties to the lower rank), which keeps the largest load within
    4/3 of the optimum. Without costs (unknown), round-robin: item ``i`` goes to rank ``i % world_size``,
    which is also what the rule gives for equal costs.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: it must be at least 1.")
    if costs is None:
        return [list(range(rank, num_items, world_size)) for rank in range(world_size)]
    if len(costs) != num_items:
        raise ValueError(
            f"operator_costs has {len(costs)} entries for {num_items} operators: give one cost per operator (or None)."
        )
    if any(not (c >= 0) for c in costs):  # also rejects NaN
        raise ValueError(f"operator_costs must be non-negative numbers, got {list(costs)}.")
    loads = [0.0] * world_size
    counts = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for item in sorted(range(num_items), key=lambda i: (-float(costs[i]), i)):
        rank = min(range(world_size), key=lambda r: (loads[r], counts[r], r))
        loads[rank] += float(costs[item])
        counts[rank] += 1
        owned[rank].append(item)
    return [sorted(items) for items in owned]


def assign_balanced_counts(costs: Sequence[float], world_size: int) -> list[int]:
    """The rank of each item such that ranks' item counts differ by at most one and costs are spread.

    Items in decreasing cost are dealt out in a snake order (ranks 0..W-1, then W-1..0, ...), so each round
    gives every rank one item and the rank that got the costliest item of a round gets the cheapest of the next.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: it must be at least 1.")
    order = sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i))
    ranks = [0] * len(costs)
    for position, item in enumerate(order):
        round_, offset = divmod(position, world_size)
        ranks[item] = offset if round_ % 2 == 0 else world_size - 1 - offset
    return ranks
