"""1-D signals (audio, ECG, keyword spotting): Conv1d, BatchNorm1d and AvgPool1d through every
stage: fx and TorchScript import, BN folding, conversion, the search's trainable view,
reference simulation (float == ANN), Lava (fixed point == reference, bit for bit), NetX and
the budget checker."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import randomize_batchnorm
from mtdeploy.api import compile_model, load_build
from mtdeploy.frontends import graph_from_module
from mtdeploy.nn import QCFS, save_traced
from mtdeploy.passes import ConvertOptions, convert, quantize
from mtdeploy.search import GraphModule
from mtdeploy.sim.ann import ann_forward
from mtdeploy.sim.reference import simulate
from mtdeploy.targets.checker import check

INPUT_SHAPE = (2, 24)


def signal_net(seed: int = 0) -> nn.Module:
    """conv1d+BN -> QCFS -> avg pool -> strided dilated conv1d+BN -> QCFS -> global pool -> linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv1d(2, 6, 5, padding=2), nn.BatchNorm1d(6), QCFS(4, 1.2),
        nn.AvgPool1d(2),
        nn.Conv1d(6, 8, 3, stride=2, padding=2, dilation=2, bias=False), nn.BatchNorm1d(8),
        QCFS(8, 0.9),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 5))
    return randomize_batchnorm(model, seed).eval()


def batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *INPUT_SHAPE), generator=torch.Generator().manual_seed(seed)) * 1.4 - 0.2


def test_fx_and_torchscript_import_the_same_1d_graph():
    model = signal_net()
    fx = graph_from_module(model, INPUT_SHAPE)
    assert [n.kind for n in fx] == ["input", "conv1d", "qcfs", "avgpool1d", "conv1d", "qcfs",
                                    "avgpool1d", "flatten", "linear"]   # BN folded into the convs
    assert fx["4"].shape == (8, 6) and fx["7"].shape == (8, 1)
    for script in (torch.jit.trace(model, batch(2)), torch.jit.script(model)):
        ts = graph_from_module(script, INPUT_SHAPE)
        assert [(n.kind, n.shape) for n in ts] == [(n.kind, n.shape) for n in fx]
        for a, b in zip(fx, ts):
            assert a.attrs == b.attrs
            for name in a.params:
                np.testing.assert_allclose(b.params[name], a.params[name], rtol=0, atol=0)
    x = batch()
    with torch.no_grad():
        want = model.double()(x.double()).numpy()
    np.testing.assert_allclose(ann_forward(fx, x).numpy(), want, rtol=0, atol=1e-9)


def test_avg_repeat_float_simulation_equals_the_ann():
    graph = graph_from_module(signal_net(), INPUT_SHAPE)
    snn = convert(graph, ConvertOptions())
    x = batch(16, seed=3)
    res = simulate(snn, x, mode="float")
    np.testing.assert_allclose(res.output, ann_forward(graph, x).numpy(), rtol=0, atol=1e-9)
    assert res.total_synops > 0


def test_fixed_point_equals_the_equally_quantized_ann():
    snn = quantize(convert(graph_from_module(signal_net(1), INPUT_SHAPE),
                           ConvertOptions(input_max=1.5)))
    x = batch(16, seed=4)
    fixed = simulate(snn, x, mode="fixed")
    assert np.array_equal(fixed.output, simulate(snn, x, mode="ann-int").output)


def test_trainable_view_fine_tunes_and_round_trips_through_torchscript(tmp_path):
    graph = graph_from_module(signal_net(), INPUT_SHAPE)
    module = GraphModule(graph).double()
    x = batch(8).double()
    torch.testing.assert_close(module(x), ann_forward(graph, x), rtol=0, atol=1e-9)
    loss = module(x).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in module.threshold_parameters())
    module.set_levels({name: 2 for name in module.levels})
    path = tmp_path / "signal.pt"
    module.float().save_torchscript(path)
    again = graph_from_module(torch.jit.load(str(path)), INPUT_SHAPE)
    assert [n.kind for n in again] == [n.kind for n in graph]
    assert [n.attrs.get("levels") for n in again if n.kind == "qcfs"] == [2, 2]


def test_budget_checker_costs_1d_layers():
    report = check(convert(graph_from_module(signal_net(), INPUT_SHAPE)), "loihi2", suggest=False)
    assert report.fits
    rows = {r["node"]: r for r in report.per_layer}
    # conv1d 6x24 reads a 5-tap window of 2 channels per neuron: 6*24 neurons x 10 inputs max
    assert rows["2"]["synapses"] <= 6 * 24 * 2 * 5 and rows["2"]["synapses"] > 6 * 20 * 2 * 5


