"""NetX export/import without Lava: file layout, the exact MT-SNN round trip through the
extension, the stock view's exactness argument for T = 1, refusals, and corrupt files."""
import json
import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtdeploy.errors import DoesNotFitError, InputError
from mtdeploy.passes import ConvertOptions, convert, quantize
from mtdeploy.sim.reference import simulate
from mtdeploy.findings import errors
from mtdeploy.frontends.netx import read_netx, stock_run_settings
from mtdeploy.targets.loihi2.netx.plan import netx_findings, plan_netx, readout_logits
from mtdeploy.targets.loihi2.netx.schema import read_netx_layers, validate_netx_file
from mtdeploy.targets.loihi2.netx.writer import EXTENSION_VERSION, build_network_file, write_netx
from mtdeploy.testing import random_cnn, random_mlp, random_residual

BUILDERS = {"mlp": random_mlp, "cnn": random_cnn}


def _snn(builder, seed, levels, per_channel=True, **options):
    return quantize(convert(builder(np.random.default_rng(seed), levels=levels),
                            ConvertOptions(**options)), per_channel=per_channel)


def _x(graph, seed=0, n=24):
    return np.random.default_rng(seed).uniform(-0.2, 1.2, (n, *graph.input.shape))


def _x_int(graph, x):
    return np.clip(np.round(x * 2.0 ** graph.meta["input_exp"]), -127, 127)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(sorted(BUILDERS)), seed=st.integers(0, 2 ** 31),
       lv=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=3, max_size=3),
       alignment=st.sampled_from(["avg-repeat", "ttm"]), v_init=st.sampled_from([0.5, 0.0]))
def test_extension_round_trip_is_the_exact_graph(tmp_path_factory, arch, seed, lv, alignment, v_init):
    graph = _snn(BUILDERS[arch], seed, lv, alignment=alignment, v_init=v_init)
    path = tmp_path_factory.mktemp("rt") / "network.net"
    write_netx(graph, path)
    back = read_netx(path)
    assert back.to_json() == json.loads(json.dumps(graph.to_json()))
    for node in graph:
        for name, arr in node.params.items():
            assert np.array_equal(back[node.name].params[name], arr), (node.name, name)
    x = _x(graph, seed % 1000)
    assert np.array_equal(simulate(back, x, mode="fixed").output,
                          simulate(graph, x, mode="fixed").output)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(sorted(BUILDERS)), seed=st.integers(0, 2 ** 31),
       v_init=st.sampled_from([0.5, 0.0, 0.9]))
def test_T1_stock_layers_reproduce_mtdeploy_fixed_point_exactly(tmp_path_factory, arch, seed, v_init):
    """The exactness argument, checked on the stock view (whose CUBA simulation is bit-exact
    with Lava, tests/test_netx_lava.py): with every T = 1 the stock readout and every layer's
    spikes equal mtdeploy's fixed-point MT-SNN (quantized per layer: stock netx has one
    vThMant per layer, so only that network has an exact stock form)."""
    graph = _snn(BUILDERS[arch], seed, [1, 1, 1], per_channel=False, v_init=v_init)
    path = tmp_path_factory.mktemp("t1") / "network.net"
    write_netx(graph, path)
    run = stock_run_settings(path)
    assert run["exact"] and run["reset_interval"] == 1
    stock = read_netx(path, use_extension=False)
    assert {n.kind for n in stock} >= {"cuba", "readout"}
    x = _x(graph, seed % 1000)
    ref = simulate(graph, x, mode="fixed")
    got = simulate(stock, _x_int(graph, x), mode="fixed")
    assert np.array_equal(readout_logits(got.output * 2 ** run["act_shift"], run), ref.output)
    for layer in run["layers"][:-1]:
        assert np.array_equal(got.counts[f"layer{layer['layer']}.neuron"], ref.counts[layer["node"]])


def test_file_layout_is_what_stock_netx_reads(tmp_path):
    graph = _snn(random_cnn, 3, [2, 4, 2], per_channel=False)    # the stock layers' own units
    path = tmp_path / "network.net"
    write_netx(graph, path)
    with h5py.File(path) as f:
        assert sorted(f.keys()) == ["layer", "mtdeploy"]
        assert sorted(f["layer"].keys(), key=int) == [str(i) for i in range(len(f["layer"]))]
        types = [f[f"layer/{i}/type"][0].decode() for i in range(len(f["layer"]))]
        assert types == ["input", "conv", "conv", "flatten", "dense"]
        assert f["layer/0/type"].dtype.kind == "S" and f["layer/0/type"].shape == (1,)
        assert f["layer/1/neuron/type"][0] == b"CUBA"
        assert list(f["layer/0/shape"][()]) == [1, 6, 6]            # (C, H, W)
        conv = graph["conv1"]
        assert np.array_equal(f["layer/1/weight"][()], conv.params["weight_int"])  # OIHW
        assert list(f["layer/1/stride"][()]) == conv.attrs["stride"]
        neuron = f["layer/1/neuron"]
        assert neuron["iDecay"][()] == 4096 and neuron["vDecay"][()] == 0
        # the pool in front of the last linear layer is folded into its dense weights
        assert f["layer/4/weight"].shape == (4, 4 * 6 * 6)
        assert f["mtdeploy/version"][()] == EXTENSION_VERSION
    run = stock_run_settings(path)
    assert not run["exact"] and run["reset_interval"] == 4
    assert run["input_layout"] == "xyz" and run["readout"]["layer"] == 4
    assert validate_netx_file(path) == []


