"""Issue 12: bad input is never an internal error and never silently accepted.

Each case is one of the adversarial reproductions: a bad option value, a model file with a
non-finite weight or an impossible QCFS, a data file that is not a batch of real samples with
class labels, a hardware profile with non-finite figures or an escaping ``extends``, a NetX
file whose ``/mtdeploy`` extension was edited behind its stock layers. Every one must exit 2
with a message naming the culprit (the option as typed, or the file and layer), write nothing,
and print no traceback.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from mtdeploy.cli import main
from mtdeploy.errors import InputError
from mtdeploy.frontends.netx import read_netx
from mtdeploy.io import check_samples
from mtdeploy.nn import QCFS, save_traced
from mtdeploy.targets.loihi2.netx.writer import extension_digest
from mtdeploy.targets.profiles import PROFILE_DIR, load_profile
from mtdeploy.validate import graph_values

INPUT_SHAPE = (1, 4, 4)


def tiny_model(levels=(4, 2), thresholds=(1.0, 1.5)) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), QCFS(levels[0], thresholds[0]),
                         nn.Linear(8, 6), QCFS(levels[1], thresholds[1]), nn.Linear(6, 4)).eval()


def example() -> torch.Tensor:
    return torch.rand(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:          # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_input_error(result, *words) -> str:
    code, _, err = result
    assert code == 2, err
    assert err.startswith(("mtdeploy: error:", "usage:")) and "Traceback" not in err, err
    assert "internal error" not in err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A traced model with its input shape recorded, its build, and labelled data."""
    root = tmp_path_factory.mktemp("bad_input")
    save_traced(tiny_model(), example(), root / "model.pt")
    x = np.random.default_rng(0).random((6, *INPUT_SHAPE))
    np.savez(root / "data.npz", x=x, y=np.arange(6) % 4)
    np.save(root / "x.npy", x)
    assert main(["compile", str(root / "model.pt"), "-o", str(root / "build")]) == 0
    return root


# ---- item 4 and 7: option values ----------------------------------------------------------
OPTION_CASES = [
    *[("--weight-bits", v) for v in ("0", "1", "-8", "1000")],
    *[("--input-max", v) for v in ("0", "-1", "nan", "inf")],
    *[("--v-init", v) for v in ("nan", "inf", "-0.5", "1.5")],
    *[("--timesteps", v) for v in ('{"L1": null}', '{"L1": "abc"}', '{"L1": 2.5}', "true",
                                   "2.5", "0", "[1]")],
    ("--seed", "-1"),
]


@pytest.mark.parametrize("option,value", OPTION_CASES, ids=[" ".join(c) for c in OPTION_CASES])
def test_bad_compile_option_values_name_the_option(capsys, files, tmp_path, option, value):
    value = value.replace("L1", "2")        # the first QCFS layer's name in the traced model
    err = assert_input_error(run(capsys, "compile", files / "model.pt", "-o", tmp_path / "b",
                                 option, value), option)
    assert not (tmp_path / "b").exists(), err


def test_timesteps_and_levels_are_never_truncated(capsys, files, tmp_path):
    code, _, err = run(capsys, "compile", files / "model.pt", "-o", tmp_path / "b",
                       "--timesteps", '{"2": 3, "4": 1}')
    assert code == 0, err
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [row["T"] for row in report["layers"] if row["neuron"] == "if"] == [3, 1]


# ---- items 4, 7 and 9: model files --------------------------------------------------------
def _traced(path, model):
    save_traced(model, example(), path, check_trace=False)


def _with_weight(value):
    model = tiny_model()
    with torch.no_grad():
        model[3].weight[0, 0] = value
    return model


def _levels(levels):
    model = tiny_model()
    model[4].levels = levels
    return model


def _threshold(value):
    model = tiny_model()
    with torch.no_grad():
        model[4].threshold.fill_(value)
    return model


