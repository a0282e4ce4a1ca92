"""The input's fixed-point range: from --input-max, calibration data or the model file, and the
saturation compile reports (issue 16 item 7)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from mtdeploy.api import compile_model, simulate_build
from mtdeploy.cli import main
from mtdeploy.nn import QCFS, save_traced


@pytest.fixture
def real_valued(tmp_path):
    """A first layer on real-valued inputs (|x| up to ~3, as normalised images are)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), QCFS(8, 2.0), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10)).eval()
    x = (torch.randn(24, 3, 8, 8) * 0.8).numpy()
    np.save(tmp_path / "calib.npy", x)
    return model, x, tmp_path


def test_calibration_sets_the_range_and_nothing_saturates(real_valued):
    model, x, tmp = real_valued
    build = compile_model(model, (3, 8, 8), out_dir=tmp / "b", calib=x)
    inp = build.report["input"]
    assert inp["input_max"] == pytest.approx(np.abs(x).max())
    assert inp["input_max_source"].startswith("calibration (24 samples)")
    assert inp["saturated_values"] == 0 and "warning" not in inp
    assert inp["representable_max"] >= np.abs(x).max()
    _, res = simulate_build(build.graph, x, fixed_point=True)
    assert res.input_clipped == 0


def test_a_smaller_input_max_is_kept_and_its_saturation_counted(real_valued):
    model, x, tmp = real_valued
    build = compile_model(model, (3, 8, 8), out_dir=tmp / "b", calib=x, input_max=1.0)
    inp = build.report["input"]
    assert inp["input_max"] == 1.0 and inp["input_max_source"] == "--input-max"
    expected = int(np.count_nonzero(np.abs(x) > inp["representable_max"]))
    assert expected > 0 and inp["saturated_values"] == expected
    assert "saturate" in inp["warning"]
    # the simulator clips exactly the values compile counted
    assert simulate_build(build.graph, x, fixed_point=True)[1].input_clipped == expected
    assert "## Input range" in (tmp / "b" / "report.md").read_text()


def test_cli_warns_at_compile(real_valued, capsys):
    model, x, tmp = real_valued
    save_traced(model, torch.as_tensor(x[:2]), tmp / "m.pt")
    code = main(["compile", str(tmp / "m.pt"), "-o", str(tmp / "b"), "--calib",
                 str(tmp / "calib.npy"), "--input-max", "0.5"])
    err = capsys.readouterr().err
    assert code == 0 and "mtdeploy: warning:" in err and "saturate" in err
    code = main(["compile", str(tmp / "m.pt"), "-o", str(tmp / "b2"), "--calib",
                 str(tmp / "calib.npy")])
    assert code == 0 and "saturate" not in capsys.readouterr().err


def test_the_range_recorded_by_save_traced_is_used(real_valued):
    model, x, tmp = real_valued
    save_traced(model, torch.as_tensor(x[:2]), tmp / "m.pt", input_max=2.5)
    build = compile_model(tmp / "m.pt", out_dir=tmp / "b")
    assert build.report["input"]["input_max"] == 2.5
    assert "save_traced" in build.report["input"]["input_max_source"]
    # calibration data takes precedence over the recorded range, --input-max over both
    assert compile_model(tmp / "m.pt", write=False, calib=x).report["input"]["input_max"] \
        == pytest.approx(np.abs(x).max())
    assert compile_model(tmp / "m.pt", write=False, calib=x,
                         input_max=4.0).report["input"]["input_max"] == 4.0
    report = json.loads((tmp / "b" / "report.json").read_text())
    assert report["input"]["input_max"] == 2.5


def test_bad_calibration_data_is_a_clean_error(real_valued, capsys):
    model, x, tmp = real_valued
    save_traced(model, torch.as_tensor(x[:2]), tmp / "m.pt")
    np.save(tmp / "wrong.npy", x[:, :2])
    np.save(tmp / "zeros.npy", np.zeros_like(x))
    for bad in ("wrong.npy", "zeros.npy", "missing.npy"):
        code = main(["compile", str(tmp / "m.pt"), "-o", str(tmp / "b"), "--calib",
                     str(tmp / bad)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("mtdeploy: error:"), (bad, err)
        assert not (tmp / "b").exists()
