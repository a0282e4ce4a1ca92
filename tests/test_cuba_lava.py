"""Issue 12, item 6: NetX files written by lava-dl run through mtdeploy's Lava backend.

A slayer ``cuba.Dense`` / ``cuba.Conv`` export reads as ``cuba`` populations; the Lava backend
builds Lava's own LIF (LIFReset, parameterised as netx does) for them. The build compiles,
checks, simulates on Lava bit for bit like the reference (outputs and every population's
spike counts, over several samples, so the per-window reset is exercised) and passes the
ladder. Lava's floating-point LIF is another model: asking for it is a clear exit 2.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from mtdeploy.api import load_build, simulate_build
from mtdeploy.cli import main
from mtdeploy.sim.reference import simulate

pytestmark = pytest.mark.lava
pytest.importorskip("lava.lib.dl.slayer")
from test_netx_lava import _slayer_file  # noqa: E402  (lava-dl's export, written as the docs show)

from mtdeploy.targets.loihi2.lava import run_lava  # noqa: E402

CASES = {"dense": (False, 0.0), "conv": (True, 0.25)}


@pytest.fixture(scope="module", params=sorted(CASES))
def slayer_build(request, tmp_path_factory):
    conv, current_decay = CASES[request.param]
    root = tmp_path_factory.mktemp(f"slayer_{request.param}")
    _slayer_file(root / "slayer.net", conv, current_decay, seed=1)
    assert main(["compile", str(root / "slayer.net"), "-o", str(root / "build")]) == 0
    graph = load_build(root / "build")
    x = (np.random.default_rng(2).random((4, *graph.input.shape)) > 0.5).astype(np.float32)
    np.save(root / "x.npy", x)
    return root, graph, x.astype(np.float64)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_describes_lavas_lif_and_check_takes_the_converted_network(capsys,
                                                                         slayer_build):
    root, graph, _ = slayer_build
    report = json.loads((root / "build" / "report.json").read_text())
    assert report["lava"]["available"]
    cuba = [n.name for n in graph if n.kind == "cuba"]
    assert report["lava"]["processes_by_kind"]["LIFReset"] == len(cuba) >= 2
    code, out, err = run(capsys, "check", root / "slayer.net")
    assert code == 0, err
    assert "no QCFS" not in out + err


def test_lava_equals_the_reference_in_spike_counts_and_output(slayer_build):
    _, graph, x = slayer_build
    ref = simulate(graph, x, mode="fixed")
    out, counts = run_lava(graph, x, fixed_point=True, record_counts=True)
    assert np.array_equal(out, ref.output)
    cuba = [n.name for n in graph if n.kind == "cuba"]
    assert sorted(counts) == sorted(cuba)
    for name in cuba:
        assert np.array_equal(counts[name], ref.counts[name]), name
    assert all(counts[name].sum() > 0 for name in cuba)          # every layer fires
    assert len({counts[cuba[0]][n].tobytes() for n in range(len(x))}) > 1   # samples differ


def test_simulate_and_ladder_commands_on_the_build(capsys, slayer_build, tmp_path):
    root, graph, x = slayer_build
    code, out, err = run(capsys, "simulate", root / "build", "--input", root / "x.npy",
                         "--backend", "lava", "--fixed-point", "-o", tmp_path / "lava.npy")
    assert code == 0, err
    ref, _ = simulate_build(graph, x, fixed_point=True)
    assert np.array_equal(np.load(tmp_path / "lava.npy"), ref)
    code, out, err = run(capsys, "ladder", root / "build", "--input", root / "x.npy", "-n", "2")
    assert code == 0, err
    assert "fixed-point SNN = Lava on every layer" in out


def test_floating_point_lava_is_a_clear_input_error(capsys, slayer_build, tmp_path):
    root, _, _ = slayer_build
    code, _, err = run(capsys, "simulate", root / "build", "--input", root / "x.npy",
                       "--backend", "lava", "-o", tmp_path / "out.npy")
    assert code == 2 and "fixed point only" in err and "--fixed-point" in err
    assert not (tmp_path / "out.npy").exists()
