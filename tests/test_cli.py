"""The command line as a user meets it: verbs, exit codes, messages, files (DESIGN.md §4)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdeploy.cli import main
from mtdeploy.sim.ann import ann_forward
from mtdeploy.frontends import load_model_graph


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cnn_files(tmp_path, qcfs_cnn):
    model = tmp_path / "model.pt"
    torch.jit.trace(qcfs_cnn.model, qcfs_cnn.batch(2)).save(str(model))
    x = qcfs_cnn.batch(24, seed=1).clamp(0, 1).numpy().astype(np.float32)
    ann = qcfs_cnn.model(torch.as_tensor(x)).detach().numpy()
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=ann.argmax(1))
    np.save(tmp_path / "x.npy", x)
    return model, data, tmp_path


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb in ("compile", "check", "simulate", "targets", "search"):
        assert verb in out


def test_console_script_runs():
    exe = Path(sys.executable).with_name("mtdeploy")
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("mtdeploy ")


def test_compile_then_simulate_float_equals_ann(capsys, cnn_files):
    model, data, tmp = cnn_files
    build = tmp / "build"
    code, out, err = run(capsys, "compile", model, "--target", "loihi2", "--input-shape", "1,8,8",
                         "-o", build)
    assert code == 0, err
    report = json.loads((build / "report.json").read_text())
    # this CNN's first-layer bias exceeds netx's 13-bit mantissa: no stock form, no .net
    assert report["netx"]["file"] == "network.mtsnn.h5" and not report["netx"]["loadable"]
    assert "13-bit bias mantissa" in report["netx"]["findings"][0]
    assert {"network.mtsnn.h5", "schedule.json", "report.json", "report.md",
            ".mtdeploy-build"} == set(os.listdir(build))
    sched = json.loads((build / "schedule.json").read_text())
    assert sched["latency"]["sum_T"] == 8 + 4 + 2
    assert report["lava"]["processes_by_kind"]["IFNeuron"] == 3

    code, out, err = run(capsys, "simulate", build, "--input", tmp / "x.npy", "-o", tmp / "out.npy")
    assert code == 0, err
    out_arr = np.load(tmp / "out.npy")
    graph = load_model_graph(model, (1, 8, 8))
    ann = ann_forward(graph, np.load(tmp / "x.npy").astype(np.float64)).numpy()
    np.testing.assert_allclose(out_arr, ann, atol=1e-9)

    code, out, err = run(capsys, "simulate", build, "--input", data, "--fixed-point")
    assert code == 0, err
    assert "accuracy:" in out


def test_compile_writes_nothing_on_bad_input(capsys, tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a model at all")
    code, _, err = run(capsys, "compile", bad, "--input-shape", "1,8,8", "-o", tmp_path / "b")
    assert code == 2 and err.startswith("mtdeploy: error:") and "Traceback" not in err
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["garbage.pt"]   # no temp files left


def test_pickle_is_refused_without_trust(capsys, tmp_path, qcfs_mlp):
    path = tmp_path / "pickled.pt"
    torch.save(qcfs_mlp.model, path)
    code, _, err = run(capsys, "compile", path, "--input-shape", "16", "-o", tmp_path / "b")
    assert code == 2 and "--trust-pickle" in err
    code, _, err = run(capsys, "compile", path, "--input-shape", "16", "-o", tmp_path / "b",
                       "--trust-pickle")
    assert code == 0, err


def test_alignment_none_with_mixed_T_is_a_clear_error(capsys, cnn_files):
    model, _, tmp = cnn_files
    code, _, err = run(capsys, "compile", model, "--input-shape", "1,8,8", "--alignment", "none",
                       "-o", tmp / "b")
    assert code == 2 and "T=8" in err and "T=4" in err


def test_simulate_errors(capsys, cnn_files):
    model, data, tmp = cnn_files
    code, _, err = run(capsys, "simulate", tmp / "nope", "--input", data)
    assert code == 2 and "build directory" in err
    assert run(capsys, "compile", model, "--input-shape", "1,8,8", "-o", tmp / "b")[0] == 0
    np.save(tmp / "wrong.npy", np.zeros((3, 5)))
    code, _, err = run(capsys, "simulate", tmp / "b", "--input", tmp / "wrong.npy")
    assert code == 2 and "(N, 1, 8, 8)" in err


def network_file(build: Path) -> Path:
    """The build's network file (network.net, or network.mtsnn.h5 without a stock form)."""
    return build / json.loads((build / "report.json").read_text())["netx"]["file"]


def test_recompile_from_the_network_file_keeps_the_network(capsys, cnn_files):
    model, _, tmp = cnn_files
    assert run(capsys, "compile", model, "--input-shape", "1,8,8", "-o", tmp / "a",
               "--timesteps", "2")[0] == 0
    code, _, err = run(capsys, "compile", network_file(tmp / "a"), "-o", tmp / "b")
    assert code == 0, err
    a = json.loads((tmp / "a" / "schedule.json").read_text())
    b = json.loads((tmp / "b" / "schedule.json").read_text())
    assert a == b
    code, _, err = run(capsys, "compile", network_file(tmp / "a"), "-o", tmp / "c",
                       "--timesteps", "4")
    assert code == 2 and "already converted" in err


