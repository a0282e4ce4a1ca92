"""Partitioner: splitting, packing, fan-out accounting, multi-chip placement on Kapoho Point
with traffic checked against a brute-force count from the weights, and the strategies."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from mtdeploy.errors import InputError
from mtdeploy.targets.partition import (STRATEGIES, interchip, partition, place_fm, place_greedy,
                                        register_strategy)
from mtdeploy.targets.profiles import load_profile
from mtdeploy.targets.resources import RESOURCES, extract, limits

from test_checker import mlp, profile

ROOT = Path(__file__).resolve().parents[1]


def synthetic():
    spec = importlib.util.spec_from_file_location("synthetic", ROOT / "benchmarks" / "synthetic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def banded_chain(n=2048, layers=6, band=900):
    """Hidden layers whose neuron i reads inputs |i - j| < band: a few MiB each, > 1 chip."""
    r = np.arange(n)
    w = (np.abs(r[:, None] - r[None, :]) < band).astype(np.float32)
    return mlp([n] * (layers + 1) + [10], weights={k: w for k in range(1, layers + 1)})


def brute_force_traffic(graph, placement, spikes_per_neuron):
    """Messages per sample between cores, from the weight matrices directly: one per spike per
    (producer neuron, consumer tile that has a non-zero weight from it)."""
    n = placement.n_cores
    t = np.zeros((n, n))
    for q_name, lp in placement.layers.items():
        w = graph[graph[q_name].inputs[0]] if q_name != graph.output else graph[q_name]
        producer = w.inputs[0]
        if producer not in placement.layers:
            continue                                   # host input
        p_bounds = placement.layers[producer].tiling.bounds[0]
        p_cores = placement.tile_cores(producer)
        q_bounds = lp.tiling.bounds[0]
        for j, q_core in enumerate(placement.tile_cores(q_name)):
            cols = np.flatnonzero(np.any(w.params["weight"][q_bounds[j]:q_bounds[j + 1]] != 0, 0))
            tiles = np.searchsorted(p_bounds, cols, side="right") - 1
            np.add.at(t[:, q_core], p_cores[tiles], spikes_per_neuron[producer])
    return t


def test_multi_chip_placement_on_kapoho_point():
    g = banded_chain()
    kapoho = load_profile("kapoho_point")
    net = extract(g)
    for strategy in ("greedy", "fm"):
        pl = partition(net, kapoho, strategy)
        assert pl.n_cores > kapoho.cores_per_chip and pl.n_chips >= 2
        per_chip = np.bincount(pl.core_chip)
        assert len(per_chip) == pl.n_chips and per_chip.max() <= kapoho.cores_per_chip
        assert pl.n_chips == -(-pl.n_cores // kapoho.cores_per_chip)      # no chip wasted
        spikes = {name: float(p.T) for name, p in net.populations.items()}
        expected = brute_force_traffic(g, pl, spikes)
        np.testing.assert_allclose(pl.traffic.toarray(), expected)
        chips = pl.core_chip
        cross = expected[chips[:, None] != chips[None, :]].sum()
        assert cross > 0 and pl.inter_chip_messages == pytest.approx(cross)


def test_measured_spike_counts_scale_the_traffic():
    g = banded_chain(n=1024, layers=3, band=300)
    net = extract(g)
    p = load_profile("loihi2")
    bound = partition(net, p, "greedy")
    counts = {"q1": 1024 * 1.0, "q2": 1024 * 0.5}        # 1 and 0.5 spikes per neuron (T = 4)
    measured = partition(net, p, "greedy", spike_counts=counts)
    spikes = {"input": 1.0, "q1": 1.0, "q2": 0.5, "q3": 4.0, "out": 4.0}
    np.testing.assert_allclose(measured.traffic.toarray(), brute_force_traffic(g, measured, spikes))
    assert measured.total_messages < bound.total_messages


def test_small_layers_share_a_core_and_big_ones_split(tmp_path):
    pl = partition(extract(mlp([8, 6, 5, 4, 3])), load_profile("loihi2"))
    assert pl.n_cores == 1 and all(list(pl.layer_cores(n)) == [0] for n in pl.layers)
    small = profile(tmp_path, core__neurons=100)
    pl = partition(extract(mlp([8, 250, 3])), small)
    assert pl.layers["q1"].tiling.n_tiles == 3 and pl.n_cores == 3
    assert set(pl.layer_cores("out")) <= set(pl.layer_cores("q1"))     # readout packed beside


def test_fan_out_counts_neuron_destination_pairs(tmp_path):
    # q2 (40 neurons, 4 per core) has 10 tiles each reading all 6 neurons of q1
    g = mlp([3, 6, 40, 2])
    pl = partition(extract(g), profile(tmp_path, core__neurons=4))
    assert pl.layers["q2"].tiling.n_tiles == 10
    assert pl.layers["q1"].fan_out.sum() == 6 * 10
    # 30 fan-out axons per core: q1 must split into tiles of 3 neurons (3 x 10 = 30)
    pl = partition(extract(g), profile(tmp_path, name="fo", core__neurons=4, core__fan_out_axons=30))
    assert pl.layers["q1"].tiling.n_tiles == 2
    assert pl.layers["q1"].fan_out.max() == 30


def test_every_core_within_its_limits_on_resnet18():
    g = synthetic().resnet18(levels=4)
    p = load_profile("kapoho_point")
    pl = partition(extract(g), p, "greedy")
    assert all(not lp.relaxed for lp in pl.layers.values())
    assert np.all(pl.core_usage <= limits(p) + 1e-9), RESOURCES
    # the tiles cover every neuron exactly once
    net = extract(g)
    for name, lp in pl.layers.items():
        assert lp.cost.neurons.sum() == net.populations[name].size


def test_fm_finds_the_clusters_greedy_cuts():
    # cores 0,2,4,6 talk to each other, and 1,3,5,7: core order interleaves the two groups
    n = 8
    t = np.zeros((n, n))
    for group in (range(0, n, 2), range(1, n, 2)):
        for i in group:
            for j in group:
                if i != j:
                    t[i, j] = 10.0
    t[0, 1] = 1.0
    traffic = sparse.csr_matrix(t)
    greedy = place_greedy(traffic, 2, 4)
    fm = place_fm(traffic, 2, 4)
    assert interchip(traffic, greedy) > 100
    assert interchip(traffic, fm) == 1.0                          # only the 0 -> 1 message
    assert np.bincount(fm).tolist() == [4, 4]


def test_fm_never_worse_than_greedy_on_a_real_network():
    net = extract(synthetic().resnet18(levels=4))
    p = load_profile("kapoho_point")
    greedy, fm = partition(net, p, "greedy"), partition(net, p, "fm")
    assert fm.n_cores == greedy.n_cores and fm.n_chips == greedy.n_chips >= 2
    assert fm.inter_chip_messages < greedy.inter_chip_messages
    assert fm.total_messages == pytest.approx(greedy.total_messages)


def test_strategy_registry():
    net = extract(mlp([8, 32, 4]))
    with pytest.raises(InputError, match="unknown partition strategy"):
        partition(net, load_profile("loihi2"), "annealing")

    @register_strategy("all_last")
    def all_last(traffic, n_chips, cores_per_chip):
        return np.full(traffic.shape[0], n_chips - 1)

    try:
        assert partition(net, load_profile("loihi2"), "all_last").core_chip.tolist() == [0]
        with pytest.raises(ValueError, match="registered twice"):
            register_strategy("all_last")(all_last)
    finally:
        del STRATEGIES["all_last"]


def test_sparse_overlap_equals_the_dense_one():
    """The traffic count builds tile x box overlaps sparsely (an ImageNet layer's dense array
    held gigabytes); it must equal the dense definition, empty boxes and edge blocks included."""
    from mtdeploy.targets.resources import Tiling, overlap, overlap_sparse
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(int(x) for x in rng.integers(1, 30, 3))
        tiling = Tiling.even(shape, tuple(int(rng.integers(1, n + 1)) for n in shape))
        n = int(rng.integers(0, 20))
        lo = np.stack([rng.integers(0, d, n) for d in shape], 1).astype(np.int64)
        hi = np.minimum(lo + np.stack([rng.integers(0, d + 1, n) for d in shape], 1), shape)
        got = overlap_sparse(tiling, lo, hi)
        assert got.has_sorted_indices
        assert np.array_equal(got.toarray(), overlap(tiling, lo, hi))
