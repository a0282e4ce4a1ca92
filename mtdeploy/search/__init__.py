"""Per-layer timestep search: levels (= SNN time steps) and thresholds under a budget.

``search(graph, calib_x, calib_y, val_x, val_y, budget="mean-T=4")`` returns a
:class:`SearchResult` holding every fine-tuned configuration, its Pareto fronts (accuracy vs
mean T, sum T, SynOps/energy, cores when a target is named) and the chosen one;
``GraphModule`` is the trainable torch view of an IR graph that the search tunes and ships.
"""
from mtdeploy.search.budget import Budget, parse_budget
from mtdeploy.search.engine import LEVEL_CHOICES, Candidate, SearchResult, search
from mtdeploy.search.graph_module import GraphModule

__all__ = ["Budget", "Candidate", "GraphModule", "LEVEL_CHOICES", "SearchResult", "parse_budget",
           "search"]
