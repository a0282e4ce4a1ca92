"""Joint search over per-layer levels (= SNN time steps) and thresholds under a budget.

Why on the ANN: with avg-repeat alignment the MT-SNN equals the mixed-precision QCFS ANN
exactly (docs/semantics.md), so an ANN pass with given levels *is* the SNN's accuracy, and
SynOps follow from the ANN's quantized activations (``costs.FanoutModel``). The search:

1. **sensitivity**: the calibration loss when one layer's levels drop from the top choice to
   each smaller one, the others kept at the top;
2. **proposals**: uniform configurations; greedy descent from all-top (each step lowers the
   layer with the least loss increase per unit of cost saved, for latency and for SynOps); the
   exact knapsack front over the (additive) sensitivity table for both costs; and, when the
   space is small (``exhaustive_limit``), every configuration;
3. **calibration fronts**: every proposal is measured on the calibration data; the first few
   Pareto layers of loss vs latency and vs SynOps, the best few inside the budget and every
   uniform configuration go on;
4. **threshold fine-tuning** (optionally weights) with the straight-through floor, per
   candidate, on the calibration data, keeping the epoch with the lowest calibration loss;
5. **selection** on the validation data: the most accurate candidate within the budget.

Everything is seeded: the minibatch order of each fine-tuning run comes from a generator keyed
by (seed, levels), so a candidate's result does not depend on which others were tried.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph
from mtdeploy.search.budget import Budget, parse_budget
from mtdeploy.search.costs import CoreCounter, FanoutModel, latency, spike_counts
from mtdeploy.search.graph_module import GraphModule
from mtdeploy.search.pareto import knapsack_front, non_dominated

LEVEL_CHOICES = (1, 2, 4, 8, 16)
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
                      "energy_pj": "E_AC 0.9 pJ per SynOp + E_MAC 4.6 pJ per input-layer MAC "
                                   "(the papers' 45 nm convention), per sample",
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
    module = GraphModule(base_graph)
    if candidate.weights is not None:
        module.load_state_dict(candidate.weights)
    module.set_levels(candidate.levels)
    module.set_thresholds(candidate.thresholds)
    return module


@contextlib.contextmanager
def _deterministic(seed: int, threads: int | None):
    """Seeded, deterministic torch kernels (and optionally a CPU thread count) for the search;
    the caller's settings come back afterwards."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)
        torch.set_num_threads(was_threads)


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, leave=False, **kwargs)


