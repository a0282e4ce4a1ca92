"""Windows, latency and throughput figures of the schedule (docs/semantics.md §4)."""
import numpy as np

from mtdeploy.passes import ConvertOptions, convert, schedule
from mtdeploy.testing import random_mlp, random_residual


def test_avg_repeat_is_layer_sequential_with_hops():
    g = convert(random_mlp(np.random.default_rng(0), hidden=(6, 5, 4), levels=[8, 2, 4]))
    s = schedule(g, hop_steps=1)
    w = {row["name"]: tuple(row["window"]) for row in s["layers"]}
    acts = [n.name for n in g.of_kind("qcfs")]
    # input [0,1) -> a1 [2,10) -> a2 [11,13) -> a3 [14,18) -> readout (T=4) [19,23)
    assert [w[a] for a in acts] == [(2, 10), (11, 13), (14, 18)]
    assert w["readout"] == (19, 23)
    lat = s["latency"]
    assert lat["sum_T"] == 14 and abs(lat["mean_T"] - 14 / 3) < 1e-12 and lat["max_T"] == 8
    assert lat["sequential_steps"] == 23 == s["total_steps"]
    assert lat["pipeline_interval_steps"] == 8
    # zero-delay reference schedule: latency = 1 (input) + sum of windows incl. readout
    s0 = schedule(g, hop_steps=0)
    assert s0["latency"]["sequential_steps"] == 1 + 8 + 2 + 4 + 4


def test_streamed_equal_T_edges_overlap():
    g = convert(random_mlp(np.random.default_rng(0), hidden=(6, 5)),
                ConvertOptions(alignment="ttm", timesteps=4))
    s = schedule(g, hop_steps=1)
    w = {row["name"]: tuple(row["window"]) for row in s["layers"]}
    acts = [n.name for n in g.of_kind("qcfs")]
    assert w[acts[0]] == (2, 6) and w[acts[1]] == (3, 7) and w["readout"] == (4, 8)
    assert s["alignment"] and all(a["from"] == "x" for a in s["alignment"])


def test_tpp_windows_are_twice_T_and_residual_waits_for_both_inputs():
    g = convert(random_residual(np.random.default_rng(0), levels=[2, 8, 4]),
                ConvertOptions(neuron="tpp"))
    s = schedule(g, hop_steps=1)
    rows = {r["name"]: r for r in s["layers"]}
    acts = [n.name for n in g.of_kind("qcfs")]
    for a in acts:
        start, end = rows[a]["window"]
        assert end - start == 2 * g[a].T
    last = rows[acts[2]]
    assert last["window"][0] == max(rows[p]["window"][1] for p in last["producers"]) + 1
