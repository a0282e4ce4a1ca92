"""Per-output-channel fixed point (issue 14): each channel's weights fill the 8-bit mantissa
under a unit of its own, carried by per-neuron integer thresholds; fixed point still
equals the quantized ANN and Lava bit for bit; targets without per-neuron thresholds (stock
NetX, Loihi 1, --per-layer-scaling) get one unit per layer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from mtdeploy.frontends import graph_from_module
from mtdeploy.frontends.netx import read_netx, stock_run_settings
from mtdeploy.kinds.neurons import CHANNEL_UNIT, int_thresholds
from mtdeploy.nn import QCFS
from mtdeploy.passes import ConvertOptions, convert, quantize
from mtdeploy.passes.quantize import per_layer_copy, quantization_report
from mtdeploy.sim.reference import simulate
from mtdeploy.targets.loihi2.netx.plan import readout_logits
from mtdeploy.targets.loihi2.netx.writer import write_netx
from mtdeploy.testing import random_cnn


class Uneven(nn.Module):
    """A conv whose output channels differ 300x in weight size: one unit for the layer rounds
    the small channels to nothing."""

    def __init__(self, neuron_scale=(1.0, 0.1, 0.01, 0.003)):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        with torch.no_grad():
            scale = torch.tensor(neuron_scale).view(4, 1, 1, 1)
            self.conv.weight.mul_(scale)
            self.conv.bias.mul_(scale.view(4))
        self.act = QCFS(4, 0.05)
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
        with torch.no_grad():       # a bias within stock netx's 13-bit mantissa
            self.head[2].bias.mul_(0.05)

    def forward(self, x):
        return self.head(self.act(self.conv(x)))


def build(per_channel: bool, **options):
    torch.manual_seed(0)
    graph = graph_from_module(Uneven().eval(), (1, 6, 6))
    return quantize(convert(graph, ConvertOptions(input_max=1.5, **options)),
                    per_channel=per_channel)


def test_every_channel_fills_its_mantissa_and_carries_its_unit_in_its_threshold():
    snn = build(True)
    w = snn["conv"].params["weight_int"].reshape(4, -1)
    peaks = np.abs(w).max(1)          # every channel fills its mantissa (its grid searched)
    assert np.all((peaks >= 127 * 7 / 8) & (peaks <= 127)), peaks
    units = snn["act"].params[CHANNEL_UNIT]
    assert np.all(np.diff(units) < 0) and units[0] / units[-1] > 250  # smaller weights, finer
    th, v0 = int_thresholds(snn["act"])
    assert th.shape == (4,) and np.array_equal(th, np.round(0.05 / units))
    assert np.array_equal(v0, np.floor(0.5 * th + 0.5))
    assert snn["act"].attrs["threshold_int"] == th.max()    # range rules see the largest
    assert quantization_report(snn)[0]["nonzero_kept"] == 1.0
    assert quantization_report(snn)[0]["units"] == "per channel"
    coarse = quantization_report(build(False))[0]
    assert coarse["nonzero_kept"] < 0.7 and "warning" in coarse and coarse["units"] == "per layer"


@pytest.mark.parametrize("neuron", ["if", "tpp"])
def test_per_channel_fixed_point_equals_the_quantized_ann_and_beats_per_layer(neuron):
    x = np.random.default_rng(1).uniform(0, 1.4, (64, 1, 6, 6))
    fine, coarse = build(True, neuron=neuron), build(False, neuron=neuron)
    ann = simulate(fine, x, mode="float").output
    if neuron == "if":
        assert np.array_equal(simulate(fine, x, mode="fixed").output,
                              simulate(fine, x, mode="ann-int").output)
    err = [np.abs(simulate(g, x, mode="fixed").output - ann).mean() for g in (fine, coarse)]
    assert err[0] < err[1] / 2, err


def test_a_flatten_between_weights_and_neurons_keeps_one_unit():
    g = random_cnn(np.random.default_rng(0), size=6, channels=(3, 4), classes=4, levels=[2, 2])
    snn = quantize(convert(g, ConvertOptions()))
    # the conv populations and the readout (its linear reads a flatten: per channel is fine)
    assert all(CHANNEL_UNIT in p.params for p in snn if p.kind in ("qcfs", "readout"))
    for node in snn:
        if CHANNEL_UNIT in node.params:       # never coarser than the layer's one unit
            assert node.params[CHANNEL_UNIT].shape == (node.shape[0],)
            assert np.all(node.params[CHANNEL_UNIT] <= 2.0 ** -node.attrs["exp"])


def test_per_layer_copy_is_the_per_layer_quantization():
    snn = build(True)
    flat = per_layer_copy(snn)
    ref = build(False)
    assert flat is not snn and not any(CHANNEL_UNIT in n.params for n in flat)
    for node in ref:
        for name, arr in node.params.items():
            assert np.array_equal(flat[node.name].params[name], arr), (node.name, name)
    assert per_layer_copy(ref) is ref
    assert CHANNEL_UNIT in snn["act"].params          # the original is untouched


def test_netx_stock_layers_fall_back_to_per_layer_and_the_extension_keeps_per_channel(tmp_path):
    snn = build(True, timesteps=1)
    path = tmp_path / "network.net"
    write_netx(snn, path)
    run = stock_run_settings(path)
    assert run["extension_scaling"] == "per-channel" and run["exact"] is False
    back = read_netx(path)
    assert back.to_json() == json.loads(json.dumps(snn.to_json()))
    assert np.array_equal(back["act"].params[CHANNEL_UNIT], snn["act"].params[CHANNEL_UNIT])
    x = np.random.default_rng(2).uniform(0, 1.4, (16, 1, 6, 6))
    assert np.array_equal(simulate(back, x, mode="fixed").output,
                          simulate(snn, x, mode="fixed").output)
    # the stock layers are the per-layer network, exactly (T = 1)
    stock = read_netx(path, use_extension=False)
    flat = per_layer_copy(snn)
    limit = 2 ** (snn.meta["input_bits"] - 1) - 1
    x_int = np.clip(np.round(x * 2.0 ** snn.meta["input_exp"]), -limit, limit)
    got = simulate(stock, x_int, mode="fixed").output
    assert np.array_equal(readout_logits(got * 2 ** run["act_shift"], run),
                          simulate(flat, x, mode="fixed").output)


def test_compile_follows_the_profile_and_the_per_layer_switch(tmp_path):
    from mtdeploy.api import compile_model

    model = Uneven().eval()
    per = compile_model(model, (1, 6, 6), out_dir=tmp_path / "a", input_max=1.5)
    assert CHANNEL_UNIT in per.graph["act"].params and per.graph.meta["per_channel"]
    flat = compile_model(model, (1, 6, 6), out_dir=tmp_path / "b", input_max=1.5,
                         per_layer_scaling=True)
    loihi1 = compile_model(model, (1, 6, 6), target="loihi1", write=False, input_max=1.5)
    for b in (flat, loihi1):
        assert not any(CHANNEL_UNIT in n.params for n in b.graph)
        assert b.graph.meta["per_channel"] is False
    md = (tmp_path / "b" / "report.md").read_text()
    assert "conv" in md and "keeps" in md        # the per-layer build warns about the conv
    assert "warning" not in json.dumps(per.report["quantization"])


@pytest.mark.lava
@pytest.mark.parametrize("neuron", ["if", "tpp"])
def test_lava_runs_per_neuron_thresholds_bit_exact(neuron):
    from mtdeploy.targets.loihi2.lava import child_pids, run_lava

    before = child_pids()
    snn = build(True, neuron=neuron, timesteps={"act": 3})
    x = np.random.default_rng(3).uniform(0, 1.4, (3, 1, 6, 6))
    ref = simulate(snn, x, mode="fixed")
    out, counts = run_lava(snn, x, fixed_point=True, record_counts=True, timeout_s=300)
    assert np.array_equal(out, ref.output)
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]), pop
    assert ref.counts["act"].sum() > 0
    assert child_pids() - before == set()


@pytest.mark.parametrize("bad", [np.ones(3), np.ones(4, np.int32), np.zeros(4)],
                         ids=["shape", "dtype", "zero"])
def test_a_file_with_unusable_channel_units_is_refused(bad):
    from mtdeploy.errors import InputError
    from mtdeploy.validate import graph_values

    snn = build(True)
    graph_values(snn, "ok.net")
    snn["act"].params[CHANNEL_UNIT] = bad
    with pytest.raises(InputError, match="channel_unit"):
        graph_values(snn, "bad.net")


def test_the_cli_switch_builds_per_layer_and_is_refused_for_a_net_file(tmp_path, capsys):
    from mtdeploy.cli import main

    model = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(Uneven().eval(), torch.zeros(1, 1, 6, 6)), model)
    args = ["compile", str(model), "--input-shape", "1,6,6", "--input-max", "1.5"]
    assert main(args + ["-o", str(tmp_path / "a"), "--per-layer-scaling"]) == 0
    assert "per layer" in (tmp_path / "a" / "report.md").read_text()
    assert "per channel" not in (tmp_path / "a" / "report.md").read_text()
    assert main(args + ["-o", str(tmp_path / "b")]) == 0
    assert "per channel" in (tmp_path / "b" / "report.md").read_text()
    capsys.readouterr()
    net = next((tmp_path / "b").glob("network.*"))
    assert main(["compile", str(net), "-o", str(tmp_path / "c"), "--per-layer-scaling"]) == 2
    assert "--per-layer-scaling" in capsys.readouterr().err and not (tmp_path / "c").exists()


@pytest.mark.parametrize("module, in_shape", [
    (nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 9, 8)),
    (nn.Conv2d(4, 4, 3, dilation=2, groups=2), (4, 9, 9)),
    (nn.Conv1d(2, 3, 5, padding=2), (2, 11)),
    (nn.Linear(6, 5), (6,))], ids=["conv", "grouped-conv", "conv1d", "linear"])
def test_forward_at_zero_is_forward_on_zeros(module, in_shape):
    """The shortcut quantization's bias takes (a weighted op's bias, without its product) is
    exactly the op on silent inputs, batch and output shape included."""
    from mtdeploy.ir.graph import Node
    from mtdeploy.ir.kind import kind_for_module
    torch.manual_seed(0)
    kind = kind_for_module(module)
    attrs, params = kind.from_torch(module)
    params["bias"][0] = 0.0          # a zero bias stays zero
    node = Node("n", kind.name, ["x"], attrs, params)
    node.shape = kind.infer_shape(node, [in_shape])
    zeros = torch.zeros((2, *in_shape), dtype=torch.float64)
    got, want = kind.forward_at_zero(node, zeros), kind.forward(node, zeros)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