def _as_data(graph: Graph, x, y, what: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.asarray(x)
    y = np.asarray(y)
    want = tuple(graph.input.shape)
    if x.ndim < 1 or tuple(x.shape[1:]) != want:
        raise InputError(f"{what}: x has shape {tuple(x.shape)}; the model takes (N, "
                         f"{', '.join(map(str, want))})")
    if len(x) == 0:
        raise InputError(f"{what}: no samples")
    if y.shape != (len(x),):
        raise InputError(f"{what}: y must hold one integer label per sample, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError(f"{what}: y must hold integer class labels")
    classes = int(np.prod(graph[graph.output].shape))
    if y.min() < 0 or y.max() >= classes:
        raise InputError(f"{what}: labels must lie in [0, {classes - 1}] (the model has "
                         f"{classes} outputs), found {int(y.min())}..{int(y.max())}")
    return (torch.as_tensor(x, dtype=torch.float32, device=device),
            torch.as_tensor(y.astype(np.int64), device=device))


def _device(device: str | None) -> torch.device:
    device = device or "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r}: expected cpu or cuda") from None


class _Evaluator:
    """Losses, accuracies and SynOps of the working module on the calibration/validation data."""

    def __init__(self, module: GraphModule, fanout: FanoutModel, batch_size: int):
        self.module = module
        self.fanout = fanout
        self.batch_size = batch_size
        self.base_state = copy.deepcopy(module.state_dict())

    def reset(self, levels: dict[str, int]) -> None:
        self.module.load_state_dict(self.base_state)
        self.module.set_levels(levels)

    @torch.no_grad()
    def measure(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.module.eval()
        loss, correct, synops = 0.0, 0, 0.0
        levels, thresholds = self.module.levels, self.module.thresholds
        for start in range(0, len(x), self.batch_size):
            xb, yb = x[start:start + self.batch_size], y[start:start + self.batch_size]
            out, acts = self.module.forward_with_activations(xb)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
            synops += self.fanout.synops(spike_counts(acts, levels, thresholds))
        n = len(x)
        return {"loss": loss / n, "acc": correct / n, "synops": synops / n}


def search(graph: Graph, calib_x, calib_y, val_x, val_y, budget: Budget | str | None = None,
           seed: int = 0, device: str = "cpu", finetune_epochs: int = 5,
           finetune_weights: bool = False, level_choices: Sequence[int] = LEVEL_CHOICES,
           batch_size: int = 128, threshold_lr: float = 0.02, weight_lr: float = 1e-4,
           max_finetune: int = 48, exhaustive_limit: int = 1024, target: str | None = "loihi2",
           threads: int | None = None, progress: bool | None = None) -> SearchResult:
    """Search per-layer levels and thresholds of a QCFS graph (pre-conversion IR).

    ``budget``: a :class:`Budget` or its string (``mean-T=4``, ``sum-T=24``, ``max-T=8``,
    ``synops=N`` per sample, ``cores=N``); None returns the most accurate configuration.
    ``exhaustive_limit``: measure every configuration on the calibration data when there are
    at most this many (else greedy + knapsack proposals only). ``threshold_lr`` is relative to
    each layer's threshold (Adam, so roughly the fraction a threshold may move per step).
    ``target`` names the profile for core counts (``mtdeploy.targets.checker``; None leaves
    cores out unless the budget asks for them).
    ``threads``: torch CPU threads during the search (None: leave as is). Small models gain
    nothing from intra-op threads, and on a busy machine their synchronisation costs more than
    the arithmetic (measured here: a 240x12x16 linear took ~3 ms with 2 threads under load,
    0.01 ms with 1), so 1 is the better choice for them.

    Returns every fine-tuned candidate; ``result.front(metric)`` is their Pareto front.
    """
    budget = parse_budget(budget) if isinstance(budget, str) or budget is None else budget
    choices = sorted({int(c) for c in level_choices})
    if not choices or choices[0] < 1:
        raise InputError(f"level choices must be positive integers, got {list(level_choices)}")
    if finetune_epochs < 0:
        raise InputError(f"--epochs must be >= 0, got {finetune_epochs}")
    show = sys.stderr.isatty() if progress is None else progress
    dev = _device(device)
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")

    with _deterministic(seed, threads):
        module = GraphModule(graph).to(dev)
        base_graph = module.graph
        layers = list(module.levels)
        if not layers:
            raise InputError("the model has no QCFS activation to choose levels for")
        _check_reachable(budget, choices, len(layers))
        cx, cy = _as_data(base_graph, calib_x, calib_y, "calibration data", dev)
        vx, vy = _as_data(base_graph, val_x, val_y, "validation data", dev)
        fanout = FanoutModel(base_graph)
        cores = _core_counter(budget, target)
        ev = _Evaluator(module, fanout, batch_size)
        given = {"levels": module.levels, "thresholds": module.thresholds,
                 **{f"val_{k}": v for k, v in ev.measure(vx, vy).items()}}

        # 1-3: sensitivity, proposals, calibration fronts (no training: base thresholds)
        measured: dict[tuple[int, ...], dict[str, float]] = {}

        def calib(config: tuple[int, ...]) -> dict[str, float]:
            if config not in measured:
                ev.reset(dict(zip(layers, config)))
                measured[config] = ev.measure(cx, cy)
            return measured[config]

        top = (choices[-1],) * len(layers)
        sensitivity = _sensitivity(layers, choices, top, calib, show)
        proposals: dict[tuple[int, ...], list[str]] = {}

        def propose(config, why):
            proposals.setdefault(tuple(config), [])
            if why not in proposals[config]:
                proposals[config].append(why)

        for c in choices:
            propose((c,) * len(layers), "uniform")
        if len(choices) ** len(layers) <= exhaustive_limit:
            # Small spaces are measured whole: the calibration front is then exact, and the
            # greedy/knapsack proposals below show how close the scalable methods get.
            for config in itertools.product(choices, repeat=len(layers)):
                propose(config, "exhaustive")
        axes = {"sum_T": lambda cfg: float(sum(cfg)), "synops": lambda cfg: calib(cfg)["synops"]}
        for axis, cost in axes.items():
            for config in _greedy(layers, choices, top, calib, cost, show, axis):
                propose(config, f"greedy-{axis}")
        per_level_synops = _per_layer_synops(module, ev, cx, cy, layers, top)
        for axis in axes:
            tables = []
            for k, layer in enumerate(layers):
                table = {}
                for c in choices:
                    cost = float(c) if axis == "sum_T" else per_level_synops[k] * c
                    table[c] = (cost, sensitivity[layer][c]["delta_loss"])
                tables.append(table)
            for _, _, config in _thin(knapsack_front(tables), 32):
                propose(config, f"knapsack-{axis}")
        for config in _progress(list(proposals), show, desc="search: calibration front"):
            calib(config)
        shortlist = _shortlist(proposals, measured, choices, len(layers), max_finetune, budget)

        # 4: fine-tune thresholds (and weights) of each shortlisted configuration
        candidates = []
        for config in _progress(shortlist, show, desc="search: fine-tune thresholds"):
            levels = dict(zip(layers, config))
            ev.reset(levels)
            before = measured[config]
            _finetune(module, ev, cx, cy, epochs=finetune_epochs, seed=seed, config=config,
                      threshold_lr=threshold_lr, weight_lr=weight_lr if finetune_weights else 0.0,
                      batch_size=batch_size)
            after_calib = ev.measure(cx, cy)
            after_val = ev.measure(vx, vy)
            costs = {**latency(levels), "synops": after_val["synops"],
                     "energy_pj": fanout.energy_pj(after_val["synops"]), "cores": None}
            cand = Candidate(levels, proposals[config], module.thresholds, costs,
                             after_calib["loss"], after_calib["acc"], after_val["loss"],
                             after_val["acc"], {"loss": before["loss"], "acc": before["acc"]},
                             {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                             if finetune_weights else None)
            if cores is not None:
                cand.costs["cores"], cand.fits_target = cores.cores(
                    materialise(base_graph, cand).to_graph())
            candidates.append(cand)

    chosen = _choose(candidates, budget)
    settings = {"seed": seed, "device": str(dev), "finetune_epochs": finetune_epochs,
                "finetune_weights": finetune_weights, "level_choices": choices,
                "threshold_lr": threshold_lr, "weight_lr": weight_lr if finetune_weights else None,
                "batch_size": batch_size, "threads": threads, "calib_samples": len(cx),
                "val_samples": len(vx),
                "configurations_measured": len(measured), "target": target if cores else None}
    chosen_module = materialise(base_graph, chosen)
    return SearchResult(chosen, candidates, budget, sensitivity, given, settings,
                        chosen_module.to_graph(), base_graph)


def _check_reachable(budget: Budget | None, choices: list[int], n_layers: int) -> None:
    """Fail before any work when no configuration can meet a latency budget."""
    if budget is None or budget.metric not in ("mean_T", "sum_T", "max_T"):
        return
    least = latency({k: choices[0] for k in range(n_layers)})
    if not budget.allows(least):
        raise InputError(f"no configuration fits the budget {budget}: with levels from "
                         f"{choices} the cheapest (all layers {choices[0]}) needs "
                         f"{budget.metric} = {least[budget.metric]:g}")


def _core_counter(budget: Budget | None, target: str | None) -> CoreCounter | None:
    """Cores are measured when the budget asks for them (on ``target``, default loihi2) or
    when a target is named (a bad target name is an error)."""
    if budget is not None and budget.metric == "cores":
        return CoreCounter(target or "loihi2")
    return None if target is None else CoreCounter(target)


def _sensitivity(layers, choices, top, calib, show) -> dict[str, dict[int, dict[str, float]]]:
    base = calib(top)
    table: dict[str, dict[int, dict[str, float]]] = {}
    jobs = [(k, c) for k in range(len(layers)) for c in choices]
    for k, c in _progress(jobs, show, desc="search: sensitivity"):
        config = top[:k] + (c,) + top[k + 1:]
        m = calib(config)
        table.setdefault(layers[k], {})[c] = {
            "loss": m["loss"], "acc": m["acc"],
            "delta_loss": m["loss"] - base["loss"], "delta_acc": m["acc"] - base["acc"]}
    return table


def _greedy(layers, choices, top, calib, cost, show, axis) -> list[tuple[int, ...]]:
    """Descent from all-top: each step lowers the one layer (to the next smaller choice) with
    the least loss increase per unit of cost saved; returns the whole path."""
    path = [top]
    current = top
    steps = sum(len(choices) - 1 for _ in layers)
    bar = _progress(range(steps), show, desc=f"search: greedy ({axis})")
    for _ in bar:
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


def _per_layer_synops(module, ev, cx, cy, layers, top) -> list[float]:
    """Each layer's SynOps per sample per level at the top configuration (the knapsack's
    linear cost model: a layer's events scale with its levels)."""
    ev.reset(dict(zip(layers, top)))
    per_layer = {layer: 0.0 for layer in layers}
    with torch.no_grad():
        module.eval()
        for start in range(0, len(cx), ev.batch_size):
            _, acts = module.forward_with_activations(cx[start:start + ev.batch_size])
            counts = spike_counts(acts, module.levels, module.thresholds)
            for layer in layers:
                per_layer[layer] += ev.fanout.synops({layer: counts[layer]})
    return [per_layer[layer] / len(cx) / top[k] for k, layer in enumerate(layers)]


def _thin(points: list, limit: int) -> list:
    """At most ``limit`` points spread evenly along the list, both ends kept when limit >= 2."""
    if len(points) <= limit:
        return points
    if limit <= 1:
        return points[:max(limit, 0)]
    step = (len(points) - 1) / (limit - 1)
    return [points[round(k * step)] for k in range(limit)]


def _shortlist(proposals, measured, choices, n_layers, max_finetune, budget,
               depth: int = 3, within_budget: int = 3) -> list[tuple]:
    """What gets fine-tuned: the uniform configurations; the first ``depth`` Pareto layers (the
    front, then the front of what is left, ...) of calibration loss vs latency and vs SynOps,
    thinned to ``max_finetune`` in all; and the ``within_budget`` best proposals inside a
    latency or SynOps budget. Layers beyond the first are kept because fine-tuning reorders
    near neighbours."""
    configs = list(proposals)
    uniform = [(c,) * n_layers for c in choices]
    cost_of = {"sum_T": lambda c: float(sum(c)), "synops": lambda c: measured[c]["synops"]}
    picked: list[tuple] = []
    room = max(2, (max_finetune - len(uniform) - within_budget) // 2)
    for axis, cost in cost_of.items():
        left = list(configs)
        layers: list[tuple] = []
        for _ in range(depth):
            if not left:
                break
            keep = non_dominated([cost(c) for c in left], [-measured[c]["loss"] for c in left])
            front = [left[i] for i in keep]
            layers += front
            left = [c for c in left if c not in set(front)]
        picked += _thin(sorted(layers, key=lambda c: (cost(c), c)), room)
    if budget is not None and budget.metric in ("mean_T", "sum_T", "max_T", "synops"):
        def fits(c):
            return budget.allows({**latency(dict(enumerate(c))), "synops": measured[c]["synops"]})

        inside = sorted((c for c in configs if fits(c)), key=lambda c: (measured[c]["loss"], c))
        picked += inside[:within_budget]
    ordered = []
    for config in uniform + sorted(picked, key=lambda c: (sum(c), c)):
        if config not in ordered:
            ordered.append(config)
    return ordered


def _finetune(module: GraphModule, ev: _Evaluator, x, y, epochs, seed, config, threshold_lr,
              weight_lr, batch_size) -> None:
    """Straight-through fine-tuning of thresholds (and weights when ``weight_lr`` > 0).

    Keeps the state with the lowest calibration loss seen (epoch 0 included), so fine-tuning
    never makes a candidate worse on the data it was tuned on.
    """
    if epochs == 0:
        return
    groups = [{"params": [p], "lr": threshold_lr * max(float(p.detach().abs()), 1e-3)}
              for p in module.threshold_parameters()]
    if weight_lr > 0:
        groups.append({"params": module.weight_parameters(), "lr": weight_lr})
    else:
        for p in module.weight_parameters():
            p.requires_grad_(False)
    optimiser = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, *config]).generate_state(1)[0]))
    best_loss = ev.measure(x, y)["loss"]
    best_state = copy.deepcopy(module.state_dict())
    try:
        for _ in range(epochs):
            module.train()
            order = torch.randperm(len(x), generator=generator).to(x.device)
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                optimiser.zero_grad(set_to_none=True)
                loss = F.cross_entropy(module(x[idx]), y[idx])
                loss.backward()
                optimiser.step()
                with torch.no_grad():
                    for p in module.threshold_parameters():
                        p.clamp_(min=1e-3)
            loss = ev.measure(x, y)["loss"]
            if loss < best_loss:
                best_loss, best_state = loss, copy.deepcopy(module.state_dict())
    finally:
        for p in module.weight_parameters():
            p.requires_grad_(True)
    module.load_state_dict(best_state)


def _choose(candidates: list[Candidate], budget: Budget | None) -> Candidate:
    """Most accurate on validation within the budget; ties go to the lower calibration loss,
    then the cheaper configuration."""
    fits = [c for c in candidates if budget is None or budget.allows(c.costs)]
    if not fits:
        cheapest = min(c.costs[budget.metric] for c in candidates
                       if c.costs.get(budget.metric) is not None)
        raise InputError(f"no configuration fits the budget {budget}: the cheapest one searched "
                         f"needs {budget.metric} = {cheapest:g}")
    metric = budget.metric if budget else "sum_T"
    return min(fits, key=lambda c: (-c.val_acc, c.calib_loss, c.costs[metric], c.key()))
