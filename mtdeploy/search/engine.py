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
import itertools
import os
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph
from mtdeploy.search.budget import Budget, parse_budget
from mtdeploy.search.costs import CoreCounter, FanoutModel, latency, spike_counts
from mtdeploy.search.data import as_tensors
from mtdeploy.search.graph_module import GraphModule
from mtdeploy.search.progress import Progress
from mtdeploy.search.proposals import Config, greedy, knapsack, sensitivity, shortlist
from mtdeploy.search.result import Candidate, SearchResult, materialise
from mtdeploy.search.tuning import Evaluator, finetune

LEVEL_CHOICES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class SearchSettings:
    """Every setting of one search, in one value that callers can keep, vary and pass on.

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
    ``progress``: True or "bars" for progress bars on stderr, "lines" for a status line when a
    stage starts and every 15 s (for logs), False for none; None: bars when stderr is a
    terminal, else none.
    ``screen_samples``: rank configurations (sensitivity, greedy, knapsack, calibration
    fronts) on a seeded subset of this many calibration samples, which costs a fraction of the
    whole set; fine-tuning and scoring still use all of it (None: all samples everywhere).
    ``per_uniform``: also fine-tune, for every uniform configuration (or those with the levels
    in ``anchor_levels``), the this-many mixed proposals with the lowest screening loss at
    equal or lower sum T, and as many at equal or lower SynOps: the configurations a
    comparison with uniform T at equal cost needs.
    """

    budget: Budget | str | None = None
    seed: int = 0
    device: str = "cpu"
    finetune_epochs: int = 5
    finetune_weights: bool = False
    level_choices: Sequence[int] = LEVEL_CHOICES
    batch_size: int = 128
    threshold_lr: float = 0.02
    weight_lr: float = 1e-4
    max_finetune: int = 48
    exhaustive_limit: int = 1024
    target: str | None = "loihi2"
    threads: int | None = None
    progress: bool | str | None = None
    screen_samples: int | None = None
    per_uniform: int = 0
    anchor_levels: Sequence[int] | None = None


def search(graph: Graph, calib_x, calib_y, val_x, val_y, settings: SearchSettings | None = None,
           **options) -> SearchResult:
    """Search per-layer levels and thresholds of a QCFS graph (pre-conversion IR).

    ``settings`` (default ``SearchSettings()``) with any of its fields overridden by
    ``options``, e.g. ``search(graph, cx, cy, vx, vy, budget="mean-T=4", seed=1)``. Returns
    every fine-tuned candidate; ``result.front(metric)`` is their Pareto front.
    """
    settings = replace(settings or SearchSettings(), **options)
    budget, choices, device = _checked(settings)
    with _deterministic(settings.seed, settings.threads), Progress(settings.progress) as progress:
        run = _Search(graph, (calib_x, calib_y, val_x, val_y), settings, budget, choices, device,
                      progress)
        given = run.input_model()
        table = run.sensitivity()
        proposals = run.proposals(table)
        shortlisted = run.shortlist(proposals)
        candidates = [run.finetuned(config, proposals[config])
                      for config in run.track(shortlisted, "search: fine-tune thresholds")]
    chosen = _choose(candidates, budget)
    return SearchResult(chosen, candidates, budget, table, given, run.record(),
                        materialise(run.base_graph, chosen).to_graph(), run.base_graph)


def _checked(settings: SearchSettings) -> tuple[Budget | None, list[int], torch.device]:
    """The budget, the sorted level choices and the torch device, or an InputError before
    any work is done."""
    budget = settings.budget
    if isinstance(budget, str) or budget is None:
        budget = parse_budget(budget)
    choices = sorted({int(c) for c in settings.level_choices})
    if not choices or choices[0] < 1:
        raise InputError(f"level_choices must be positive integers, got "
                         f"{list(settings.level_choices)}")
    if settings.finetune_epochs < 0:
        raise InputError(f"finetune_epochs must be >= 0, got {settings.finetune_epochs}")
    device = _device(settings.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if settings.threads is not None and settings.threads < 1:
        raise InputError(f"threads must be >= 1, got {settings.threads}")
    if settings.screen_samples is not None and settings.screen_samples < 1:
        raise InputError(f"screen_samples must be >= 1, got {settings.screen_samples}")
    if settings.per_uniform < 0:
        raise InputError(f"per_uniform must be >= 0, got {settings.per_uniform}")
    return budget, choices, device


def _device(device: str | None) -> torch.device:
    device = device or "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: no CUDA device is available here (use 'cpu')")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device!r}: expected cpu or cuda") from None