def test_ttm_and_mixed_T_files_are_the_streaming_approximation(tmp_path):
    graph = _snn(random_mlp, 5, [8, 2, 1], alignment="ttm")
    plan = plan_netx(graph)
    drives = [layer["drive"] for layer in plan.run["layers"]]
    assert drives == [1.0, 4.0, 1.0]          # input edge; TTM 8 -> 2 sums groups of 4; 2 -> 1 up
    assert plan.run["approximate_populations"] and plan.run["reset_interval"] == 8


def test_residual_and_tpp_are_refused_with_every_finding_and_nothing_is_written(tmp_path):
    path = tmp_path / "network.net"
    residual = quantize(convert(random_residual(np.random.default_rng(0), levels=[2, 2, 2])))
    with pytest.raises(DoesNotFitError) as info:
        write_netx(residual, path)
    assert any("chain" in f.message and "add" not in (f.node or "x") for f in info.value.findings)
    assert not path.exists() and os.listdir(tmp_path) == []
    tpp = _snn(random_mlp, 0, [2, 2, 2], neuron="tpp")
    findings = netx_findings(tpp)
    assert len(findings) == 2 and all("no stock NetX neuron" in f.message for f in findings)
    assert all(f.node.startswith("act") for f in findings)


def test_values_the_stock_loader_cannot_hold_are_refused_before_writing(tmp_path):
    path = tmp_path / "network.net"
    graph = _snn(random_mlp, 1, [2, 2, 2], per_channel=False)    # the stock layers' own units
    write_netx(graph, path)
    before = path.read_bytes()
    act = graph.of_kind("qcfs")[0]
    act.attrs["threshold_int"] = 2 ** 19          # vThMant beyond 17 bits
    with pytest.raises(DoesNotFitError, match="17-bit") as info:
        write_netx(graph, path)
    assert info.value.findings[0].node.startswith("layer 1 ")
    assert path.read_bytes() == before            # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["network.net"]


def test_needs_a_quantized_graph():
    graph = convert(random_mlp(np.random.default_rng(0), levels=[2, 2, 2]))
    with pytest.raises(InputError, match="quantized"):
        plan_netx(graph)


def test_an_edited_file_is_not_read_as_its_stale_extension(tmp_path):
    path = tmp_path / "network.net"
    graph = _snn(random_mlp, 2, [1, 1, 1])
    write_netx(graph, path)
    with h5py.File(path, "r+") as f:
        w = f["layer/2/weight"][()]
        w[0, 0] += 1
        f["layer/2/weight"][...] = w
    with pytest.raises(InputError, match="use_extension=False"):
        read_netx(path)
    stock = read_netx(path, use_extension=False)
    assert stock["layer2"].params["weight_int"][0, 0] == w[0, 0]


# ---- corrupt and foreign files --------------------------------------------------------------
@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.net"
    write_netx(_snn(random_cnn, 4, [1, 1, 1]), path)
    return path


