"""Per-layer timestep search: levels (= SNN time steps) and thresholds under a budget.

``search(graph, calib_x, calib_y, val_x, val_y, budget="mean-T=4")`` (or with a
:class:`SearchSettings`) returns a :class:`SearchResult` holding every fine-tuned
configuration, its Pareto fronts (accuracy vs mean T, sum T, SynOps/energy, cores when a target
is named) and the chosen one; ``GraphModule`` is the trainable torch view of an IR graph that
the search tunes and ships. Everything here takes and returns values; reading and writing
files is the caller's (the ``mtdeploy search`` verb: :mod:`mtdeploy.cli.search`).
"""
from mtdeploy.search.budget import Budget, parse_budget
from mtdeploy.search.data import split_calibration
from mtdeploy.search.engine import LEVEL_CHOICES, SearchSettings, search
from mtdeploy.search.graph_module import GraphModule
from mtdeploy.search.result import Candidate, SearchResult

__all__ = ["Budget", "Candidate", "GraphModule", "LEVEL_CHOICES", "SearchResult",
           "SearchSettings", "parse_budget", "search", "split_calibration"]
