"""The Fashion-MNIST example on tiny IDX files written here (no Debian package needed)."""
from __future__ import annotations

import json

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
