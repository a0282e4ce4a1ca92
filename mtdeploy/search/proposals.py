"""Which levels configurations the search measures and then fine-tunes (engine steps 1-3):
per-layer sensitivity, greedy and knapsack proposals, and the shortlist for fine-tuning.

Every function reads measurements through ``calib(config) -> {"loss", "acc", "synops"}``,
which the engine caches, so the choice of configurations stays apart from torch; ``track``
wraps a loop in a progress bar (or not).
"""
from __future__ import annotations

from typing import Callable, Iterable

from mtdeploy.search.budget import Budget
from mtdeploy.search.costs import latency
from mtdeploy.search.pareto import knapsack_front, non_dominated

Config = tuple[int, ...]
Calib = Callable[[Config], dict[str, float]]
Track = Callable[[Iterable, str], Iterable]


def sensitivity(layers, choices, top: Config, calib: Calib,
                track: Track) -> dict[str, dict[int, dict[str, float]]]:
    """Step 1: the calibration loss and accuracy when one layer drops from ``top`` to each
    choice, the others kept at the top (the additive model the knapsack sums)."""
    base = calib(top)
    table: dict[str, dict[int, dict[str, float]]] = {}
    jobs = [(k, c) for k in range(len(layers)) for c in choices]
    for k, c in track(jobs, "search: sensitivity"):
        config = top[:k] + (c,) + top[k + 1:]
        m = calib(config)
        table.setdefault(layers[k], {})[c] = {
            "loss": m["loss"], "acc": m["acc"],
            "delta_loss": m["loss"] - base["loss"], "delta_acc": m["acc"] - base["acc"]}
    return table


def greedy(layers, choices, top: Config, calib: Calib, cost: Callable[[Config], float],
           track: Track, axis: str) -> list[Config]:
    """Descent from all-top: each step lowers the one layer (to the next smaller choice) with
    the least loss increase per unit of cost saved; returns the whole path."""
    path = [top]
    current = top
    steps = sum(len(choices) - 1 for _ in layers)
    for _ in track(range(steps), f"search: greedy ({axis})"):
        moves = []
        for k, level in enumerate(current):
            idx = choices.index(level)
            if idx == 0:
                continue
            nxt = current[:k] + (choices[idx - 1],) + current[k + 1:]
            saved = cost(current) - cost(nxt)
            rise = calib(nxt)["loss"] - calib(current)["loss"]
            # Moves that save nothing are only worth taking if they lower the loss.
            score = rise / saved if saved > 1e-12 else (float("-inf") if rise < 0 else float("inf"))
            moves.append((score, k, nxt))
        if not moves:
            break
        current = min(moves, key=lambda m: (m[0], m[1]))[2]
        path.append(current)
    return path


def knapsack(layers, choices, table: dict[str, dict[int, dict[str, float]]],
             unit_cost: Callable[[int, int], float], limit: int = 32) -> list[Config]:
    """The exact front of summed sensitivity loss vs summed cost (``unit_cost(layer index,
    level)``), thinned to ``limit`` configurations."""
    tables = [{c: (unit_cost(k, c), table[layer][c]["delta_loss"]) for c in choices}
              for k, layer in enumerate(layers)]
    return [config for _, _, config in thin(knapsack_front(tables), limit)]


def thin(points: list, limit: int) -> list:
    """At most ``limit`` points spread evenly along the list, both ends kept when limit >= 2."""
    if len(points) <= limit:
        return points
    if limit <= 1:
        return points[:max(limit, 0)]
    step = (len(points) - 1) / (limit - 1)
    return [points[round(k * step)] for k in range(limit)]


def shortlist(proposals, measured, choices, n_layers: int, max_finetune: int,
              budget: Budget | None, depth: int = 3, within_budget: int = 3,
              per_uniform: int = 0, anchors=None) -> list[Config]:
    """Step 3, what gets fine-tuned: the uniform configurations; the first ``depth`` Pareto
    layers (the front, then the front of what is left, ...) of calibration loss vs latency and
    vs SynOps, thinned to ``max_finetune`` in all; the ``within_budget`` best proposals
    inside a latency or SynOps budget; and ``per_uniform`` best mixed proposals at or below
    each uniform configuration's (or those with levels in ``anchors``) sum T and SynOps. Layers beyond the first are kept because
    fine-tuning reorders near neighbours."""
    configs = list(proposals)
    uniform = [(c,) * n_layers for c in choices]
    cost_of = {"sum_T": lambda c: float(sum(c)), "synops": lambda c: measured[c]["synops"]}
    room = max(2, (max_finetune - len(uniform) - within_budget) // 2)
    picked: list[Config] = []
    for cost in cost_of.values():
        layers = _pareto_layers(configs, cost, lambda c: measured[c]["loss"], depth)
        picked += thin(sorted(layers, key=lambda c: (cost(c), c)), room)
    if budget is not None and budget.metric in ("mean_T", "sum_T", "max_T", "synops"):
        def fits(c):
            return budget.allows({**latency(dict(enumerate(c))), "synops": measured[c]["synops"]})

        inside = sorted((c for c in configs if fits(c)), key=lambda c: (measured[c]["loss"], c))
        picked += inside[:within_budget]
    if per_uniform:
        at = [u for u in uniform if anchors is None or u[0] in set(anchors)]
        picked += _at_uniform_costs(configs, at, cost_of, measured, per_uniform)
    ordered = []
    for config in uniform + sorted(picked, key=lambda c: (sum(c), c)):
        if config not in ordered:
            ordered.append(config)
    return ordered


def _at_uniform_costs(configs, uniform, cost_of, measured, count: int) -> list[Config]:
    """For each uniform configuration and each cost, the ``count`` mixed configurations with
    the lowest calibration loss that cost no more."""
    mixed = [c for c in configs if len(set(c)) > 1]
    picked = []
    for u in uniform:
        for cost in cost_of.values():
            inside = sorted((c for c in mixed if cost(c) <= cost(u) + 1e-9),
                            key=lambda c: (measured[c]["loss"], c))
            picked += inside[:count]
    return picked


def _pareto_layers(configs: list[Config], cost, loss, depth: int) -> list[Config]:
    """The first ``depth`` non-dominated layers of ``configs`` (loss vs cost), in order."""
    left = list(configs)
    layers: list[Config] = []
    for _ in range(depth):
        if not left:
            break
        keep = non_dominated([cost(c) for c in left], [-loss(c) for c in left])
        front = [left[i] for i in keep]
        layers += front
        left = [c for c in left if c not in set(front)]
    return layers
