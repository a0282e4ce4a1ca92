"""The budget checker: exact costs and core counts of hand-computed networks, every rule firing
at once, plain and converted graphs costed alike, the timing rule shared with the schedule pass,
energy from spike counts, the exit code and the smallest fitting profile."""
from __future__ import annotations

import io
import json
import textwrap

import numpy as np
import pytest

from mtdeploy.errors import DoesNotFitError, InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.cli import run_check
from mtdeploy.findings import Finding
from mtdeploy.targets.checker import check
from mtdeploy.targets.profiles import load_profile


# ---- builders -------------------------------------------------------------------------------
def profile(tmp_path, name="tiny", base="loihi2", **overrides):
    """A profile extending ``base`` with dotted-key overrides (``core__neurons=16``)."""
    sections: dict[str, dict] = {}
    for key, value in overrides.items():
        section, leaf = key.split("__")
        sections.setdefault(section, {})[leaf] = {"value": value, "assumption": True,
                                                  "note": "test fixture: a deliberately small core"}
    lines = [f"name: {name}", f"title: {name}", f"extends: {base}"]
    for section, leaves in sections.items():
        lines.append(f"{section}:")
        lines += [f"  {k}: {json.dumps(v)}" for k, v in leaves.items()]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_profile(str(path))


def linear(g, name, x, n_out, weight=None, **attrs):
    n_in = g[x].shape[0]
    w = np.ones((n_out, n_in), np.float32) if weight is None else weight.astype(np.float32)
    params = {"weight": w, "bias": np.zeros(n_out, np.float32)}
    node = g.add(Node(name, "linear", [x], {"in_features": n_in, "out_features": n_out, **attrs},
                      params, shape=(n_out,)))
    return node.name


def qcfs(g, name, x, levels=4):
    return g.add(Node(name, "qcfs", [x], {"levels": levels}, {"threshold": np.float32(1.0)},
                      shape=g[x].shape)).name


def mlp(widths, levels=4, weights=None) -> Graph:
    """input(widths[0]) -> [linear -> qcfs] ... -> linear (read out)."""
    g = Graph("mlp")
    x = g.add(Node("input", "input", attrs={"shape": [widths[0]]}, shape=(widths[0],))).name
    weights = weights or {}
    for k, n in enumerate(widths[1:-1], start=1):
        x = qcfs(g, f"q{k}", linear(g, f"fc{k}", x, n, weights.get(k)), levels)
    g.output = linear(g, "out", x, widths[-1], weights.get(len(widths) - 1))
    return g


def conv_net(levels=4) -> Graph:
    """1x6x6 -> conv 3x3 (8 ch, pad 1) -> qcfs -> flatten -> linear 288 -> 2."""
    g = Graph("conv")
    g.add(Node("input", "input", attrs={"shape": [1, 6, 6]}))
    g.add(Node("conv", "conv", ["input"], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1],
                                           "groups": 1, "in_channels": 1, "out_channels": 8,
                                           "kernel": [3, 3]},
               {"weight": np.ones((8, 1, 3, 3), np.float32), "bias": np.zeros(8, np.float32)}))
    g.add(Node("act", "qcfs", ["conv"], {"levels": levels}, {"threshold": np.float32(1.0)}))
    g.add(Node("flat", "flatten", ["act"]))
    g.add(Node("fc", "linear", ["flat"], {"in_features": 288, "out_features": 2},
               {"weight": np.ones((2, 288), np.float32), "bias": np.zeros(2, np.float32)}))
    g.output = "fc"
    g.infer_shapes()
    return g


def rows(report):
    return {r["node"]: r for r in report.per_layer}


