"""Fixed point at joins: each branch into a residual add keeps its own mantissa (issue 16), the
weight-bits rule honours the shared exponent, and the per-layer quantization report."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mtdeploy.frontends import graph_from_module
from mtdeploy.nn import QCFS
from mtdeploy.passes import ConvertOptions, convert, quantize
from mtdeploy.passes.quantize import mantissa_bits, quantization_report
from mtdeploy.sim.reference import simulate


class SmallBranch(nn.Module):
    """A residual block whose conv branch is ~100x weaker than its identity shortcut: one
    unit for both rounds the conv weights to nothing unless each branch has its own scale."""

    def __init__(self, scale: float):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), QCFS(4, 1.0))
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(scale)
            self.conv.bias.mul_(scale)
        self.act = QCFS(4, 1.0)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x):
        s = self.stem(x)
        return self.head(self.act(self.conv(s) + s))


def build(scale: float):
    torch.manual_seed(0)
    model = SmallBranch(scale).eval()
    return quantize(convert(graph_from_module(model, (1, 6, 6)), ConvertOptions(input_max=1.5)))


def test_a_weak_branch_keeps_its_weights_beside_a_strong_shortcut():
    snn = build(0.01)
    rows = {r["layer"]: r for r in quantization_report(snn)}
    assert rows["conv"]["nonzero_kept"] >= 0.95 and rows["conv"]["mantissa_bits"] <= 8
    assert all("warning" not in r for r in rows.values())
    shortcut = max(snn["add"].attrs["input_gain_int"], key=abs)
    assert abs(shortcut) > 127                    # the shortcut scaled into the accumulator
    assert mantissa_bits(np.asarray([shortcut])) <= 8   # ... as an 8-bit mantissa times 2^k
    x = np.random.default_rng(1).uniform(0, 1.2, (16, 1, 6, 6))
    assert np.array_equal(simulate(snn, x, mode="fixed").output,
                          simulate(snn, x, mode="ann-int").output)


def test_a_single_branch_population_is_quantized_as_before():
    snn = build(1.0)
    for name in ("stem.0", "head.1"):     # power-of-two units: the peak lands in (63, 127]
        assert snn[name].attrs["weight_exp"] == 0
        assert 63 < np.abs(snn[name].params["weight_int"]).max() <= 127


@pytest.mark.parametrize("weights, bits", [([1000], 8), ([1001], 11), ([254, -2], 8),
                                           ([127, 1], 8), ([0, 0], 1), ([-128 * 4], 2), ([-128 * 4, 4], 9)])
def test_mantissa_bits_honour_the_shared_exponent(weights, bits):
    assert mantissa_bits(np.asarray(weights)) == bits


def test_a_layer_that_loses_its_weights_is_reported():
    snn = build(1.0)
    layer = snn["head.1"]
    w = layer.params["weight_int"].copy()
    w[w.nonzero()[0][: w.size // 2], w.nonzero()[1][: w.size // 2]] = 0
    layer.params["weight_int"] = w
    row = {r["layer"]: r for r in quantization_report(snn)}["head.1"]
    assert row["nonzero_kept"] < 0.9 and "head.1" in row["warning"]


@pytest.mark.lava
def test_lava_runs_branch_scaled_joins_bit_exact():
    from mtdeploy.targets.loihi2.lava import child_pids, run_lava

    before = child_pids()
    snn = build(0.01)
    x = np.random.default_rng(2).uniform(0, 1.2, (3, 1, 6, 6))
    ref = simulate(snn, x, mode="fixed")
    out, counts = run_lava(snn, x, fixed_point=True, record_counts=True, timeout_s=300)
    assert np.array_equal(out, ref.output)
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]), pop
    assert child_pids() - before == set()
