"""Fixed-point fidelity beyond per-channel units (issue 14): each channel's grid searched for
the least rounding error, biases corrected on calibration data for the mean current that
rounding loses, and the input's width chosen with --input-bits."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from mtdeploy.api import compile_model
from mtdeploy.cli import main
from mtdeploy.frontends import graph_from_module
from mtdeploy.nn import QCFS, save_traced
from mtdeploy.passes import ConvertOptions, convert, quantize
from mtdeploy.sim.reference import simulate
from mtdeploy.testing import GraphBuilder

Q = importlib.import_module("mtdeploy.passes.quantize")


def test_a_searched_grid_rounds_no_worse_stays_in_range_and_never_passes_the_coarsest():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((64, 27))
    wmax = 127
    finest = np.abs(rows).max(1) / wmax

    def err(u):
        return np.square(rows - np.clip(np.rint(rows / u[:, None]), -wmax, wmax) * u[:, None]).sum(1)

    units = Q._searched_units(rows, finest.copy(), wmax, 1.0, finest * 2)
    assert np.all(units >= finest) and np.all(units <= finest / (1 - Q.UNIT_SEARCH_SPAN) * 1.000001)
    assert np.all(err(units) <= err(finest) + 1e-15)
    assert np.mean(err(units)) < 0.8 * np.mean(err(finest))     # 27 weights: worth searching
    assert np.all(np.abs(np.rint(rows / units[:, None])).max(1) <= wmax)
    capped = Q._searched_units(rows, finest.copy(), wmax, 1.0, finest * 1.02)
    assert np.all(capped <= finest * 1.02 * (1 + 1e-12)) and np.any(capped > finest)
    wide = rng.standard_normal((4, Q.UNIT_SEARCH_FAN_IN + 1))   # too many inputs: left alone
    peak = np.abs(wide).max(1) / wmax
    assert np.array_equal(Q._searched_units(wide, peak, wmax, 1.0, peak * 2), peak)


def test_corrected_biases_cancel_the_mean_rounding_error_on_the_calibration_data():
    b = GraphBuilder("dense", (64,), 0)
    b.linear(8)
    b.qcfs(4)
    b.linear(3)
    graph = b.done()
    # inputs with a large mean, on the 8-bit input grid (2^-6) so that only weights round
    x = np.random.default_rng(1).integers(32, 64, (256, 64)) / 64.0
    plain = quantize(convert(graph, ConvertOptions(input_max=1.0)))
    fixed = quantize(convert(graph, ConvertOptions(input_max=1.0)), calib=x)
    assert fixed.meta["bias_correction"] == {"samples": 256}
    assert "bias_correction" not in plain.meta
    fc = next(n for n in fixed if n.kind == "linear")
    act = fixed[next(n.name for n in fixed if n.kind == "qcfs")]
    exact = (x @ fc.params["weight"].T.astype(np.float64) + fc.params["bias"]).mean(0)
    assert fixed.meta["input_exp"] == 6
    x_int = x * 64

    def mean_error(g):      # the first population's mean integer current vs the float one
        current = (x_int @ g[fc.name].params["weight_int"].T).mean(0) + g[act.name].params["bias_int"]
        return (current * g[act.name].params["channel_unit"] - exact) / g[act.name].params["channel_unit"]

    # what is left: rounding the correction and the bias, 1/2 unit each
    assert np.all(np.abs(mean_error(fixed)) <= 1.0), mean_error(fixed)
    assert np.abs(mean_error(plain)).max() > 1.5, mean_error(plain)   # there was one to cancel


def _conv_net(seed: int, channels: int, levels: int):
    """conv (zero padding) -> QCFS -> 2x2 pool -> linear readout, on 1x6x6 inputs."""
    b = GraphBuilder("conv", (1, 6, 6), seed)
    b.conv(channels)
    b.qcfs(levels)
    b.pool(2)
    b.flatten()
    b.linear(3)
    return b.done()


def test_conv_biases_are_corrected_per_neuron_and_fixed_point_stays_the_quantized_ann():
    graph = _conv_net(3, 4, 4)
    x = np.random.default_rng(4).uniform(0.2, 1.0, (128, 1, 6, 6))
    snn = quantize(convert(graph, ConvertOptions(input_max=1.0)), calib=x)
    plain = quantize(convert(graph, ConvertOptions(input_max=1.0)))
    act = next(n for n in snn if n.kind == "qcfs")
    moved = act.params["bias_int"] - plain[act.name].params["bias_int"]
    # zero padding: border neurons read other inputs than inner ones, so corrections differ
    assert any(len(np.unique(moved[c])) > 1 for c in range(moved.shape[0])), moved
    assert np.array_equal(simulate(snn, x[:32], mode="fixed").output,
                          simulate(snn, x[:32], mode="ann-int").output)


@pytest.mark.lava
def test_lava_runs_corrected_per_neuron_biases_bit_exact():
    from mtdeploy.targets.loihi2.lava import run_lava

    graph = _conv_net(5, 3, 3)
    calib = np.random.default_rng(6).uniform(0.2, 1.0, (64, 1, 6, 6))
    snn = quantize(convert(graph, ConvertOptions(input_max=1.0)), calib=calib)
    x = calib[:3]
    ref = simulate(snn, x, mode="fixed")
    out, counts = run_lava(snn, x, fixed_point=True, record_counts=True, timeout_s=300)
    assert np.array_equal(out, ref.output)
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]), pop


def test_compile_reports_the_correction_and_the_cli_sets_the_input_width(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), QCFS(4, 1.0), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).eval()
    x = np.random.default_rng(0).uniform(0, 1, (40, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    save_traced(model, torch.as_tensor(x[:2]), tmp_path / "m.pt")
    plain = compile_model(tmp_path / "m.pt", out_dir=tmp_path / "a")
    assert plain.report["bias_correction"] is None
    assert "not corrected" in (tmp_path / "a" / "report.md").read_text()
    code = main(["compile", str(tmp_path / "m.pt"), "-o", str(tmp_path / "b"), "--calib",
                 str(tmp_path / "calib.npy"), "--input-bits", "12"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["bias_correction"] == {"samples": 40}
    assert report["input"]["input_bits"] == 12
    assert "40 calibration samples" in (tmp_path / "b" / "report.md").read_text()
    assert main(["compile", str(tmp_path / "m.pt"), "-o", str(tmp_path / "c"),
                 "--input-bits", "1"]) == 2
    assert capsys.readouterr().err.startswith("mtdeploy: error: --input-bits")
    assert not (tmp_path / "c").exists()


def test_a_wide_input_build_keeps_a_loadable_stock_netx_file(tmp_path):
    """A first layer's integer bias grows 16x with 12-bit inputs, past netx's 13-bit bias
    mantissa; the stock layers then come from the 8-bit-input per-layer quantization."""
    from mtdeploy.frontends.netx import read_netx, stock_run_settings
    from mtdeploy.passes.quantize import per_layer_copy
    from mtdeploy.targets.loihi2.netx.plan import readout_logits
    from mtdeploy.targets.loihi2.netx.writer import write_netx

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 12), QCFS(1, 1.0), nn.Linear(12, 3)).eval()
    with torch.no_grad():
        model[0].bias.fill_(0.3)
    graph = graph_from_module(model, (16,))
    for scaling in (True, False):
        snn = quantize(convert(graph, ConvertOptions(timesteps=1, input_max=1.0)),
                       input_bits=12, per_channel=scaling)
        assert np.abs(snn[next(n.name for n in snn if n.kind == "qcfs")].params["bias_int"]).max() > 4095
        path = tmp_path / f"net{scaling}.net"
        write_netx(snn, path)
        run = stock_run_settings(path)
        assert run["exact"] is False and run["extension_input_bits"] == 12
        assert run["input_message_bits"] == 8
        flat = per_layer_copy(snn, max_input_bits=8)
        assert run["input_exp"] == flat.meta["input_exp"]
        x = np.random.default_rng(0).uniform(0, 1, (16, 16))
        x_int = np.clip(np.round(x * 2.0 ** run["input_exp"]), -127, 127)
        stock = read_netx(path, use_extension=False)
        got = simulate(stock, x_int, mode="fixed").output
        assert np.array_equal(readout_logits(got * 2 ** run["act_shift"], run),
                              simulate(flat, x, mode="fixed").output)
        back = read_netx(path)      # the extension is the 12-bit build
        assert back.meta["input_bits"] == 12
        assert np.array_equal(simulate(back, x, mode="fixed").output,
                              simulate(snn, x, mode="fixed").output)


def test_a_residual_join_is_corrected_and_its_identity_path_adds_no_error():
    from mtdeploy.testing import random_residual

    graph = random_residual(np.random.default_rng(2), size=6, channels=3, classes=4,
                            levels=[4, 4, 4])
    x = np.random.default_rng(3).uniform(0, 1, (64, 1, 6, 6))
    snn = quantize(convert(graph, ConvertOptions(input_max=1.0)), calib=x)
    plain = quantize(convert(graph, ConvertOptions(input_max=1.0)))
    assert snn.meta["bias_correction"] == {"samples": 64}
    joined = [p for p in snn if p.kind == "qcfs" and len(p.inputs) and any(
        snn[n].kind == "add" for n in [i for i in snn[p.name].inputs])]
    assert joined, "the residual population"
    assert any(np.any(p.params["bias_int"] != plain[p.name].params["bias_int"]) for p in joined)
    assert np.array_equal(simulate(snn, x[:16], mode="fixed").output,
                          simulate(snn, x[:16], mode="ann-int").output)