def test_compile_writes_a_build_that_simulates_like_the_ann(tmp_path):
    model = signal_net()
    path = tmp_path / "signal.pt"
    save_traced(model, batch(2), path)
    build = compile_model(str(path), target="loihi2", out_dir=tmp_path / "build", input_max=1.5)
    names = set(build.files)
    assert {"schedule.json", "report.json", "report.md"} <= names
    assert names & {"network.net", "network.mtsnn.h5"}
    graph = load_build(tmp_path / "build")
    x = batch(8, seed=5)
    out = simulate(graph, x, mode="float").output
    np.testing.assert_allclose(out, model.double()(x.double()).detach().numpy(), rtol=0,
                               atol=1e-6)


@pytest.mark.lava
def test_lava_fixed_point_equals_the_reference_bit_for_bit():
    from mtdeploy.targets.loihi2.lava import child_pids, run_lava

    before = child_pids()
    snn = quantize(convert(graph_from_module(signal_net(2), INPUT_SHAPE),
                           ConvertOptions(input_max=1.5)))
    x = batch(3, seed=6).numpy()
    ref = simulate(snn, x, mode="fixed")
    out, counts = run_lava(snn, x, fixed_point=True, record_counts=True, timeout_s=300)
    assert np.array_equal(out, ref.output)
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]), pop
    assert sum(int(c.sum()) for c in counts.values()) > 0
    assert child_pids() - before == set()


def test_netx_writes_1d_layers_as_stock_dense_layers(tmp_path):
    """conv1d has no NetX layer type of its own: the writer folds its projection into a dense
    matrix, checked against the integer map, so a 1-D network whose values fit NetX's ranges
    is a stock file; reading it back gives the exact MT-SNN."""
    from mtdeploy.findings import errors
    from mtdeploy.frontends.netx import read_netx
    from mtdeploy.targets.loihi2.netx.schema import read_netx_layers, validate_netx_file
    from mtdeploy.targets.loihi2.netx.writer import write_netx

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1, bias=False), QCFS(1, 1.0),
                          nn.AvgPool1d(2), nn.Flatten(), nn.Linear(48, 3, bias=False)).eval()
    # one unit per layer: the network stock netx's one vThMant per layer runs exactly
    snn = quantize(convert(graph_from_module(model, INPUT_SHAPE), ConvertOptions(input_max=1.5)),
                   weight_bits=6, input_bits=4, per_channel=False)
    path = tmp_path / "signal.net"
    write_netx(snn, path)
    assert not errors(validate_netx_file(path))
    layers, _ = read_netx_layers(path)
    assert [layer["type"] for layer in layers] == ["input", "dense", "dense"]
    back = read_netx(path)
    x = batch(4, seed=7).numpy()
    assert np.array_equal(simulate(back, x, mode="fixed").output,
                          simulate(snn, x, mode="fixed").output)


@pytest.mark.lava
def test_stock_netx_runs_the_1d_file_exactly_like_mtdeploys_fixed_point(tmp_path):
    import importlib.util
    from pathlib import Path

    from mtdeploy.frontends.netx import read_netx, stock_run_settings
    from mtdeploy.targets.loihi2.netx.plan import readout_logits
    from mtdeploy.targets.loihi2.netx.writer import write_netx

    pytest.importorskip("lava.lib.dl.netx")
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_netx_agreement.py"
    spec = importlib.util.spec_from_file_location("bench_netx_agreement", bench)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1, bias=False), QCFS(1, 1.0),
                          nn.AvgPool1d(2), nn.Flatten(), nn.Linear(48, 3, bias=False)).eval()
    # one unit per layer: the network stock netx's one vThMant per layer runs exactly
    snn = quantize(convert(graph_from_module(model, INPUT_SHAPE), ConvertOptions(input_max=1.5)),
                   weight_bits=6, input_bits=4, per_channel=False)
    path = tmp_path / "signal.net"
    write_netx(snn, path)
    x = batch(4, seed=7).numpy()
    limit = 2 ** (snn.meta["input_bits"] - 1) - 1
    x_int = np.clip(np.round(x * 2.0 ** snn.meta["input_exp"]), -limit, limit)
    run = stock_run_settings(path)
    lava = runner.run_stock_netx(path, x_int, run["reset_interval"], run["input_message_bits"],
                                 run["input_layout"], spikes=True)
    stock = simulate(read_netx(path, use_extension=False), x_int, mode="fixed")
    assert np.array_equal(lava["v"], stock.output * run["reset_interval"] * 2 ** run["act_shift"])
    assert run["exact"] and lava["counts"][0].sum() > 0
    assert np.array_equal(readout_logits(lava["v"], run), simulate(snn, x, mode="fixed").output)