# ---- exact, hand-computed costs ---------------------------------------------------------------
def test_neuron_bound_split_and_packing(tmp_path):
    # 32 hidden neurons on 16-neuron cores: 2 full cores; the 4-neuron readout takes a third.
    r = check(mlp([8, 32, 4]), profile(tmp_path, core__neurons=16), suggest=False)
    assert r.fits and r.totals["cores"] == 3
    q, out = rows(r)["q1"], rows(r)["out"]
    assert (q["tiling"], q["cores"], out["cores"]) == ([2, 1, 1], 2, 1)
    assert (q["neurons"], q["synapses"], out["synapses"]) == (32, 32 * 8, 4 * 32)
    assert q["accumulators"] == 32                     # one avg-repeat accumulator per neuron
    # state: each neuron 48 bits + one 24-bit accumulator
    assert q["state_memory_bytes"] == 32 * (48 + 24) // 8
    assert q["encoding"] == ["dense"] and q["synaptic_memory_bytes"] == 32 * 8 * 8 // 8


def test_memory_bound_split(tmp_path):
    # 256 bits of synapses per core: a hidden neuron needs 8 x 8 bits (4 per core -> 8 cores),
    # a readout neuron 32 x 8 bits (1 per core -> 4 cores); none can share.
    r = check(mlp([8, 32, 4]), profile(tmp_path, core__synaptic_memory_bytes=32), suggest=False)
    assert rows(r)["q1"]["cores"] == 8 and rows(r)["out"]["cores"] == 4
    assert r.totals["cores"] == 12
    assert all(row["per_core"]["synaptic_bytes"][0] <= 32 for row in r.per_layer)


def test_sparse_encoding_where_it_pays(tmp_path):
    w = np.zeros((32, 8))
    w[:, [0, 7]] = 1.0                 # 2 of 8 inputs per neuron: index+weight beats a dense row
    r = check(mlp([8, 32, 4], weights={1: w}), "loihi2", suggest=False)
    q = rows(r)["q1"]
    assert q["encoding"] == ["sparse"]
    assert q["synaptic_memory_bytes"] == 32 * 2 * (8 + 13) // 8       # 13 index bits (8192/core)
    assert rows(r)["out"]["encoding"] == ["dense"]


