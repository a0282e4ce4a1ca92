"""Measuring and fine-tuning the one working module the search reuses for every configuration
(resetting it is far cheaper than building a module per configuration)."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from mtdeploy.search.costs import FanoutModel, spike_counts
from mtdeploy.search.graph_module import GraphModule

class Evaluator:
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
    def measure(self, x: torch.Tensor, y: torch.Tensor, synops: bool = True) -> dict[str, float]:
        """Mean loss, accuracy and (unless ``synops`` is False, which saves about a third of
        the time) SynOps per sample."""
        self.module.eval()
        loss, correct, events = 0.0, 0, 0.0
        levels, thresholds = self.module.levels, self.module.thresholds
        for start in range(0, len(x), self.batch_size):
            xb, yb = x[start:start + self.batch_size], y[start:start + self.batch_size]
            if synops:
                out, acts = self.module.forward_with_activations(xb)
                events += self.fanout.synops(spike_counts(acts, levels, thresholds))
            else:
                out = self.module(xb)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
        n = len(x)
        return {"loss": loss / n, "acc": correct / n,
                **({"synops": events / n} if synops else {})}


def finetune(module: GraphModule, ev: Evaluator, x, y, config: tuple[int, ...], *, epochs: int,
             seed: int, threshold_lr: float, weight_lr: float,
             batch_size: int) -> dict[str, float] | None:
    """Straight-through fine-tuning of thresholds (and weights when ``weight_lr`` > 0).

    Keeps the state with the lowest calibration loss seen (epoch 0 included), so fine-tuning
    never makes a candidate worse on the data it was tuned on; returns that state's
    calibration loss and accuracy (None when ``epochs`` is 0).
    """
    if epochs == 0:
        return None
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
    best = ev.measure(x, y, synops=False)
    best_state = copy.deepcopy(module.state_dict())
    try:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator).to(x.device)
            _train_epoch(module, optimiser, x, y, order, batch_size)
            now = ev.measure(x, y, synops=False)
            if now["loss"] < best["loss"]:
                best, best_state = now, copy.deepcopy(module.state_dict())
    finally:
        for p in module.weight_parameters():
            p.requires_grad_(True)
    module.load_state_dict(best_state)
    return best


def _train_epoch(module: GraphModule, optimiser, x, y, order, batch_size: int) -> None:
    """One pass over the data in ``order``; thresholds are kept positive (QCFS divides by them)."""
    module.train()
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        optimiser.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(x[idx]), y[idx])
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            for p in module.threshold_parameters():
                p.clamp_(min=1e-3)
