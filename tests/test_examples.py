"""The example training scripts: short runs into tmp_path give models mtdeploy imports exactly."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdeploy.frontends import load_model_graph, load_torch_model
from mtdeploy.sim.ann import ann_forward

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# One torch thread: on a shared 2-core machine, two threads that contend with other processes
# make these short trainings several times slower.
ONE_THREAD = ["--threads", "1"]


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The scripts set torch's thread count; give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load_script(name: str):
    """Import examples/<name>/train.py as a module (it must do no work at import)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}_train",
                                                  EXAMPLES / name / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_artifacts(result: dict, out_dir: Path, levels: list[int]) -> None:
    """Files are where they should be, the model is TorchScript, and its IR computes its output."""
    assert {result[k] for k in ("model", "test", "calib")} == {
        out_dir / "model.pt", out_dir / "digits_test.npz", out_dir / "digits_calib.npz"}
    test, calib = np.load(result["test"]), np.load(result["calib"])
    assert test["x"].shape == (450, 1, 8, 8) and test["x"].dtype == np.float32
    assert test["y"].shape == (450,) and test["y"].dtype == np.int64
    assert set(np.unique(test["y"])) == set(range(10))
    assert 0.0 <= test["x"].min() and test["x"].max() <= 1.0
    assert calib["x"].shape == (256, 1, 8, 8) and calib["y"].dtype == np.int64

    model = load_torch_model(result["model"])  # TorchScript: no trust_pickle needed
    assert isinstance(model, torch.jit.ScriptModule)
    graph = load_model_graph(result["model"], (1, 8, 8))
    assert [n.attrs["levels"] for n in graph.of_kind("qcfs")] == levels
    assert not graph.of_kind("batchnorm")

    x = torch.from_numpy(test["x"])
    with torch.no_grad():
        logits = model(x).double()
    ir_logits = ann_forward(graph, x)
    # float32 torch vs float64 IR: a QCFS input within rounding of a level boundary may flip
    # a level, so demand near-total rather than total agreement.
    close = torch.isclose(ir_logits, logits, rtol=1e-4, atol=1e-4).all(dim=1)
    assert close.float().mean() >= 0.99
    ir_accuracy = float((ir_logits.argmax(1).numpy() == test["y"]).mean())
    assert abs(ir_accuracy - result["accuracy"]) <= 0.01


@pytest.mark.slow
def test_digits_example_trains_and_imports(tmp_path):
    script = load_script("digits")
    result = script.main(["--out-dir", str(tmp_path), "--epochs", "2", "--levels", "8,4,2,4",
                          *ONE_THREAD])
    assert result["accuracy"] > 0.8
    check_artifacts(result, tmp_path, [8, 4, 2, 4])


@pytest.mark.slow
def test_digits_example_is_deterministic(tmp_path):
    script = load_script("digits")
    outputs = []
    for run in ("a", "b"):
        result = script.main(["--out-dir", str(tmp_path / run), "--epochs", "1", "--seed", "3",
                              *ONE_THREAD])
        model = torch.jit.load(str(result["model"]))
        with torch.no_grad():
            outputs.append(model(torch.from_numpy(np.load(result["test"])["x"])))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.slow
def test_residual_example_trains_and_imports(tmp_path):
    script = load_script("residual")
    result = script.main(["--out-dir", str(tmp_path), "--epochs", "2", *ONE_THREAD])
    assert result["accuracy"] > 0.5
    check_artifacts(result, tmp_path, [8, 4, 4, 2, 4])
    graph = load_model_graph(result["model"], (1, 8, 8))
    adds = graph.of_kind("add")
    assert [a.name for a in adds] == ["block1.add", "block2.add"]
    assert graph["block2.add"].inputs == ["block2.conv2.0", "block2.downsample.0"]
    assert graph["block2.downsample.0"].attrs["stride"] == [2, 2]


def test_bad_levels_are_rejected(tmp_path):
    with pytest.raises(SystemExit):
        load_script("digits").main(["--out-dir", str(tmp_path), "--levels", "8,4"])
    assert not list(tmp_path.iterdir())