@pytest.mark.lava
def test_simulate_lava_backend_equals_reference_fixed_point(capsys, cnn_files):
    model, _, tmp = cnn_files
    assert run(capsys, "compile", model, "--input-shape", "1,8,8", "-o", tmp / "b",
               "--alignment", "ttm")[0] == 0
    x = np.load(tmp / "x.npy")[:6]
    np.save(tmp / "x6.npy", x)
    for backend in ("reference", "lava"):
        code, _, err = run(capsys, "simulate", tmp / "b", "--input", tmp / "x6.npy", "--backend",
                           backend, "--fixed-point", "-o", tmp / f"{backend}.npy")
        assert code == 0, err
    assert np.array_equal(np.load(tmp / "reference.npy"), np.load(tmp / "lava.npy"))


@pytest.mark.lava
def test_ladder_command_reports_exact_pairs(capsys, cnn_files):
    model, _, tmp = cnn_files
    assert run(capsys, "compile", model, "--input-shape", "1,8,8", "-o", tmp / "b")[0] == 0
    code, out, err = run(capsys, "ladder", tmp / "b", "--input", tmp / "x.npy", "-n", "3")
    assert code == 0, err
    assert "ANN = float SNN and fixed-point SNN = Lava on every layer (3 samples)" in out


def test_compile_needs_no_input_shape_for_a_model_saved_with_save_traced(capsys, tmp_path, qcfs_cnn):
    """The product's main command, as written: `mtdeploy compile model.pt --target loihi2`."""
    from mtdeploy.nn import save_traced
    from mtdeploy.frontends import stored_input_shape

    model = tmp_path / "model.pt"
    save_traced(qcfs_cnn.model, qcfs_cnn.batch(2), model)
    assert stored_input_shape(model) == (1, 8, 8)
    code, out, err = run(capsys, "compile", model, "--target", "loihi2", "-o", tmp_path / "b")
    assert code == 0, err
    graph = load_model_graph(model)
    assert tuple(graph.input.shape) == (1, 8, 8)
    x = qcfs_cnn.batch(4, seed=3).numpy().astype(np.float64)
    np.testing.assert_allclose(ann_forward(graph, x).numpy(),
                               qcfs_cnn.model(torch.as_tensor(x, dtype=torch.float32))
                               .detach().numpy(), atol=1e-5)


def test_a_plain_trace_without_input_shape_says_how_to_give_it(capsys, cnn_files):
    model, _, tmp = cnn_files
    code, _, err = run(capsys, "compile", model, "--target", "loihi2", "-o", tmp / "b")
    assert code == 2 and err.startswith("mtdeploy: error:") and "--input-shape" in err
    assert "save_traced" in err and not (tmp / "b").exists()


def test_a_bad_recorded_input_shape_is_an_input_error(capsys, tmp_path, qcfs_cnn):
    traced = torch.jit.trace(qcfs_cnn.model, qcfs_cnn.batch(2))
    model = tmp_path / "model.pt"
    torch.jit.save(traced, str(model), _extra_files={"mtdeploy.json": '{"input_shape": [1, -8]}'})
    code, _, err = run(capsys, "compile", model, "-o", tmp_path / "b")
    assert code == 2 and "input_shape" in err and "--input-shape" in err
    # a shape given on the command line is used as is
    assert run(capsys, "compile", model, "--input-shape", "1,8,8", "-o", tmp_path / "b")[0] == 0


def test_a_network_stock_netx_cannot_run_gets_no_net_file(capsys, tmp_path, qcfs_residual):
    """Residual adds have no stock NetX form: the build holds network.mtsnn.h5 (the whole
    MT-SNN), never a .net that a lab's stock netx would fail on, and simulates from it."""
    model = tmp_path / "res.pt"
    torch.jit.trace(qcfs_residual.model, qcfs_residual.batch(2)).save(str(model))
    build = tmp_path / "b"
    code, out, err = run(capsys, "compile", model, "--input-shape",
                         ",".join(map(str, qcfs_residual.input_shape)), "-o", build)
    assert code == 0, err
    files = set(os.listdir(build))
    assert "network.mtsnn.h5" in files and not any(f.endswith(".net") for f in files)
    report = json.loads((build / "report.json").read_text())
    assert report["netx"]["loadable"] is False and report["netx"]["file"] == "network.mtsnn.h5"
    assert "no `.net` file" in (build / "report.md").read_text()
    x = qcfs_residual.batch(6, seed=2).numpy().astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, _, err = run(capsys, "simulate", build, "--input", tmp_path / "x.npy", "-o",
                       tmp_path / "out.npy")
    assert code == 0, err
    ann = ann_forward(load_model_graph(model, qcfs_residual.input_shape), x.astype(np.float64))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), ann.numpy(), atol=1e-9)
    # the file also compiles again, as a model
    assert run(capsys, "compile", build / "network.mtsnn.h5", "-o", tmp_path / "c")[0] == 0