def test_conv_kernels_shared_and_fewest_even_tiles(tmp_path):
    # 8x6x6 = 288 neurons, 64 per core: no block split gives 5 tiles (8/5 -> 2 ch x 36 = 72 > 64),
    # so 6; the 2-neuron readout fits beside a 48-neuron tile.
    r = check(conv_net(), profile(tmp_path, core__neurons=64), suggest=False)
    act, fc = rows(r)["act"], rows(r)["fc"]
    assert act["tiles"] == 6 and r.totals["cores"] == 6 and fc["cores"] == 1
    assert act["encoding"] == ["shared"]
    assert act["synapses"] == 8 * (3 * 6 - 2) ** 2     # border rows/cols read 2 of 3 inputs
    assert fc["synapses"] == 2 * 288
    # shared kernels: each core stores 9 weights for each of its channels, once
    assert act["per_core"]["synaptic_bytes"][0] == -(-8 // act["tiling"][0]) * 9
    assert act["per_core"]["fan_in"][0] <= 36


def test_plain_and_converted_graph_cost_the_same():
    from mtdeploy.passes.convert import convert

    plain = conv_net()
    converted = convert(plain)
    assert converted.of_kind("align") and converted.of_kind("readout")
    a, b = check(plain, "loihi2", suggest=False), check(converted, "loihi2", suggest=False)
    strip = ("layer", "node")
    ra = [{k: v for k, v in r.items() if k not in strip and k != "producers"} for r in a.per_layer]
    rb = [{k: v for k, v in r.items() if k not in strip and k != "producers"} for r in b.per_layer]
    assert ra == rb
    assert a.totals == b.totals
    assert a.latency == b.latency


def test_converted_readout_and_streamed_edges():
    """``--alignment ttm`` leaves equal-T edges without an accumulator: fewer state bits."""
    from mtdeploy.passes.convert import ConvertOptions, convert

    g = mlp([8, 16, 16, 4], levels=4)
    avg = check(convert(g), "loihi2", suggest=False)
    ttm = check(convert(g, ConvertOptions(alignment="ttm")), "loihi2", suggest=False)
    q2 = {r["layer"].split()[0]: r for r in avg.per_layer}["q2"]
    q2_ttm = {r["layer"].split()[0]: r for r in ttm.per_layer}["q2"]
    assert q2["accumulators"] == 16 and q2_ttm["accumulators"] == 0
    assert ttm.latency["sequential_steps"] < avg.latency["sequential_steps"]


@pytest.mark.parametrize("alignment", ["avg-repeat", "ttm"])
def test_latency_follows_the_schedule_pass(alignment):
    from mtdeploy.passes.convert import ConvertOptions, convert
    from mtdeploy.passes.schedule import schedule

    g = mlp([8, 16, 16, 16, 4])
    for node, levels in zip(g.of_kind("qcfs"), (2, 8, 8)):
        node.attrs["levels"] = levels
    snn = convert(g, ConvertOptions(alignment=alignment))
    expected = schedule(snn.copy(), hop_steps=1)["latency"]
    got = check(snn, "loihi2", suggest=False).latency
    for key in ("sequential_steps", "sum_T", "mean_T", "max_T", "pipeline_interval_steps"):
        assert got[key] == expected[key], key


# ---- rules ----------------------------------------------------------------------------------
def breaking_everything() -> Graph:
    """Quantized by hand so each rule has something to find."""
    rng = np.random.default_rng(0)
    g = mlp([300, 6, 40, 3])
    g.meta.update({"quantized": True, "input_bits": 8})
    g["fc1"].params["weight_int"] = np.full((6, 300), 1001, np.int32)        # 11-bit mantissa
    g["fc2"].params["weight_int"] = rng.integers(-3, 4, (40, 6)).astype(np.int32)
    g["out"].params["weight_int"] = rng.integers(-3, 4, (3, 40)).astype(np.int32)
    g["q1"].attrs["threshold_int"] = 2 ** 20
    g["fc2"].attrs["delay"] = 100
    return g


def test_every_rule_fires_at_once(tmp_path):
    # q1 reads 300 inputs of 11-bit weights: cores of 8 bytes take 5 per partial-sum stage, so
    # 60 stages, and its neurons' 60 axons (660 bits) from them still exceed 40 axons / 8 bytes
    tiny = profile(tmp_path, chip__cores=2, core__neurons=4, core__fan_in_axons=40,
                   core__fan_out_axons=2, core__synaptic_memory_bytes=8,
                   core__state_memory_bytes=8, neuron__state_bits=16, neuron__graded_spike_bits=0)
    r = check(breaking_everything(), tiny, suggest=False)
    assert not r.fits
    found = {(f.rule, f.severity) for f in r.findings}
    assert found >= {("weight_bits", "error"), ("state_bits", "error"), ("state_range", "error"),
                     ("state_range", "warning"), ("fan_in", "error"), ("fan_out", "error"),
                     ("synaptic_memory", "error"), ("state_memory", "error"), ("delay", "error"),
                     ("graded_input", "warning"), ("chips", "error"),
                     ("partial_sum_range", "error")}
    by = {(f.rule, f.node): f for f in r.findings}
    q1, q2 = "q1 (qcfs)", "q2 (qcfs)"
    assert by[("weight_bits", "fc1 (linear)")].used == 11 and by[("weight_bits", "fc1 (linear)")].limit == 8
    assert by[("fan_in", q1)].used == 60 and by[("fan_in", q1)].limit == 40
    assert by[("synaptic_memory", q1)].used == 60 * 11 / 8 and by[("synaptic_memory", q1)].limit == 8
    assert by[("state_memory", q1)].used == (48 + 24) / 8 and by[("state_memory", q1)].limit == 8
    # q2's tiling follows from the fan-out its neurons need into the readout's partial-sum
    # stages (the readout's 40 x 3-bit weights exceed 8 bytes), and every q1 neuron feeds all
    # of q2's tiles
    assert by[("fan_out", q1)].used == rows(r)["q2"]["tiles"] > 2
    assert by[("delay", q2)].used == 100 and by[("delay", q2)].limit == 62
    ranges = {f.severity: f for f in r.findings if f.rule == "state_range" and f.node == q1}
    assert ranges["error"].used == 2 ** 20 and ranges["error"].limit == 2 ** 15 - 1
    assert ranges["warning"].used == 1 * 300 * 1001 * 127     # t_in x sum|w| x largest input
    assert by[("state_bits", None)].used == 24
    assert by[("graded_input", q1)].severity == "warning"
    chips = by[("chips", None)]
    assert chips.used > 1 and chips.limit == 1
    for f in r.findings:                 # every layer finding names its layer in the message
        assert isinstance(f, Finding) and (f.node is None or f.node in f.message)
    assert [f.severity for f in r.findings] == sorted((f.severity for f in r.findings),
                                                       key=("error", "warning", "info").index)


def test_a_clean_network_has_no_findings():
    r = check(mlp([16, 32, 10]), "loihi2", suggest=False)
    assert r.fits and r.findings == [] and r.totals["chips"] == 1


def test_warnings_alone_still_fit(tmp_path):
    r = check(mlp([16, 32, 10]), profile(tmp_path, neuron__graded_spike_bits=0), suggest=False)
    assert r.fits and [f.rule for f in r.findings] == ["graded_input"]


# ---- output, exit code, suggestions -------------------------------------------------------------
def test_run_check_exit_codes_and_outputs(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(textwrap.dedent("""
        name: tiny
        title: one core of 16 neurons
        extends: loihi2
        chip: {cores: {value: 1, assumption: true, note: a single core for the exit-code test}}
        core: {neurons: {value: 16, assumption: true, note: a small core for the exit-code test}}
        """))
    out = io.StringIO()
    assert run_check(mlp([8, 8, 2]), str(tiny), False, out) == 0
    assert "fits on **tiny**" in out.getvalue()
    out = io.StringIO()
    code = run_check(mlp([8, 40, 2]), str(tiny), True, out)
    assert code == DoesNotFitError.exit_code == 3
    doc = json.loads(out.getvalue())
    assert doc["fits"] is False and doc["profile"] == "tiny"
    assert [f["rule"] for f in doc["findings"]] == ["chips"]
    assert {r["node"] for r in doc["per_layer"]} == {"q1", "out"}
    assert doc["smallest_fitting_profile"] == "loihi1"
    assert "| q1 (qcfs) |" in doc["markdown"]
    with pytest.raises(InputError):
        run_check(mlp([8, 8, 2]), str(tmp_path / "missing.yaml"), False, io.StringIO())


def test_smallest_fitting_profile_names_a_multi_chip_system():
    # six 2048x2048 dense layers: 4 MiB of 8-bit weights each, 32 cores of 128 KiB: > 128 cores
    rng = np.random.default_rng(1)
    widths = [2048] * 7 + [10]
    g = mlp(widths, weights={k: rng.standard_normal((widths[k], widths[k - 1]))
                              for k in range(1, len(widths))})
    r = check(g, "loihi2")
    assert not r.fits and r.totals["cores"] > 128
    assert [f.rule for f in r.findings] == ["chips"]
    assert r.smallest_fitting_profile == "kapoho_point"
    assert check(g, "kapoho_point", suggest=False).fits


# ---- energy ------------------------------------------------------------------------------------
def test_synops_from_spike_counts_and_the_bound():
    g = mlp([8, 32, 4])
    bound = check(g, "loihi2", suggest=False)
    # the input is presented once (1 spike per input neuron); hidden neurons fire <= T = 4 times
    assert bound.energy["activity"]["synops"] == 8 * 32 * 1 + 32 * 4 * 4
    measured = check(g, "loihi2", spike_counts={"input": 8, "q1": 16}, suggest=False)
    assert measured.energy["activity"]["synops"] == 8 * 32 + 4 * 32 * (16 / 32)
    p = load_profile("loihi2")
    parts = measured.energy["energy_parts_uJ"]
    assert parts["synops"] == pytest.approx(measured.energy["activity"]["synops"] * p.synop_pj * 1e-6)
    assert measured.energy["energy_uJ"] == pytest.approx(sum(parts.values()))
    assert measured.energy["paper_energy"]["ann_uJ"] == pytest.approx((8 * 32 + 32 * 4) * 4.6e-6)
    with pytest.raises(InputError, match="unknown populations"):
        check(g, "loihi2", spike_counts={"nope": 1.0})