MODEL_CASES = {
    "inf weight in a hidden Linear": (lambda p: _traced(p, _with_weight(float("inf"))), [],
                                      ["non-finite weight in 3"]),
    "nan weight in a hidden Linear": (lambda p: _traced(p, _with_weight(float("nan"))), [],
                                      ["non-finite weight in 3"]),
    "traced QCFS with 100000 levels": (lambda p: _traced(p, _levels(100000)), [],
                                       ["cannot read the levels", "4"]),
    "traced QCFS with 2.5 levels": (lambda p: _traced(p, _levels(2.5)), [],
                                    ["cannot read the levels"]),
    **{f"pickled QCFS threshold {t}": ((lambda t: lambda p: torch.save(_threshold(t), p))(t),
                                       ["--trust-pickle"], ["4", "threshold must be"])
       for t in (0.0, -1.0, float("nan"))},
    "pickled QCFS with 2.5 levels": (lambda p: torch.save(_levels(2.5), p), ["--trust-pickle"],
                                     ["levels must be an integer", "2.5"]),
    "truncated TorchScript": (lambda p: (_traced(p, tiny_model()),
                                         p.write_bytes(p.read_bytes()[:3000])), [], ["corrupt"]),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_files_are_input_errors(capsys, tmp_path, case):
    make, options, words = MODEL_CASES[case]
    path = tmp_path / "model.pt"
    make(path)
    shape = ["--input-shape", "1,4,4"] if "--trust-pickle" in options else []
    err = assert_input_error(run(capsys, "compile", path, "-o", tmp_path / "b", *options, *shape),
                             *words)
    assert "custom forward" not in err and "needs --input-shape" not in err
    assert not (tmp_path / "b").exists()


def test_a_nan_weight_in_a_foreign_net_file_says_non_finite(capsys, files, tmp_path):
    path = tmp_path / "foreign.net"
    shutil.copy(files / "build" / "network.net", path)
    with h5py.File(path, "r+") as f:
        del f["mtdeploy"]                       # a foreign file: stock layers only
        w = f["layer/2/weight"][()].astype(np.float64)
        w[0, 0] = np.nan
        del f["layer/2/weight"]
        f["layer/2"].create_dataset("weight", data=w)
    err = assert_input_error(run(capsys, "compile", path, "-o", tmp_path / "b"), "non-finite weight")
    assert "bits" not in err


# ---- items 4 and 7: data files --------------------------------------------------------------
def _npz(**arrays):
    return lambda p: np.savez(p, **arrays)


X = np.random.default_rng(1).random((4, *INPUT_SHAPE))
DATA_CASES = {
    "x strings": (_npz(x=np.array(["a", "b"])), "real numbers"),
    "x objects": (lambda p: np.savez(p, x=np.array([object(), 1], dtype=object)), "not a readable"),
    "x scalar": (_npz(x=np.array(3.0)), "no samples"),
    "x empty": (_npz(x=np.zeros((0, *INPUT_SHAPE))), "no samples"),
    "x truncated": (lambda p: (np.save(p.with_suffix(".npy"), X),
                               p.write_bytes(p.with_suffix(".npy").read_bytes()[:-100])),
                    "truncated"),
    "x NaN": (_npz(x=np.where(X > 0.5, np.nan, X), y=np.arange(4)), "NaN or infinite"),
    "x infinite": (_npz(x=np.where(X > 0.5, np.inf, X), y=np.arange(4)), "NaN or infinite"),
    "x complex": (_npz(x=X.astype(complex), y=np.arange(4)), "real numbers"),
    "x flattened": (_npz(x=X.reshape(4, -1), y=np.arange(4)), "the model takes (N, 1, 4, 4)"),
    "y strings": (_npz(x=X, y=np.array(list("abcd"))), "integer class labels"),
    "y one-hot": (_npz(x=X, y=np.eye(4)), "one-hot"),
    "y 100": (_npz(x=X, y=np.array([100, 0, 1, 2])), "labels must lie in [0, 3]"),
    "y -1": (_npz(x=X, y=np.array([-1, 0, 1, 2])), "labels must lie in"),
    "y fractional": (_npz(x=X, y=np.array([0.5, 0, 1, 2])), "integer class labels"),
    "y NaN": (_npz(x=X, y=np.array([np.nan, 0, 1, 2])), "integer class labels"),
    "y too short": (_npz(x=X, y=np.arange(3)), "one integer label per sample"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_simulate_refuses_unusable_samples(capsys, files, tmp_path, case):
    make, words = DATA_CASES[case]
    path = tmp_path / "data.npz"
    make(path)
    assert_input_error(run(capsys, "simulate", files / "build", "--input", path,
                           "-o", tmp_path / "out.npy"), words)
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("case", ["y 100", "y -1", "y fractional", "x NaN", "x complex"])
def test_simulate_and_search_share_one_validator(capsys, files, tmp_path, case):
    """What simulate refuses, search refuses with the same words."""
    make, words = DATA_CASES[case]
    path = tmp_path / "data.npz"
    make(path)
    for argv in (["simulate", files / "build", "--input", path],
                 ["search", files / "model.pt", "--data", path, "--val", path, "-o", tmp_path / "s.pt",
                  "--epochs", "0"]):
        assert_input_error(run(capsys, *argv), words)
    assert not (tmp_path / "s.pt").exists()


def test_check_samples_returns_float64_and_int64():
    x, y = check_samples(np.ones((2, 3), np.float32), np.array([1.0, 0.0]), input_shape=(3,),
                         classes=2)
    assert x.dtype == np.float64 and y.dtype == np.int64 and y.tolist() == [1, 0]
    x, y = check_samples(np.ones((2, 3), bool))         # spikes as booleans are real numbers
    assert x.dtype == np.float64 and y is None


LADDER_CASES = {
    "-n 0": (["-n", "0"], "data.npz", "-n must be an integer"),
    "-n -3": (["-n", "-3"], "data.npz", "-n must be an integer"),
    "flattened x": ([], "flat.npy", "the model takes (N, 1, 4, 4)"),
    "NaN x": ([], "nan.npy", "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(LADDER_CASES))
def test_ladder_refuses_before_running_lava(capsys, files, tmp_path, case):
    options, name, words = LADDER_CASES[case]
    np.save(tmp_path / "flat.npy", X.reshape(4, -1))
    np.save(tmp_path / "nan.npy", np.full_like(X, np.nan))
    data = files / name if name == "data.npz" else tmp_path / name
    assert_input_error(run(capsys, "ladder", files / "build", "--input", data, *options), words)


# ---- search -------------------------------------------------------------------------------
def test_search_refuses_a_negative_seed_and_a_net_file(capsys, files, tmp_path):
    assert_input_error(run(capsys, "search", files / "model.pt", "--data", files / "data.npz",
                           "-o", tmp_path / "s.pt", "--seed", "-1"), "--seed")
    err = assert_input_error(run(capsys, "search", files / "build" / "network.net", "--data",
                                 files / "data.npz", "-o", tmp_path / "s.pt"), "already converted")
    assert "GraphModule" not in err
    assert not (tmp_path / "s.pt").exists()


def test_search_takes_the_input_shape_from_the_data(capsys, tmp_path):
    model = tiny_model()
    torch.jit.trace(model, example()).save(str(tmp_path / "plain.pt"))   # records no shape
    x = np.random.default_rng(2).random((40, *INPUT_SHAPE)).astype(np.float32)
    y = model(torch.as_tensor(x)).argmax(1).numpy()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    code, out, err = run(capsys, "search", tmp_path / "plain.pt", "--data", tmp_path / "data.npz",
                         "-o", tmp_path / "s.pt", "--epochs", "0", "--threads", "1")
    assert code == 0, err
    assert (tmp_path / "s.pt").is_file()


# ---- item 4 and 7: hardware profiles ------------------------------------------------------
LOIHI2 = (PROFILE_DIR / "loihi2.yaml").read_text()
PROFILE_CASES = {
    "binary file": (bytes(range(256)) * 4, "not a text"),
    "energy .inf": (LOIHI2.replace("value: 23.6", "value: .inf"), "energy.synop_pj"),
    "energy .nan": (LOIHI2.replace("value: 23.6", "value: .nan"), "energy.synop_pj"),
    "chips .nan": (LOIHI2.replace("chips: {value: 1,", "chips: {value: .nan,"), "system.chips"),
    "chips 1e30": (LOIHI2.replace("chips: {value: 1,", "chips: {value: 1000000000000000000,"),
                   "system.chips: must be <="),
    "negative energy": (LOIHI2.replace("value: 23.6", "value: -1.0"), "energy.synop_pj"),
    "extends a parent folder": ("extends: ../loihi2.yaml\nname: x\ntitle: y\n", "extends"),
    "extends an absolute path": (f"extends: {PROFILE_DIR / 'loihi2.yaml'}\nname: x\ntitle: y\n",
                                 "extends"),
}


@pytest.mark.parametrize("case", sorted(PROFILE_CASES))
def test_bad_profiles_are_input_errors(capsys, files, tmp_path, case):
    text, words = PROFILE_CASES[case]
    path = tmp_path / "profile.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_input_error(run(capsys, "check", files / "model.pt", "--target", path), words)
    assert_input_error(run(capsys, "compile", files / "model.pt", "--target", path,
                           "-o", tmp_path / "b"), words)
    assert not (tmp_path / "b").exists()


def test_extends_may_name_a_sibling_file(tmp_path):
    (tmp_path / "base.yaml").write_text(LOIHI2.replace("name: loihi2", "name: base"))
    (tmp_path / "mine.yaml").write_text("extends: base.yaml\nname: mine\ntitle: mine\n"
                                        "system:\n  chips: {value: 2, source: loihi2_brief}\n")
    profile = load_profile(str(tmp_path / "mine.yaml"))
    assert profile.chips == 2 and profile.cores_per_chip == 128
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\nname: l\ntitle: l\n")
    with pytest.raises(InputError, match="circular"):
        load_profile(str(tmp_path / "loop.yaml"))


# ---- item 7: the /mtdeploy extension's integrity ------------------------------------------
def _node_index(doc: dict, kind: str) -> int:
    return next(i for i, n in enumerate(doc["nodes"]) if n["kind"] == kind)


def _edit_graph(f, edit):
    doc = json.loads(f["mtdeploy/graph"][()])
    edit(doc)
    del f["mtdeploy/graph"]
    f["mtdeploy"].create_dataset("graph", data=json.dumps(doc), dtype=h5py.string_dtype("utf-8"))


def _edit_param(f, kind, name, change):
    i = _node_index(json.loads(f["mtdeploy/graph"][()]), kind)
    value = change(f[f"mtdeploy/params/{i}/{name}"][()])
    del f[f"mtdeploy/params/{i}/{name}"]
    f[f"mtdeploy/params/{i}"].create_dataset(name, data=value)


EXTENSION_EDITS = {
    "NaN threshold": lambda f: _edit_param(f, "qcfs", "threshold", lambda v: np.float32(np.nan)),
    "negative threshold": lambda f: _edit_param(f, "qcfs", "threshold", lambda v: -v),
    "float weight_int": lambda f: _edit_param(f, "linear", "weight_int",
                                              lambda v: v.astype(np.float64) + 0.5),
    "readout exponent": lambda f: _edit_graph(
        f, lambda d: d["nodes"][_node_index(d, "readout")]["attrs"].update(
            exp=d["nodes"][_node_index(d, "readout")]["attrs"]["exp"] + 1)),
    "threshold_int 0": lambda f: _edit_graph(
        f, lambda d: d["nodes"][_node_index(d, "qcfs")]["attrs"].update(threshold_int=0)),
    "T": lambda f: _edit_graph(f, lambda d: d["nodes"][_node_index(d, "qcfs")].update(T=0)),
}


def _edited_build(files, tmp_path, edit, redigest: bool):
    build = tmp_path / "build"
    shutil.copytree(files / "build", build)
    with h5py.File(build / "network.net", "r+") as f:
        edit(f)
        if redigest:       # as a writer that skips mtdeploy's checks would
            params = {i: {n: f[f"mtdeploy/params/{i}/{n}"][()] for n in f[f"mtdeploy/params/{i}"]}
                      for i in f["mtdeploy/params"]}
            digest = extension_digest(f["mtdeploy/graph"][()].decode(),
                                      f["mtdeploy/stock"][()].decode(), params)
            del f["mtdeploy/digest"]
            f["mtdeploy"].create_dataset("digest", data=np.array([digest.encode()], "S80"))
    return build


@pytest.mark.parametrize("case", sorted(EXTENSION_EDITS))
def test_extension_edits_that_keep_the_stock_layers_are_detected(capsys, files, tmp_path, case):
    build = _edited_build(files, tmp_path, EXTENSION_EDITS[case], redigest=False)
    assert_input_error(run(capsys, "simulate", build, "--input", files / "x.npy"),
                       "integrity check")


@pytest.mark.parametrize("case", sorted(set(EXTENSION_EDITS) - {"readout exponent"}))
def test_extension_values_are_validated_even_with_a_matching_digest(files, tmp_path, case):
    build = _edited_build(files, tmp_path, EXTENSION_EDITS[case], redigest=True)
    with pytest.raises(InputError) as err:
        read_netx(build / "network.net")
    assert "integrity" not in str(err.value)
    assert any(w in str(err.value) for w in ("threshold", "weight_int", "T must be")), err.value


def test_an_extension_without_digest_is_refused(files, tmp_path):
    def strip(f):
        del f["mtdeploy/digest"]
        del f["mtdeploy/version"]
        f["mtdeploy"].create_dataset("version", data=1)
    build = _edited_build(files, tmp_path, strip, redigest=False)
    with pytest.raises(InputError, match="no integrity digest"):
        read_netx(build / "network.net")


def test_graph_values_accepts_what_compile_writes(files):
    graph_values(read_netx(files / "build" / "network.net"), "build")


def test_report_json_has_no_nan_with_a_valid_profile(files):
    text = (files / "build" / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    yaml.safe_load(LOIHI2)    # the bundled profile itself stays valid


# ---- found by tests/test_fuzz_cli.py ---------------------------------------------------------
def test_mtir_bytes_damaged_anywhere_are_input_errors(files, tmp_path):
    from mtdeploy.frontends import load_model_graph
    from mtdeploy.io import save_graph

    good = tmp_path / "good.mtir"
    save_graph(load_model_graph(files / "model.pt"), good)
    raw = good.read_bytes()
    for at in range(0, len(raw), max(1, len(raw) // 97)):
        bad = tmp_path / "bad.mtir"
        bad.write_bytes(raw[:at] + bytes([raw[at] ^ 0x5A]) + raw[at + 1:])
        try:
            load_model_graph(bad)
        except InputError:
            pass


def _set_dataset(name, value):
    def edit(f):
        del f[name]
        f.create_dataset(name, data=value)
    return edit


FOUND_EDITS = {"layer type as an array": (_set_dataset("layer/0/type", np.ones((3, 3))), False,
                                          "stock layers differ"),
               "weight_int shaped unlike weight, digest recomputed": (
                   lambda f: _edit_param(f, "linear", "weight", lambda v: np.float32(-1)), True,
                   "weight_int has shape"),
               "weights as scalars, digest recomputed": (
                   lambda f: [_edit_param(f, "linear", name, lambda v: v.reshape(-1)[:1][0])
                              for name in ("weight", "weight_int")], True, "does not compute")}


@pytest.mark.parametrize("case", sorted(FOUND_EDITS))
def test_found_netx_edits_are_input_errors(files, tmp_path, case):
    edit, redigest, words = FOUND_EDITS[case]
    build = _edited_build(files, tmp_path, edit, redigest=redigest)
    with pytest.raises(InputError, match=words):
        read_netx(build / "network.net")


def test_found_cli_cases(capsys, files, tmp_path):
    long_name = tmp_path / ("m" * 300 + ".pt")
    assert_input_error(run(capsys, "compile", long_name), "not a usable path")
    assert_input_error(run(capsys, "compile", files / "model.pt", "-o", tmp_path / ("o" * 300)),
                       "not a usable path")
    assert_input_error(run(capsys, "compile", files / "model.pt", "-o", tmp_path / "b",
                           "--timesteps", files / "build" / "network.net"), "--timesteps")
    assert_input_error(run(capsys, "compile", files / "model.pt", "-o", tmp_path / "b",
                           "--timesteps", "\N{SUPERSCRIPT TWO}"), "--timesteps")
    profile = tmp_path / "p.yaml"
    profile.write_text(LOIHI2.replace("chips: {value: 1, source: loihi2_brief}",
                                      "chips: {value: 1, source: [1, 2]}"))
    assert_input_error(run(capsys, "check", files / "model.pt", "--target", profile),
                       "system.chips: source must be a string")
    assert not (tmp_path / "b").exists()


SWEEP = """
import sys, zipfile
from mtdeploy.errors import InputError
from mtdeploy.frontends import load_model_graph
src, out = sys.argv[1], sys.argv[2]
raw = open(src, "rb").read()
with zipfile.ZipFile(src) as zf:
    info = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
head = raw[info.header_offset:info.header_offset + 30]        # the local file header
start = info.header_offset + 30 + int.from_bytes(head[26:28], "little") \
    + int.from_bytes(head[28:30], "little")
for at in range(start, start + info.compress_size, 7):
    with open(out, "wb") as fh:
        fh.write(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    try:
        load_model_graph(out)
        print("accepted", at)
    except InputError as exc:
        assert "CRC" in str(exc), exc
print("done")
"""


def test_a_damaged_tensor_record_is_refused_not_a_crash(files, tmp_path):
    """torch reads archive members without their CRCs, and one changed byte in a TorchScript
    file's data.pkl crashed the process (a segfault) before the CRC check: swept in a child
    process, so that a regression fails this test rather than killing the run."""
    res = subprocess.run([sys.executable, "-c", SWEEP, str(files / "model.pt"),
                          str(tmp_path / "damaged.pt")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("done") and "accepted" not in res.stdout
