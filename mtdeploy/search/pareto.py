"""Pareto fronts: non-dominated points, and the knapsack over a per-layer sensitivity table."""
from __future__ import annotations

from typing import Hashable, Sequence


def non_dominated(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of points no other point beats: lower-or-equal cost and higher-or-equal score,
    one of them strictly. Ties (same cost and score) keep the first. Sorted by cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i], i))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front


def knapsack_front(tables: Sequence[dict[Hashable, tuple[float, float]]],
                   max_states: int = 512) -> list[tuple[float, float, tuple]]:
    """Exact multi-objective knapsack over separable (cost, loss) tables, one per layer.

    ``tables[l][choice] = (cost, loss)``; a configuration's cost and loss are the sums over
    layers (the additive sensitivity model). Returns the (cost, loss, choices) front, cheapest
    first. Stages keep only non-dominated partial sums; if a stage holds more than
    ``max_states`` (real-valued costs), it keeps that many spread evenly along cost, extremes
    included, so the result stays a good front but may miss points between them.
    """
    states: list[tuple[float, float, tuple]] = [(0.0, 0.0, ())]
    for table in tables:
        merged = [(c + dc, l + dl, chosen + (choice,))
                  for c, l, chosen in states for choice, (dc, dl) in table.items()]
        keep = non_dominated([m[0] for m in merged], [-m[1] for m in merged])
        states = [merged[i] for i in keep]
        if len(states) > max_states:
            step = (len(states) - 1) / (max_states - 1)
            states = [states[round(k * step)] for k in range(max_states)]
    return states