def _corrupt_cases(good: bytes, tmp_path):
    rng = np.random.default_rng(0)
    cases = {"truncated": good[: len(good) // 2], "header-only": good[:512],
             "random": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "empty": b""}
    for name, data in cases.items():
        path = tmp_path / f"{name}.net"
        path.write_bytes(data)
        yield name, path


def test_corrupt_bytes_are_input_errors(good_file, tmp_path):
    for name, path in _corrupt_cases(good_file.read_bytes(), tmp_path):
        with pytest.raises(InputError, match="not a readable NetX"):
            read_netx(path)
        assert validate_netx_file(path)[0].rule == "structure", name


def _edit(src, dst, edit):
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


HDF5_EDITS = {
    "no layer group": (lambda f: f.move("layer", "layers"), "no /layer group"),
    "layer is a dataset": (lambda f: (f.move("layer", "old"), f.create_dataset("layer", data=1)),
                           "no /layer group"),
    "gap in numbering": (lambda f: f.move("layer/3", "layer/7"), "contiguously"),
    "type is a number": (lambda f: (f["layer/1"].pop("type"),
                                    f["layer/1"].create_dataset("type", data=3)), "ASCII string"),
    "pool layer": (lambda f: (f["layer/2"].pop("type"),
                              f["layer/2"].create_dataset("type", data=np.array([b"pool"], "S10"))),
                   "NotImplementedError"),
    "unknown neuron": (lambda f: (f["layer/1/neuron"].pop("type"),
                                  f["layer/1/neuron"].create_dataset("type", data=np.array([b"IZH"], "S10"))),
                       "unknown to netx"),
    "weight missing": (lambda f: f["layer/4"].pop("weight"), "'weight' is missing"),
    "extension json": (lambda f: (f["mtdeploy"].pop("graph"),
                                  f["mtdeploy"].create_dataset("graph", data="{not json")),
                       "not valid JSON"),
    "extension version": (lambda f: (f["mtdeploy"].pop("version"),
                                     f["mtdeploy"].create_dataset("version", data=99)),
                          "newer than this mtdeploy"),
    "extension graph": (lambda f: (f["mtdeploy"].pop("graph"),
                                   f["mtdeploy"].create_dataset("graph", data='{"format": "x"}')),
                        "not an mtdeploy IR"),
}


@pytest.mark.parametrize("case", sorted(HDF5_EDITS))
def test_malformed_files_are_input_errors_naming_the_problem(good_file, tmp_path, case):
    edit, words = HDF5_EDITS[case]
    path = _edit(good_file, tmp_path / "bad.net", edit)
    with pytest.raises(InputError, match=words):
        # layer edits would first trip the extension's integrity check: read the stock layers
        read_netx(path, use_extension=case.startswith("extension"))


def test_missing_file_and_bad_steps(tmp_path, good_file):
    with pytest.raises(InputError, match="no such file"):
        read_netx(tmp_path / "absent.net")
    with pytest.raises(InputError, match="steps"):
        read_netx(good_file, steps=0, use_extension=False)


def test_read_layers_returns_plain_values(good_file):
    layers, ext = read_netx_layers(good_file)
    assert layers[1]["type"] == "conv" and layers[1]["neuron"]["type"] == "CUBA"
    assert ext["format"] == "mtdeploy-netx"
    assert errors(validate_netx_file(good_file)) == []


def _write_layers(path, layers):
    def put(group, key, value):
        if isinstance(value, dict):
            sub = group.create_group(key)
            for k, v in value.items():
                put(sub, k, v)
        elif isinstance(value, str):
            group.create_dataset(key, data=np.array([value.encode()], "S10"))
        else:
            group.create_dataset(key, data=value)

    with h5py.File(path, "w") as f:
        group = f.create_group("layer")
        for i, layer in enumerate(layers):
            put(group, str(i), layer)


def test_mutated_stock_layers_read_as_a_graph_or_an_input_error(good_file, tmp_path):
    """Whatever a file holds, read_netx returns a graph or raises InputError, never a traceback."""
    base, _ = read_netx_layers(good_file)
    rng = np.random.default_rng(0)
    values = [np.int64(0), np.int64(-3), np.float64(2.5), np.array([1, 2, 3]), np.zeros((2, 2)),
              np.array([0]), "dense", "conv", "flatten", "input", "CUBA", {"type": "CUBA"}]
    keys = ["type", "shape", "weight", "bias", "stride", "padding", "dilation", "groups", "neuron",
            "iDecay", "vThMant"]
    outcomes = set()
    for trial in range(60):
        layers = [dict(layer, neuron=dict(layer["neuron"])) if "neuron" in layer else dict(layer)
                  for layer in base]
        for _ in range(int(rng.integers(1, 3))):
            layer = layers[int(rng.integers(len(layers)))]
            key = keys[int(rng.integers(len(keys)))]
            nested = key in ("iDecay", "vThMant") and isinstance(layer.get("neuron"), dict)
            target = layer["neuron"] if nested else layer
            target[key] = values[int(rng.integers(len(values)))]
        path = tmp_path / f"m{trial}.net"
        _write_layers(path, layers)
        try:
            graph = read_netx(path, steps=2)
        except InputError:
            outcomes.add("error")
        else:
            outcomes.add("graph")
            simulate(graph, np.ones((1, *graph.input.shape)), mode="fixed")
    assert outcomes == {"error", "graph"}


def test_network_without_stock_form_is_written_extension_only_and_reads_back(tmp_path):
    """A residual net (no stock NetX form) keeps the full MT-SNN in /mtdeploy, with an empty
    /layer group and the reasons recorded, under a name that is not .net: every .net file
    mtdeploy writes loads in stock netx."""
    rng = np.random.default_rng(5)
    g = quantize(convert(random_residual(rng, levels=[2, 4, 8])))
    assert build_network_file(g) == "network.mtsnn.h5"
    net = tmp_path / "network.net"
    with pytest.raises(DoesNotFitError, match="residual|chain|reads from"):
        write_netx(g, net)
    with pytest.raises(DoesNotFitError, match="network.mtsnn.h5"):
        write_netx(g, net, require_stock=False)
    assert not net.exists()
    path = tmp_path / "network.mtsnn.h5"
    findings = write_netx(g, path, require_stock=False)
    assert findings and stock_run_settings(path)["loadable"] is False
    back = read_netx(path)
    x = rng.uniform(0, 1, (16, *g.input.shape))
    assert np.array_equal(simulate(back, x, mode="fixed").output,
                          simulate(g, x, mode="fixed").output)
