"""What a search returns: fine-tuned candidates, their Pareto fronts, the chosen configuration.

Kept apart from the engine so that readers of a result (the CLI, plots, benchmarks) need not
load the search itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mtdeploy.ir.graph import Graph
from mtdeploy.metrics.energy import E_AC_45NM_PJ, E_MAC_45NM_PJ
from mtdeploy.search.budget import Budget
from mtdeploy.search.graph_module import GraphModule
from mtdeploy.search.pareto import non_dominated

COST_METRICS = ("mean_T", "sum_T", "max_T", "synops", "energy_pj", "cores")


@dataclass(eq=False)   # identity: candidates are compared as objects, never by value
class Candidate:
    """One levels configuration after threshold fine-tuning, with its measured costs."""

    levels: dict[str, int]
    proposed_by: list[str]
    thresholds: dict[str, float] = field(default_factory=dict)
    costs: dict[str, Any] = field(default_factory=dict)     # COST_METRICS (synops per sample)
    calib_loss: float = float("nan")
    calib_acc: float = float("nan")
    val_loss: float = float("nan")
    val_acc: float = float("nan")
    before_finetune: dict[str, float] = field(default_factory=dict)   # calib loss/acc
    fits_target: bool | None = None      # the budget checker's verdict (None: not checked)
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def is_uniform(self) -> bool:
        return len(set(self.levels.values())) == 1

    def key(self) -> tuple[int, ...]:
        return tuple(self.levels.values())

    def to_json(self) -> dict:
        return {"levels": dict(self.levels), "uniform": self.is_uniform,
                "proposed_by": list(self.proposed_by),
                "thresholds": {k: round(v, 6) for k, v in self.thresholds.items()},
                **{k: self.costs.get(k) for k in COST_METRICS},
                "val_acc": self.val_acc, "val_loss": self.val_loss,
                "calib_acc": self.calib_acc, "calib_loss": self.calib_loss,
                "fits_target": self.fits_target,
                "before_finetune": dict(self.before_finetune)}


@dataclass
class SearchResult:
    """Every fine-tuned candidate with what was measured on the way, so fronts on any cost can
    be drawn afterwards without searching again."""

    chosen: Candidate
    candidates: list[Candidate]          # every fine-tuned configuration (uniform ones too)
    budget: Budget | None
    sensitivity: dict[str, dict[int, dict[str, float]]]
    input_model: dict                    # the model as given: levels, thresholds, val accuracy
    settings: dict
    graph: Graph                         # the chosen configuration, as pre-conversion IR
    base_graph: Graph = field(repr=False)

    def front(self, metric: str, uniform: bool | None = None) -> list[Candidate]:
        """Non-dominated candidates (validation accuracy up, ``metric`` down), cheapest first.

        ``uniform=False``: mixed configurations only; ``True``: uniform only; None: all.
        """
        pool = [c for c in self.candidates if c.costs.get(metric) is not None
                and (uniform is None or c.is_uniform == uniform)]
        keep = non_dominated([c.costs[metric] for c in pool], [c.val_acc for c in pool])
        return [pool[i] for i in keep]

    @property
    def uniform(self) -> list[Candidate]:
        return sorted((c for c in self.candidates if c.is_uniform), key=lambda c: c.costs["sum_T"])

    def module(self, candidate: Candidate | None = None) -> GraphModule:
        """A fresh GraphModule carrying ``candidate``'s (default: the chosen) configuration."""
        return materialise(self.base_graph, candidate or self.chosen)

    def to_json(self) -> dict:
        metrics = [m for m in COST_METRICS
                   if any(c.costs.get(m) is not None for c in self.candidates)]
        index = {id(c): k for k, c in enumerate(self.candidates)}
        return {
            "budget": str(self.budget) if self.budget else None,
            "chosen": index[id(self.chosen)],
            "layers": list(self.chosen.levels),
            "level_choices": self.settings["level_choices"],
            "settings": self.settings,
            "input_model": self.input_model,
            "points": [c.to_json() for c in self.candidates],
            "fronts": {m: {"all": [index[id(c)] for c in self.front(m)],
                           "mixed_only": [index[id(c)] for c in self.front(m, uniform=False)],
                           "uniform": [index[id(c)] for c in self.front(m, uniform=True)]}
                       for m in metrics},
            "proposal_methods": self._method_summary(),
            "sensitivity": {layer: {str(lv): v for lv, v in row.items()}
                            for layer, row in self.sensitivity.items()},
            "notes": {"synops": "per validation sample, counted as the reference simulator does",
                      "energy_pj": f"E_AC {E_AC_45NM_PJ:g} pJ per SynOp + E_MAC "
                                   f"{E_MAC_45NM_PJ:g} pJ per input-layer MAC (the papers' "
                                   "45 nm convention), per sample",
                      "accuracy": "val_acc is on the validation split, after threshold "
                                  "fine-tuning on the calibration split"},
        }

    def _method_summary(self) -> dict:
        """Per proposal method: candidates it proposed, and mean-T front points among them
        (how close greedy/knapsack get to the exhaustive front on small models)."""
        front = {id(c) for c in self.front("mean_T")}
        methods = sorted({m for c in self.candidates for m in c.proposed_by})
        return {m: {"candidates": sum(m in c.proposed_by for c in self.candidates),
                    "on_mean_T_front": sum(m in c.proposed_by and id(c) in front
                                           for c in self.candidates),
                    "mean_T_front_size": len(front)} for m in methods}


def materialise(base_graph: Graph, candidate: Candidate) -> GraphModule:
    """A fresh module in ``candidate``'s configuration: candidates keep values, not modules,
    so that many of them cost no torch state."""
    module = GraphModule(base_graph)
    if candidate.weights is not None:
        module.load_state_dict(candidate.weights)
    module.set_levels(candidate.levels)
    module.set_thresholds(candidate.thresholds)
    return module

