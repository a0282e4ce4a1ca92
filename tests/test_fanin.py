"""Fan-in splitting (targets/fanin.py): a neuron whose inputs exceed a core becomes partial-sum
stages; the budget model costs them, the schedule counts their hop, and Lava runs them bit for
bit as the reference does."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mtdeploy.api import deployable
from mtdeploy.frontends import import_torch
from mtdeploy.nn import QCFS
from mtdeploy.passes import ConvertOptions
from mtdeploy.targets.checker import check
from mtdeploy.targets.fanin import blocks_for, plan_splits, with_stages
from mtdeploy.targets.profiles import PROFILE_DIR, load_profile
from mtdeploy.targets.resources import ann_synapses, extract


def global_pool_net(channels: int, classes: int = 4, threshold: float = 0.3) -> nn.Module:
    """The issue's shape: conv -> QCFS -> conv -> QCFS -> global pool -> linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), QCFS(4, threshold),
                         nn.Conv2d(channels, channels, 3, padding=1), QCFS(2, threshold),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)).eval()


@pytest.fixture
def small_profile(tmp_path):
    """Loihi 2 cores with 128 fan-in axons: the small net's readout (8 x 6 x 6 = 288 inputs
    per neuron) exceeds them."""
    (tmp_path / "loihi2.yaml").write_text((PROFILE_DIR / "loihi2.yaml").read_text())
    (tmp_path / "small.yaml").write_text(
        "extends: loihi2.yaml\nname: fanin_small\ntitle: small cores\n"
        "core:\n  fan_in_axons: {value: 128, assumption: true, note: test}\n")
    return load_profile(str(tmp_path / "small.yaml"))


def small_snn(profile):
    g = import_torch(global_pool_net(8), (3, 6, 6))
    return deployable(g, ConvertOptions(input_max=1.0), profile)


def test_blocks_cut_channels_first_to_the_fewest_that_fit(small_profile):
    snn, _ = small_snn(small_profile)
    net = extract(snn, 1)
    edge = net.populations["readout"].edges[0]
    assert edge.max_fan_in(net.populations["readout"].shape) == 288
    # 8 channels x 36 positions: blocks of 3 channels (108 inputs) fit 128, blocks of 4 do not
    assert blocks_for(edge, (8, 6, 6), 128) == (3, 1, 1)
    assert blocks_for(edge, (8, 6, 6), 20) == (8, 2, 1)       # then rows: 1 x 3 x 6 = 18
    assert snn["readout"].attrs["fan_in_split"] == {edge.producer: [3, 1, 1]}


def test_stages_keep_the_synapses_and_fit_where_the_unsplit_layer_could_not(small_profile):
    snn, sched = small_snn(small_profile)
    net = extract(snn, 1)
    staged = with_stages(net, plan_splits(net, small_profile))
    stages = [p for p in staged.populations.values() if p.stage_of == "readout"]
    assert len(stages) == 3
    assert ann_synapses(staged) == ann_synapses(net)
    assert all(s.edges[0].max_fan_in(s.shape) <= 128 for s in stages)
    readout = staged.populations["readout"]
    assert readout.accumulators == 1 and readout.edges[0].max_fan_in(readout.shape) == 1
    report = check(snn, small_profile, suggest=False)
    assert report.fits, [f.message for f in report.findings]
    # the unsplit edge needed 288 axons: without stages the same check reports it
    del snn["readout"].attrs["fan_in_split"]
    assert plan_splits(net, load_profile("loihi2")) == {}


def test_schedule_counts_the_partial_sum_hop(small_profile):
    snn, sched = small_snn(small_profile)
    w = {row["name"]: row["window"] for row in sched["layers"]}
    producer = snn["readout"].attrs["fan_in_split"]
    (name,) = producer
    assert w["readout"][0] == w[name][1] + 2          # two hops: synapse, then partial sum
    unsplit, plain = deployable(import_torch(global_pool_net(8), (3, 6, 6)),
                                ConvertOptions(input_max=1.0), load_profile("loihi2"))
    assert "fan_in_split" not in unsplit["readout"].attrs
    assert {r["name"]: r["window"] for r in plain["layers"]}["readout"][0] == w[name][1] + 1


@pytest.mark.lava
def test_split_network_reference_equals_lava_bit_for_bit(small_profile):
    pytest.importorskip("lava")
    from mtdeploy.sim.reference import simulate
    from mtdeploy.targets.loihi2.lava import describe_lava, run_lava

    snn, _ = small_snn(small_profile)
    layers = {l["name"]: l for l in describe_lava(snn)["layers"]}
    assert layers["readout"]["processes"]["PartialSum"] == 3
    x = np.random.default_rng(0).random((3, 3, 6, 6)).astype(np.float32)
    ref = simulate(snn, x, mode="fixed")
    out, counts = run_lava(snn, x, fixed_point=True, record_counts=True, timeout_s=300)
    assert np.array_equal(out, ref.output), np.abs(out - ref.output).max()
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]), pop
        assert c.sum() > 0, f"{pop} is silent: the check proves little"
    assert np.array_equal(ref.output, simulate(snn, x, mode="ann-int").output)


def test_global_pool_at_scale_fits_a_multi_chip_profile_by_splitting():
    """64 channels at 64 x 64: each readout neuron reads 262,144 neurons, 8x a Loihi 2 core's
    fan-in; split, it fits Kapoho Point (the issue's 256 x 128 x 128 version fits Hala Point:
    benchmarks/bench_fanin.py)."""
    g = import_torch(global_pool_net(64, classes=10), (3, 64, 64))
    profile = load_profile("kapoho_point")
    snn, _ = deployable(g, ConvertOptions(input_max=1.0), profile)
    (blocks,) = snn["readout"].attrs["fan_in_split"].values()
    assert np.prod(blocks) == 8
    report = check(snn, profile, suggest=False)
    assert report.fits, [f.message for f in report.findings]


@pytest.mark.lava
@pytest.mark.parametrize("alignment,timesteps", [("ttm", 4), ("none", 2)])
def test_every_kind_of_edge_split_runs_bit_exact_on_lava(tmp_path, alignment, timesteps):
    """Cores of 20 axons split every layer: the graded input edge, streamed conv edges (equal T,
    no align node: the delay lines count the stages' hop) and the readout over rows too."""
    pytest.importorskip("lava")
    from mtdeploy.sim.reference import simulate
    from mtdeploy.targets.loihi2.lava import run_lava

    (tmp_path / "loihi2.yaml").write_text((PROFILE_DIR / "loihi2.yaml").read_text())
    (tmp_path / "tiny.yaml").write_text(
        "extends: loihi2.yaml\nname: tiny\ntitle: tiny\n"
        "core:\n  fan_in_axons: {value: 20, assumption: true, note: test}\n")
    profile = load_profile(str(tmp_path / "tiny.yaml"))
    snn, _ = deployable(import_torch(global_pool_net(8), (3, 6, 6)),
                        ConvertOptions(input_max=1.0, alignment=alignment, timesteps=timesteps),
                        profile)
    splits = {n.name: n.attrs["fan_in_split"] for n in snn if n.attrs.get("fan_in_split")}
    assert splits["readout"] == {"3": [8, 2, 1]} and "input" in splits["1"] and "1" in splits["3"]
    x = np.random.default_rng(0).random((2, 3, 6, 6)).astype(np.float32)
    ref = simulate(snn, x, mode="fixed")
    out, counts = run_lava(snn, x, fixed_point=True, record_counts=True, timeout_s=300)
    assert np.array_equal(out, ref.output)
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]) and c.sum() > 0, pop
