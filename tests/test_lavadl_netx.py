"""Issue 16, item 1: every lava-dl NetX file stock netx can run comes in, and runs as netx runs it.

Files are written by lava-dl itself (slayer blocks' ``export_hdf5``): an input block with a
CUBA neuron (and the same file with lava-dl's LOIHI neuron type), dense layers with synaptic
delays (all zero, as ``delay=True`` exports them, and non-zero), and a sigma-delta (SDNN)
network with biases. For each, mtdeploy's reference (fixed point) equals stock netx
(``lava.lib.dl.netx.hdf5.Network`` on ``Loihi2SimCfg(select_tag="fixed_pt")``) at every step
of every population over 16 steps, and mtdeploy's Lava backend equals it in every
population's per-window totals; ``check``, ``compile`` and ``simulate --backend lava`` work.
What netx itself cannot run (a slayer Pool block) is refused with a clear error.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from mtdeploy.cli import main
from mtdeploy.errors import InputError
from mtdeploy.frontends.netx import read_netx
from mtdeploy.ir.snn import populations
from mtdeploy.passes.schedule import schedule
from mtdeploy.sim.reference import population_steps

pytestmark = pytest.mark.lava
pytest.importorskip("lava.lib.dl.slayer")

STEPS = 16
_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lavadl_files.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_lavadl_files", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _export(path: Path, blocks, x) -> None:
    for block in blocks:            # slayer learns neuron shapes from a first forward pass
        x = block(x)
    with h5py.File(path, "w") as f:
        layers = f.create_group("layer")
        for i, block in enumerate(blocks):
            block.export_hdf5(layers.create_group(str(i)))


def _cuba_input(path: Path, seed: int = 0) -> None:
    """Input block with a CUBA neuron on a 1x5x5 map -> conv -> flatten -> dense (delay=True,
    exported all zero) -> dense."""
    import torch
    import lava.lib.dl.slayer as slayer
    torch.manual_seed(seed)
    p = {"threshold": 1.0, "current_decay": 0.25, "voltage_decay": 0.03}
    _export(path, [slayer.block.cuba.Input(p, weight=1.0, bias=0.0),
                   slayer.block.cuba.Conv(p, 1, 3, 3, padding=1, weight_scale=2),
                   slayer.block.cuba.Flatten(),
                   slayer.block.cuba.Dense(p, 75, 6, weight_scale=3, delay=True),
                   slayer.block.cuba.Dense(p, 6, 3, weight_scale=3)],
            torch.rand(1, 1, 5, 5, 4))


def _sdnn(path: Path, seed: int = 1) -> None:
    """sigma_delta Input -> Conv -> Flatten -> Dense -> Output, with biases (slayer's SDNN
    blocks export none; lava-dl's PilotNet SDNN files have them)."""
    import torch
    import lava.lib.dl.slayer as slayer
    torch.manual_seed(seed)
    p = {"threshold": 0.1, "tau_grad": 0.5, "scale_grad": 1, "requires_grad": False,
         "shared_param": True, "activation": torch.nn.functional.relu}
    _export(path, [slayer.block.sigma_delta.Input(p),
                   slayer.block.sigma_delta.Conv(p, 1, 3, 3, padding=1, weight_scale=2),
                   slayer.block.sigma_delta.Flatten(),
                   slayer.block.sigma_delta.Dense(p, 75, 4, weight_scale=2),
                   slayer.block.sigma_delta.Output(p, 4, 2)],
            torch.rand(1, 1, 5, 5, 4))
    with h5py.File(path, "r+") as f:
        f["layer/1/bias"] = np.array([4, -6, 10], np.float32)
        f["layer/3/bias"] = np.array([3, 0, -5, 8], np.float32)


def _edited(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _delays(f) -> None:
    del f["layer/3/delay"]
    f["layer/3/delay"] = np.array([0, 1, 2, 3, 1, 5], np.float32)


def _loihi(f) -> None:
    for i in f["layer"]:
        if "neuron" in f["layer"][i]:
            del f["layer"][i]["neuron/type"]
            f["layer"][i]["neuron/type"] = "LOIHI"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lavadl")
    _cuba_input(root / "cuba_input.net")
    _sdnn(root / "sdnn.net")
    return {"cuba_input": root / "cuba_input.net",
            "cuba_delays": _edited(root / "cuba_input.net", root / "cuba_delays.net", _delays),
            "loihi_input": _edited(root / "cuba_input.net", root / "loihi_input.net", _loihi),
            "sdnn": root / "sdnn.net"}


def test_the_exports_hold_what_this_test_is_about(files):
    with h5py.File(files["cuba_input"]) as f:
        assert "neuron" in f["layer/0"] and f["layer/0/type"][0] == b"input"
        assert not np.any(f["layer/3/delay"][()])              # delay=True, all zero
    with h5py.File(files["cuba_delays"]) as f:
        assert f["layer/3/delay"][()].max() == 5
    with h5py.File(files["sdnn"]) as f:
        types = [f[f"layer/{i}/neuron/type"][()] for i in (0, 1, 3, 4)]
        assert all(t in (b"SDNN", "SDNN") for t in types) and "sigma_output" in f["layer/4/neuron"]


@pytest.mark.parametrize("name", ["cuba_input", "cuba_delays", "loihi_input", "sdnn"])
def test_reference_and_lava_equal_stock_netx_spike_for_spike(files, name):
    """Every population at every step (spikes or graded payloads) over 16 steps, 2 samples."""
    from mtdeploy.targets.loihi2.lava import run_lava

    path = files[name]
    graph = read_netx(path, steps=STEPS)
    layers = bench.read_netx_layers(path)[0]
    x = bench.sample_inputs(graph, layers, 2, seed=3)
    stock = bench.run_stock(path, x, STEPS, "xyz" if len(graph.input.shape) == 3 else "flat-chw")
    stock.pop("v_end", None)
    ref = population_steps(graph, x)
    names = bench.stock_populations(graph)
    assert len(names) == len(stock) >= 3
    for k, pop in enumerate(names):
        assert np.array_equal(np.moveaxis(ref[pop], 0, 1), stock[k]), pop
    # every stock block does something on these inputs (the comparison is not of silence)
    assert all(np.any(stock[k]) for k in stock)
    _, counts = run_lava(graph, x, fixed_point=True, record_counts=True)
    for k, pop in enumerate(names):
        assert np.array_equal(counts[pop], stock[k].sum(1)), pop


def test_what_each_file_reads_as(files):
    kinds = {name: sorted({p.kind for p in populations(read_netx(path, steps=STEPS))})
             for name, path in files.items()}
    assert kinds["cuba_input"] == kinds["loihi_input"] == ["cuba", "input", "readout"]
    assert kinds["sdnn"] == ["input", "readout", "sdnn"]
    g = read_netx(files["sdnn"], steps=STEPS)
    modes = [p.attrs["mode"] for p in populations(g) if p.kind == "sdnn"]
    assert modes == ["delta", "sigma-delta", "sigma-delta", "sigma"]
    # a block reached after k steps starts from the state the stream left it in: non-zero here
    assert any(np.any(p.params.get("act_init", 0)) for p in populations(g) if p.kind == "sdnn")
    zero = read_netx(files["cuba_input"], steps=STEPS)
    assert not any(n.kind == "delay" for n in zero)              # all-zero delays: none
    delayed = read_netx(files["cuba_delays"], steps=STEPS)
    assert [n.kind for n in delayed].count("delay") == 1


def test_the_schedule_counts_the_delays(files):
    g = read_netx(files["cuba_delays"], steps=STEPS)
    layers = {row["name"]: row for row in schedule(g)["layers"]}
    assert layers["layer3.neuron"]["synaptic_delay"] == 5
    assert all(row["synaptic_delay"] == 0 for name, row in layers.items()
               if name != "layer3.neuron")


@pytest.mark.parametrize("name", ["cuba_delays", "sdnn"])
def test_check_compile_and_simulate_on_lava(files, name, tmp_path, capsys):
    path = files[name]
    assert main(["check", str(path)]) == 0
    assert main(["compile", str(path), "-o", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    procs = report["lava"]["processes_by_kind"]
    assert procs.get("WindowDelay" if name == "cuba_delays" else "SigmaDeltaReset", 0) >= 1
    graph = read_netx(path, steps=STEPS)
    x = bench.sample_inputs(graph, bench.read_netx_layers(path)[0], 2, seed=5)
    np.save(tmp_path / "x.npy", x)
    for backend in ("reference", "lava"):
        assert main(["simulate", str(tmp_path / "b"), "--input", str(tmp_path / "x.npy"),
                     "--fixed-point", "--backend", backend, "-o",
                     str(tmp_path / f"{backend}.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "reference.npy"), np.load(tmp_path / "lava.npy"))
    capsys.readouterr()


def test_what_netx_cannot_run_is_a_clear_error(files, tmp_path, capsys):
    import torch
    import lava.lib.dl.slayer as slayer
    torch.manual_seed(0)
    p = {"threshold": 0.1, "tau_grad": 0.5, "scale_grad": 1, "requires_grad": False,
         "shared_param": True, "activation": torch.nn.functional.relu}
    _export(tmp_path / "pool.net", [slayer.block.sigma_delta.Input(p),
                                    slayer.block.sigma_delta.Pool(p, 2),
                                    slayer.block.sigma_delta.Flatten(),
                                    slayer.block.sigma_delta.Dense(p, 4, 2)],
            torch.rand(1, 1, 4, 4, 3))
    with pytest.raises(InputError, match="pool"):
        read_netx(tmp_path / "pool.net")
    assert main(["check", str(tmp_path / "pool.net")]) == 2
    assert "mtdeploy: error:" in capsys.readouterr().err
    per_input = _edited(files["cuba_input"], tmp_path / "per_input.net", lambda f: (
        f["layer/3"].__delitem__("delay"), f["layer/3"].create_dataset("delay",
                                                                       data=np.ones(75))))
    with pytest.raises(InputError, match="per output neuron"):
        read_netx(per_input)
