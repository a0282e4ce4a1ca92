"""mtdeploy's .net files in STOCK lava-dl netx (Lava's CPU simulator, fixed_pt), and lava-dl
slayer's files in mtdeploy: every file loads and runs; the stock run equals the reference
simulation of the stock layers bit for bit; on the exact subset (every T = 1) it equals
mtdeploy's fixed-point MT-SNN; a slayer network read with read_netx simulates like netx runs it.

Networks are tiny: Lava forks a process per block.
"""
import contextlib
import importlib.util
import io
from pathlib import Path

import h5py
import numpy as np
import pytest

from mtdeploy.passes import ConvertOptions, convert, quantize
from mtdeploy.sim.reference import simulate
from mtdeploy.findings import errors
from mtdeploy.frontends.netx import read_netx, stock_run_settings
from mtdeploy.targets.loihi2.netx.plan import readout_logits
from mtdeploy.targets.loihi2.netx.schema import stock_dense_weights, validate_netx_file
from mtdeploy.targets.loihi2.netx.writer import write_netx
from mtdeploy.testing import random_cnn, random_mlp

pytestmark = pytest.mark.lava
pytest.importorskip("lava.lib.dl.netx")

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_netx_agreement.py"


def _runner():
    spec = importlib.util.spec_from_file_location("bench_netx_agreement", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_stock_netx


run_stock_netx = _runner()


def _write(tmp_path, builder, levels, seed, **options):
    # one unit per layer: the network stock netx's one vThMant per layer runs exactly
    graph = quantize(convert(builder(np.random.default_rng(seed), levels=levels),
                             ConvertOptions(**options)), per_channel=False)
    path = tmp_path / "network.net"
    write_netx(graph, path)
    x = np.random.default_rng(seed + 1).uniform(-0.1, 1.1, (5, *graph.input.shape))
    limit = 2 ** (graph.meta["input_bits"] - 1) - 1
    return graph, path, x, np.clip(np.round(x * 2.0 ** graph.meta["input_exp"]), -limit, limit)


CASES = [("mlp", random_mlp, [1, 1, 1], {}), ("cnn", random_cnn, [1, 1, 1], {"v_init": 0.0}),
         ("mlp", random_mlp, [4, 2, 1], {}), ("cnn", random_cnn, [2, 2, 1], {"alignment": "ttm"})]


@pytest.mark.parametrize("arch,builder,levels,options", CASES,
                         ids=[f"{c[0]}-T{max(c[2])}-{c[3] or 'default'}" for c in CASES])
def test_stock_netx_runs_mtdeploys_file_exactly_as_its_stock_layers_say(tmp_path, arch, builder,
                                                                       levels, options):
    graph, path, x, x_int = _write(tmp_path, builder, levels, 3, **options)
    run = stock_run_settings(path)
    lava = run_stock_netx(path, x_int, run["reset_interval"], run["input_message_bits"],
                          run["input_layout"], spikes=True)
    stock = read_netx(path, use_extension=False)
    ref = simulate(stock, x_int, mode="fixed")
    # readout v (Lava units) = 2^6 * accumulated current = 2^6 * T * mean
    assert np.array_equal(lava["v"], ref.output * run["reset_interval"] * 2 ** run["act_shift"])
    spiking = run["layers"][:-1]
    for block, layer in enumerate(spiking):
        assert np.array_equal(lava["counts"][block], ref.counts[f"layer{layer['layer']}.neuron"])
    assert all(lava["counts"][b].sum() > 0 for b in range(len(spiking)))   # every layer fires
    mt = simulate(graph, x, mode="fixed")
    if run["exact"]:
        assert np.array_equal(readout_logits(lava["v"], run), mt.output)
        for block, layer in enumerate(spiking):
            assert np.array_equal(lava["counts"][block], mt.counts[layer["node"]])


def test_stock_loader_ignores_the_extension_and_unknown_keys(tmp_path):
    from lava.lib.dl import netx

    _, path, _, _ = _write(tmp_path, random_mlp, [1, 1, 1], 3)
    with h5py.File(path, "r+") as f:
        f.create_dataset("unknown_root_key", data=1)
        f["layer/1"].create_dataset("unknownField", data=[1, 2])
        f["layer/1/neuron"].create_dataset("unknownParam", data=3)
    net = netx.hdf5.Network(net_config=str(path), input_message_bits=8)
    assert len(net.layers) == 3 and net.inp.shape == (12,)


def test_netx_weight_conversion_matches_the_validators_model():
    """stock_dense_weights against netx's optimize_weight_bits + Lava Dense's clip/truncate."""
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    rng = np.random.default_rng(0)
    checked = changed = 0
    for lo, hi in [(-127, 127), (0, 127), (-127, -1), (-256, 254), (0, 255), (-255, -1), (-3, 3),
                   (-300, 300), (1, 1), (-1, -1), (-1, 0), (-128, 127), (0, 1)]:
        for _ in range(20):
            w = rng.integers(lo, hi + 1, (4, 6)) * 2 ** int(rng.integers(0, 3))
            try:
                mine = stock_dense_weights(w)
            except ValueError:
                continue
            with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
                loaded, bits, exp, _ = optimize_weight_bits(w.copy())
            mode = determine_sign_mode(loaded)
            applied = truncate_weights(clip_weights(loaded, mode, num_bits=8), mode, bits)
            basis = np.eye(w.shape[1], dtype=np.int64)
            acc = applied @ basis
            lava = np.left_shift(acc, exp) if exp > 0 else np.right_shift(acc, -exp)
            assert np.array_equal(mine, lava), w
            checked += 1
            changed += not np.array_equal(mine, w)
    assert checked > 150 and changed > 10


def _slayer_file(path, conv: bool, current_decay: float, seed: int = 0):
    import torch
    import lava.lib.dl.slayer as slayer

    torch.manual_seed(seed)
    params = {"threshold": 1.0, "current_decay": current_decay, "voltage_decay": 0.03}
    if conv:
        blocks = [slayer.block.cuba.Conv(params, 1, 3, 3, padding=1, weight_scale=2),
                  slayer.block.cuba.Flatten(),
                  slayer.block.cuba.Dense(params, 3 * 5 * 5, 4, weight_scale=2)]
        x = torch.rand(1, 1, 5, 5, 4)
    else:
        blocks = [slayer.block.cuba.Dense(params, 10, 6, weight_scale=3),
                  slayer.block.cuba.Dense(params, 6, 3, weight_scale=3)]
        x = torch.rand(1, 10, 4)
    for block in blocks:           # slayer learns neuron shapes from a first forward pass
        x = block(x)
    with h5py.File(path, "w") as f:
        layers = f.create_group("layer")
        offset = 0
        if conv:                   # netx needs the input shape before a conv
            first = layers.create_group("0")
            first.create_dataset("type", (1,), "S10", [b"input"])
            first.create_dataset("shape", data=np.array([1, 5, 5]))
            offset = 1
        for i, block in enumerate(blocks):
            block.export_hdf5(layers.create_group(str(i + offset)))


@pytest.mark.parametrize("conv,current_decay", [(True, 0.25), (False, 0.0)],
                         ids=["conv-flatten-dense", "dense-persistent-current"])
def test_slayer_network_read_with_read_netx_simulates_like_netx_runs_it(tmp_path, conv,
                                                                        current_decay):
    path = tmp_path / "slayer.net"
    _slayer_file(path, conv, current_decay)
    assert errors(validate_netx_file(path)) == []
    steps = 10
    graph = read_netx(path, steps=steps)
    assert {n.kind for n in graph} >= {"cuba", "readout"}
    shape = graph.input.shape
    x = (np.random.default_rng(1).random((4, *shape)) > 0.4).astype(np.float64)
    ref = simulate(graph, x, mode="fixed")
    lava = run_stock_netx(path, x, steps, input_message_bits=0,
                          input_layout="xyz" if conv else "flat-chw", spikes=True)
    pops = [n.name for n in graph if n.kind == "cuba"]
    assert len(pops) == len(lava["counts"])
    for block, name in enumerate(pops):
        assert np.array_equal(lava["counts"][block], ref.counts[name]), name
    assert lava["counts"][len(pops) - 1].sum() > 0
    # the readout of a spiking output layer is its rate over the window
    assert np.array_equal(ref.output * steps, lava["counts"][len(pops) - 1])


@pytest.mark.parametrize("builder,levels,options", [(random_mlp, [4, 2, 1], {}),
                                                    (random_cnn, [1, 1, 1], {"alignment": "ttm"})],
                         ids=["mlp-compile", "cnn-ttm-compile"])
def test_a_compiled_builds_net_file_runs_in_stock_netx(tmp_path, builder, levels, options):
    """What `mtdeploy compile` writes (not only write_netx): its network.net runs in stock netx
    on Loihi2SimCfg as its stock layers say."""
    from mtdeploy.api import compile_model

    graph = builder(np.random.default_rng(3), levels=levels)
    build = compile_model(graph, out_dir=tmp_path / "build", **options)
    assert build.report["netx"]["file"] == "network.net"
    path = tmp_path / "build" / "network.net"
    assert sorted(p.name for p in path.parent.glob("*.net")) == ["network.net"]
    run = stock_run_settings(path)
    x = np.random.default_rng(4).uniform(0, 1, (4, *build.graph.input.shape))
    limit = 2 ** (build.graph.meta["input_bits"] - 1) - 1
    x_int = np.clip(np.round(x * 2.0 ** build.graph.meta["input_exp"]), -limit, limit)
    lava = run_stock_netx(path, x_int, run["reset_interval"], run["input_message_bits"],
                          run["input_layout"], spikes=True)
    ref = simulate(read_netx(path, use_extension=False), x_int, mode="fixed")
    assert np.array_equal(lava["v"], ref.output * run["reset_interval"] * 2 ** run["act_shift"])
