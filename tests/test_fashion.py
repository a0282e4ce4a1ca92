"""The Fashion-MNIST example on tiny IDX files written here (no Debian package needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdeploy.frontends import load_model_graph
from test_examples import ONE_THREAD, load_script
from test_idx import write_fashion_like


@pytest.fixture(autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_missing_data_says_how_to_install_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        load_script("fashion").main(["--data-dir", str(tmp_path / "nowhere"),
                                     "--cache-dir", str(tmp_path / "cache")])
    message = str(exc.value.code)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "apt-get download dataset-fashion-mnist" in message and "dpkg-deb -x" in message
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_fashion_example_trains_caches_and_imports(tmp_path):
    data = tmp_path / "data"
    write_fashion_like(data, n_train=60, n_test=20)
    script = load_script("fashion")
    argv = ["--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1",
            "--val-samples", "10", "--calib-samples", "20", "--levels", "8,4,2,4", "--seed", "3",
            *ONE_THREAD]
    result = script.main(argv)
    model = result["model"]
    assert model.parent.name == "L8-4-2-4_e1_nall_s3"
    record = json.loads((model.parent / "train.json").read_text())
    assert record["train_samples"] == 50 and 0 <= record["test_acc"] <= 1
    graph = load_model_graph(model)          # save_traced recorded the input shape
    assert tuple(graph.input.shape) == (1, 28, 28)
    assert [n.attrs["levels"] for n in graph.of_kind("qcfs")] == [8, 4, 2, 4]
    calib, val = np.load(result["calib"]), np.load(result["val"])
    assert calib["x"].shape == (20, 1, 28, 28) and val["x"].shape == (10, 1, 28, 28)
    assert 0 <= calib["x"].min() and calib["x"].max() <= 1 and val["y"].dtype == np.int64
    # validation images are never training (hence never calibration) images
    assert not (calib["x"].reshape(20, -1)[:, None] == val["x"].reshape(10, -1)[None]).all(2).any()
    stamp = model.stat().st_mtime_ns
    again = script.main(argv)                 # cached: not trained again
    assert again["model"] == model and model.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_bench_fashion_quick_runs_on_tiny_data(tmp_path):
    """The benchmark's smoke mode end to end (workers, tables, JSON, plot) on tiny IDX files;
    a second run finds every worker's results in the cache."""
    data = tmp_path / "data"
    write_fashion_like(data, n_train=400, n_test=300)
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fashion.py"
    cmd = [sys.executable, str(script), "--quick", "--data-dir", str(data), "--cache-dir",
           str(tmp_path / "cache"), "--out", str(tmp_path / "out" / "fashion"),
           "--lava-samples", "0", "--threads", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "fashion.json").read_text())
    assert {"table1", "table2_3", "table4", "table5", "timing"} <= set(doc)
    rows = doc["table1"]["mean_T"]
    assert [r["uniform_T"] for r in rows] == [1, 2, 4]
    for r in rows:
        if r["compared"]:
            lo, hi = r["ci95"]
            assert lo <= r["delta"] <= hi and r["n"] == 300
            assert r["oracle_acc"] >= r["mixed_acc"] - 1e-12
    conv = doc["table2_3"]["rows"]
    assert {r["form"] for r in conv} == {"avg-repeat", "stream v0=th/2", "stream v0=0"}
    for r in conv + doc["table4"]["rows"] + doc["table5"]["rows"]:
        assert {"acc_float", "mean_T", "sum_T", "latency_steps", "synops", "energy_uJ"} <= set(r)
    assert (tmp_path / "out" / "fashion.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0 and again.stdout.count("cached in") == 2


def test_compile_works_after_a_progress_bar(tmp_path):
    """A tqdm bar fixes multiprocessing's start method; Lava's import (compile's Lava
    description, a Lava run) must still load afterwards, as in a script that trains with a
    bar and then compiles. Run in a fresh interpreter: the test session's state differs."""
    import subprocess
    import sys

    code = ("from tqdm import tqdm\n"
            "for _ in tqdm(range(2), disable=False): pass\n"
            "import multiprocessing\n"
            "assert multiprocessing.get_start_method(allow_none=True) is not None\n"
            "import torch\n"
            "from torch import nn\n"
            "from mtdeploy.api import compile_model\n"
            "from mtdeploy.nn import QCFS\n"
            "model = nn.Sequential(nn.Linear(4, 8), QCFS(2, 1.0), nn.Linear(8, 3)).eval()\n"
            "build = compile_model(model, (4,), write=False)\n"
            "assert build.report['lava']['available'], build.report['lava']\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, cwd=str(tmp_path),
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert run.returncode == 0, run.stderr[-2000:]


def test_lava_modules_import_after_a_progress_bar():
    """The same through a direct import of a backend module (what tests and scripts do)."""
    code = ("from tqdm import tqdm\n"
            "for _ in tqdm(range(2), disable=False): pass\n"
            "from mtdeploy.targets.loihi2.lava.network import run_lava\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert run.returncode == 0, run.stderr[-2000:]