class _Search:
    """One search's working state: the trainable module, the data as tensors, and the
    calibration measurement of every configuration tried so far (each is measured once)."""

    def __init__(self, graph: Graph, data, settings: SearchSettings, budget: Budget | None,
                 choices: list[int], device: torch.device, progress: Progress):
        self.settings, self.budget, self.choices, self.device = settings, budget, choices, device
        self.track = progress.track
        self.module = GraphModule(graph).to(device)
        self.base_graph = self.module.graph
        self.layers = list(self.module.levels)
        if not self.layers:
            raise InputError("the model has no QCFS activation to choose levels for")
        _check_reachable(budget, choices, len(self.layers))
        calib_x, calib_y, val_x, val_y = data
        self.cx, self.cy = as_tensors(self.base_graph, calib_x, calib_y, "calibration data", device)
        self.vx, self.vy = as_tensors(self.base_graph, val_x, val_y, "validation data", device)
        self.sx, self.sy = _screening(self.cx, self.cy, settings.screen_samples, settings.seed)
        self.fanout = FanoutModel(self.base_graph)
        self.cores = _core_counter(budget, settings.target)
        self.ev = Evaluator(self.module, self.fanout, settings.batch_size)
        self.top = (choices[-1],) * len(self.layers)
        self.measured: dict[Config, dict[str, float]] = {}

    def calib(self, config: Config) -> dict[str, float]:
        """Loss, accuracy and SynOps of ``config`` on the (screening) calibration data, base
        thresholds."""
        if config not in self.measured:
            self.ev.reset(dict(zip(self.layers, config)))
            self.measured[config] = self.ev.measure(self.sx, self.sy)
        return self.measured[config]

    def input_model(self) -> dict:
        """The model as given (before any reset): levels, thresholds, validation figures."""
        return {"levels": self.module.levels, "thresholds": self.module.thresholds,
                **{f"val_{k}": v for k, v in self.ev.measure(self.vx, self.vy).items()}}

    def sensitivity(self) -> dict[str, dict[int, dict[str, float]]]:
        """Step 1: one layer lowered at a time."""
        return sensitivity(self.layers, self.choices, self.top, self.calib, self.track)

    def proposals(self, table) -> dict[Config, list[str]]:
        """Step 2: configurations worth measuring, each with the methods that proposed it."""
        n, choices, proposals = len(self.layers), self.choices, {}
        _propose(proposals, [(c,) * n for c in choices], "uniform")
        if len(choices) ** n <= self.settings.exhaustive_limit:
            # Small spaces are measured whole: the calibration front is then exact, and the
            # greedy/knapsack proposals below show how close the scalable methods get.
            _propose(proposals, itertools.product(choices, repeat=n), "exhaustive")
        axes = {"sum_T": lambda cfg: float(sum(cfg)),
                "synops": lambda cfg: self.calib(cfg)["synops"]}
        for axis, cost in axes.items():
            path = greedy(self.layers, choices, self.top, self.calib, cost, self.track, axis)
            _propose(proposals, path, f"greedy-{axis}")
        per_level = self._per_layer_synops()
        unit_costs = {"sum_T": lambda k, c: float(c), "synops": lambda k, c: per_level[k] * c}
        for axis, unit_cost in unit_costs.items():
            _propose(proposals, knapsack(self.layers, choices, table, unit_cost),
                     f"knapsack-{axis}")
        return proposals

    def _per_layer_synops(self) -> list[float]:
        """Each layer's SynOps per sample per level at the top configuration (the knapsack's
        linear cost model: a layer's events scale with its levels)."""
        module, ev, cx = self.module, self.ev, self.sx
        ev.reset(dict(zip(self.layers, self.top)))
        per_layer = {layer: 0.0 for layer in self.layers}
        with torch.no_grad():
            module.eval()
            for start in range(0, len(cx), ev.batch_size):
                _, acts = module.forward_with_activations(cx[start:start + ev.batch_size])
                counts = spike_counts(acts, module.levels, module.thresholds)
                for layer in self.layers:
                    per_layer[layer] += ev.fanout.synops({layer: counts[layer]})
        return [per_layer[layer] / len(cx) / self.top[k] for k, layer in enumerate(self.layers)]

    def shortlist(self, proposals: dict[Config, list[str]]) -> list[Config]:
        """Step 3: measure every proposal, keep the calibration fronts for fine-tuning."""
        for config in self.track(list(proposals), "search: calibration front"):
            self.calib(config)
        return shortlist(proposals, self.measured, self.choices, len(self.layers),
                         self.settings.max_finetune, self.budget,
                         per_uniform=self.settings.per_uniform,
                         anchors=self.settings.anchor_levels)

    def finetuned(self, config: Config, proposed_by: list[str]) -> Candidate:
        """Step 4: fine-tune ``config``'s thresholds (and weights) on the calibration data."""
        s = self.settings
        levels = dict(zip(self.layers, config))
        self.ev.reset(levels)
        tuned = finetune(self.module, self.ev, self.cx, self.cy, config,
                         epochs=s.finetune_epochs, seed=s.seed, threshold_lr=s.threshold_lr,
                         weight_lr=s.weight_lr if s.finetune_weights else 0.0,
                         batch_size=s.batch_size)
        return self._scored(levels, proposed_by, self.measured[config], tuned)

    def _scored(self, levels: dict[str, int], proposed_by: list[str], before: dict,
                after_calib: dict | None) -> Candidate:
        """The fine-tuned module as a candidate: both splits measured (the calibration one by
        fine-tuning, when it ran), every cost filled in."""
        after_calib = after_calib or self.ev.measure(self.cx, self.cy, synops=False)
        after_val = self.ev.measure(self.vx, self.vy)
        costs = {**latency(levels), "synops": after_val["synops"],
                 "energy_pj": self.fanout.energy_pj(after_val["synops"]), "cores": None}
        weights = ({k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
                   if self.settings.finetune_weights else None)
        cand = Candidate(levels, proposed_by, self.module.thresholds, costs,
                         after_calib["loss"], after_calib["acc"], after_val["loss"],
                         after_val["acc"], {"loss": before["loss"], "acc": before["acc"]},
                         weights=weights)
        if self.cores is not None:
            cand.costs["cores"], cand.fits_target = self.cores.cores(
                materialise(self.base_graph, cand).to_graph())
        return cand

    def record(self) -> dict:
        """The settings as the result's JSON records them, with the data sizes."""
        s = self.settings
        return {"seed": s.seed, "device": str(self.device), "finetune_epochs": s.finetune_epochs,
                "finetune_weights": s.finetune_weights, "level_choices": self.choices,
                "threshold_lr": s.threshold_lr,
                "weight_lr": s.weight_lr if s.finetune_weights else None,
                "batch_size": s.batch_size, "threads": s.threads, "calib_samples": len(self.cx),
                "screen_samples": len(self.sx), "per_uniform": s.per_uniform,
                "val_samples": len(self.vx), "configurations_measured": len(self.measured),
                "target": s.target if self.cores else None}


def _screening(x: torch.Tensor, y: torch.Tensor, samples: int | None, seed: int):
    """A seeded subset of ``samples`` calibration samples (all of them when None or more)."""
    if samples is None or samples >= len(x):
        return x, y
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]
    pick = pick.sort().values.to(x.device)
    return x[pick], y[pick]


def _propose(proposals: dict[Config, list[str]], configs: Iterable, why: str) -> None:
    """Add ``configs`` to ``proposals``, noting ``why`` once per configuration."""
    for config in configs:
        reasons = proposals.setdefault(tuple(config), [])
        if why not in reasons:
            reasons.append(why)


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
