"""A property-based fuzz of the whole command line (issue 12): every verb, every input kind.

Hypothesis draws model files (TorchScript with and without a recorded shape, pickles with and
without --trust-pickle, state dicts, .mtir, .net files and builds, and truncated, corrupted or
random bytes of all of them), data files (.npy/.npz of random dtypes, shapes and values, with
labels of every wrong kind), hardware profiles (the bundled YAML with random values put in,
keys removed, random text), option values from a pool of edge cases, and output paths (new,
nested, a previous build). Each case runs ``mtdeploy.cli.main(argv)`` in-process, and a few
run as subprocesses with their peak memory measured. For every case:

* the exit code is 0, 2 or 3: bad input is never an internal error (1);
* stderr holds no traceback;
* every file that existed before is unchanged, except inside a previous build the case
  replaced (exit 0 only);
* nothing new exists unless the case exited 0, and then only at the paths it was told to
  write.

The suite is derandomized (the same cases on every run) and sized to finish in well under a
minute; the number of cases it ran and what they found is printed at the end of the module.
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mtdeploy.cli import main
from mtdeploy.frontends import load_model_graph
from mtdeploy.io import save_graph
from mtdeploy.nn import QCFS, save_traced
from mtdeploy.targets.loihi2.netx.writer import extension_digest
from mtdeploy.targets.profiles import PROFILE_DIR

INPUT_SHAPE = (1, 4, 4)
CLASSES = 4
_FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])


def fuzz(examples: int) -> settings:
    """The suite's settings with ``examples`` cases: sized so the module stays well under a
    minute on two busy cores; derandomized, so every run draws the same cases. For a deeper
    search by hand, MTDEPLOY_FUZZ_SCALE=20 draws 20 times as many (other cases: still
    derandomized), and MTDEPLOY_FUZZ_RANDOM=1 draws a random set (pytest's
    --hypothesis-seed=N then repeats one)."""
    scale = int(os.environ.get("MTDEPLOY_FUZZ_SCALE", "1"))
    return settings(_FUZZ, max_examples=examples * scale,
                    derandomize=not os.environ.get("MTDEPLOY_FUZZ_RANDOM"))
MEMORY_BOUND_KB = 1536 * 1024   # peak RSS of one refused CLI run (torch loaded: ~0.5 GiB measured)
TALLY: Counter = Counter()
VERBS = ("compile", "check", "simulate", "ladder", "targets", "search")


# ---- assets ---------------------------------------------------------------------------------
def _model(levels=(4, 2)) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), QCFS(levels[0], 1.0), nn.Linear(8, 6),
                         QCFS(levels[1], 1.5), nn.Linear(6, CLASSES)).eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Valid inputs of every kind, written once; each case copies or corrupts them."""
    root = tmp_path_factory.mktemp("fuzz_assets")
    example = torch.rand(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    save_traced(_model(), example, root / "model.pt")
    torch.jit.trace(_model(), example).save(str(root / "plain.pt"))
    torch.save(_model(), root / "pickled.pt")
    bad = _model()
    with torch.no_grad():
        bad[4].threshold.fill_(float("nan"))
    torch.save(bad, root / "bad_qcfs.pt")
    torch.save(_model().state_dict(), root / "state.pt")
    save_graph(load_model_graph(root / "model.pt"), root / "model.mtir")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["compile", str(root / "model.pt"), "-o", str(root / "build")]) == 0
    x = np.random.default_rng(0).random((12, *INPUT_SHAPE))
    np.savez(root / "data.npz", x=x.astype(np.float32), y=np.arange(12) % CLASSES)
    np.save(root / "x.npy", x)
    (root / "cases").mkdir()
    return root


@pytest.fixture(scope="module", autouse=True)
def report_count(request):
    """Print how many CLI cases the module ran and what they found."""
    yield
    verbs = ", ".join(f"{v} {n}" for v, n in sorted(TALLY.items()) if v.startswith("verb:"))
    codes = ", ".join(f"{c}: {n}" for c, n in sorted(TALLY.items()) if c.startswith("exit "))
    line = (f"fuzz_cli: {TALLY['cases']} CLI cases ({verbs.replace('verb:', '')}); {codes}; "
            f"internal errors {TALLY['internal errors']}, tracebacks {TALLY['tracebacks']}, "
            f"destroyed files {TALLY['destroyed files']}, partial outputs "
            f"{TALLY['partial outputs']}, subprocess peak RSS {TALLY['peak rss kb'] // 1024} MiB"
            f"; -o onto an existing input: {TALLY['-o onto an input']} cases")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}")


# ---- the properties -------------------------------------------------------------------------
def _snapshot(root: Path, skip: str | None = None) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too; not the top-level ``skip``) -> its content
    hash, or '<dir>'."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if skip is None or not _under(rel, [skip]):
            out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def _made_for(path: str, outputs: list[str]) -> bool:
    """``path`` is an output, inside one, or a folder created to hold one."""
    return _under(path, outputs) or any(o.startswith(path + "/") for o in outputs)


def check_files(before: dict, after: dict, code: int, outputs: list[str],
                replaceable: list[str]) -> None:
    """Files that existed are untouched (a previous build at an output may be replaced on
    success); new files only on success and only at the outputs."""
    for path, digest in before.items():
        if after.get(path) != digest and not (code == 0 and _under(path, replaceable)):
            TALLY["destroyed files"] += 1
            raise AssertionError(f"{path} changed or vanished (exit {code})")
    new = [p for p in after if p not in before]
    stray = [p for p in new if code != 0 or not _made_for(p, outputs)]
    if stray:
        TALLY["partial outputs"] += 1
        raise AssertionError(f"exit {code} left {stray}")


def run_case(argv: list, case: Path, shared: Path, outputs=(), replaceable=()) -> tuple[int, str]:
    """One CLI run in-process, checked against every property; -> (exit code, stderr)."""
    argv = [str(a) for a in argv]
    outs = [str(Path(o).relative_to(case)) for o in outputs]
    before, shared_before = _snapshot(case), _snapshot(shared, skip="cases")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:            # argparse's errors and --help
            code = exc.code
    err = stderr.getvalue()
    TALLY["cases"] += 1
    TALLY[f"verb:{argv[0] if argv and argv[0] in VERBS else '(other)'}"] += 1
    TALLY[f"exit {code}"] += 1
    if code not in (0, 2, 3):
        TALLY["internal errors"] += 1
        raise AssertionError(f"mtdeploy {' '.join(argv)}: exit {code}\n{err}")
    if "Traceback" in err or "internal error" in err:
        TALLY["tracebacks"] += 1
        raise AssertionError(f"mtdeploy {' '.join(argv)}: traceback\n{err}")
    try:
        check_files(before, _snapshot(case), code, outs,
                    [str(Path(r).relative_to(case)) for r in replaceable])
    except AssertionError as exc:
        raise AssertionError(f"mtdeploy {' '.join(argv)}: {exc}\n{err}") from None
    assert _snapshot(shared, skip="cases") == shared_before, "a shared input file changed"
    return code, err


@contextlib.contextmanager
def case_dir(assets: Path):
    """A fresh folder per example (hypothesis reuses the test's fixtures)."""
    path = Path(tempfile.mkdtemp(dir=assets / "cases"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---- strategies: files ----------------------------------------------------------------------
MODEL_KINDS = ["traced", "traced", "traced", "plain", "pickled", "bad_qcfs", "state_dict", "mtir", "net", "build",
               "truncated", "corrupted", "random", "empty", "missing", "directory", "long name"]
LONG_NAME = "m" * 300                     # longer than any file name may be
SUFFIXES = [".pt", ".pth", ".ts", ".net", ".h5", ".mtir", ".bin", ""]
ASSET_OF = {"traced": "model.pt", "plain": "plain.pt", "pickled": "pickled.pt",
            "bad_qcfs": "bad_qcfs.pt", "state_dict": "state.pt", "mtir": "model.mtir",
            "net": "build/network.net"}


def damaged(data, raw: bytes) -> bytes:
    """``raw`` truncated at a drawn point, or with a few drawn bytes overwritten."""
    if data.draw(st.booleans(), label="truncate"):
        return raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)), label="cut")]
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
    return bytes(out)


def damaged_copy(data, src: Path, path: Path) -> Path:
    path.write_bytes(damaged(data, src.read_bytes()))
    return path


def random_file(data, path: Path) -> Path:
    path.write_bytes(data.draw(st.binary(max_size=512), label="bytes"))
    return path


def huge_header(samples: int) -> bytes:
    """An .npy header promising ``samples`` float64 samples, followed by almost nothing."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (samples, *INPUT_SHAPE)})
    return header.getvalue() + b"\0" * 64


def model_file(data, assets: Path, case: Path) -> Path:
    """A model argument of a drawn kind, written into ``case``."""
    kind = data.draw(st.sampled_from(MODEL_KINDS), label="model kind")
    if kind in ASSET_OF:
        src = assets / ASSET_OF[kind]
        path = case / f"model{''.join(src.suffixes[-1:])}"
        shutil.copy(src, path)
    elif kind == "build":
        path = case / "prev_model_build"
        shutil.copytree(assets / "build", path)
    elif kind in ("truncated", "corrupted"):
        src = assets / data.draw(st.sampled_from(sorted(ASSET_OF.values())), label="source")
        suffix = data.draw(st.sampled_from([src.suffix] + SUFFIXES), label="suffix")
        path = damaged_copy(data, src, case / f"model{suffix}")
    elif kind == "random":
        path = random_file(data, case / f"model{data.draw(st.sampled_from(SUFFIXES))}")
    elif kind == "empty":
        path = case / "model.pt"
        path.write_bytes(b"")
    elif kind == "directory":
        path = case / "model.pt"
        path.mkdir()
    else:
        path = case / ("absent.pt" if kind == "missing" else f"{LONG_NAME}.pt")
    return path


DTYPES = ["float64", "float32", "float16", "int8", "int64", "uint8", "bool", "complex64", "U3",
          "S2", "datetime64[s]", [("a", "f4")]]
VALUES = [0.0, 0.5, 1.0, -1.0, 255.0, 1e300, -1e300, math.nan, math.inf, -math.inf, 1e-320]


def random_array(data, label: str, sample_shape=INPUT_SHAPE) -> np.ndarray:
    """An array of a drawn dtype and shape (often (N, *sample_shape)) and drawn values."""
    if data.draw(st.booleans(), label=f"{label} model-shaped"):
        shape = (data.draw(st.integers(0, 5), label=f"{label} N"), *sample_shape)
    else:
        shape = tuple(data.draw(st.lists(st.integers(0, 5), max_size=4), label=f"{label} shape"))
    dtype = np.dtype(data.draw(st.sampled_from(DTYPES), label=f"{label} dtype"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label=f"{label} seed"))
    base = rng.random(shape) * data.draw(st.sampled_from([1.0, 4.0, 300.0]))
    specials = data.draw(st.lists(st.sampled_from(VALUES), max_size=3), label=f"{label} specials")
    flat = base.reshape(-1)
    for k, value in enumerate(specials[:flat.size]):
        flat[k] = value
    with np.errstate(all="ignore"):
        if dtype.kind in "US":
            return base.astype(str).astype(dtype)
        if dtype.kind == "V":
            return np.zeros(shape, dtype)
        if dtype.kind in "iub":
            return np.nan_to_num(base, posinf=1e9, neginf=-1e9).astype(np.int64).astype(dtype)
        if dtype.kind == "M":
            return np.zeros(shape, dtype)
        return base.astype(dtype)


def labels(data, n: int):
    """A y of a drawn kind: valid, or wrong in one of the ways users get it wrong."""
    kind = data.draw(st.sampled_from(["none", "valid", "range", "negative", "float", "nan",
                                      "strings", "one-hot", "length", "random"]), label="y kind")
    rng = np.random.default_rng(n)
    return {"none": None, "valid": rng.integers(0, CLASSES, n),
            "range": rng.integers(0, 1000, n), "negative": -rng.integers(1, 5, n),
            "float": rng.random(n) * CLASSES, "nan": np.full(n, np.nan),
            "strings": np.array(["cat"] * n), "one-hot": np.eye(CLASSES)[rng.integers(0, 4, n)],
            "length": np.zeros(n + 1, np.int64),
            "random": None if kind != "random" else random_array(data, "y", ())}[kind]


def data_file(data, assets: Path, case: Path) -> Path:
    """A samples argument of a drawn kind, written into ``case``."""
    kind = data.draw(st.sampled_from(["valid npz", "valid npz", "valid npy", "npy", "npz",
                                      "damaged", "random", "missing", "no x", "huge header",
                                      "idx", "damaged idx"]),
                     label="data kind")
    path = case / "data.npz"
    if kind in ("idx", "damaged idx"):
        path = idx_pair(data, case, damage=kind == "damaged idx")
    elif kind in ("valid npz", "valid npy"):
        src = assets / ("data.npz" if kind == "valid npz" else "x.npy")
        path = case / src.name
        shutil.copy(src, path)
    elif kind == "npy":
        path = case / "x.npy"
        np.save(path, random_array(data, "x"))
    elif kind in ("npz", "no x"):
        x = random_array(data, "x")
        y = labels(data, len(x) if x.ndim else 1)
        arrays = {"x": x} if kind == "npz" else {"z": x}
        if y is not None:
            arrays["y"] = y
        np.savez(path, **arrays)
    elif kind == "damaged":
        src = assets / data.draw(st.sampled_from(["data.npz", "x.npy"]), label="source")
        path = damaged_copy(data, src, case / src.name)
    elif kind == "random":
        suffix = data.draw(st.sampled_from([".npy", ".npz", ".txt"]), label="suffix")
        path = random_file(data, case / f"data{suffix}")
    elif kind == "huge header":
        path = case / "x.npy"
        path.write_bytes(huge_header(2 ** 34))
    else:
        path = case / "absent.npy"
    return path


PROFILE_VALUES = [math.nan, math.inf, -math.inf, 0, -1, 1, 2.5, 2 ** 24, 10 ** 30, 1e300, "abc", "",
                  None, True, [1, 2], {"value": 1}, {"value": math.nan, "source": "lava_0_10"}]
LOIHI2 = yaml.safe_load((PROFILE_DIR / "loihi2.yaml").read_text())


def _leaf_paths(doc, prefix=()) -> list[tuple]:
    paths = []
    for key, value in doc.items():
        paths.append(prefix + (key,))
        if isinstance(value, dict):
            paths += _leaf_paths(value, prefix + (key,))
    return paths


def profile_file(data, case: Path) -> str:
    """A --target: a bundled name, an unknown one, or a YAML file with drawn damage."""
    kind = data.draw(st.sampled_from(["bundled", "unknown", "mutated", "text", "extends"]),
                     label="profile kind")
    if kind == "bundled":
        return data.draw(st.sampled_from(["loihi2", "loihi1", "kapoho_point", "hala_point"]))
    if kind == "unknown":
        return data.draw(st.sampled_from(["loihi9", "", "../hw_profiles/loihi2", "/etc/passwd"]))
    path = case / "profile.yaml"
    if kind == "text":
        path.write_bytes(data.draw(st.binary(max_size=300), label="profile bytes"))
        return str(path)
    doc = json.loads(json.dumps(LOIHI2))
    if kind == "extends":
        doc = {"extends": data.draw(st.sampled_from(["loihi2", "loihi2.yaml", "../loihi2.yaml",
                                                     str(PROFILE_DIR / "loihi1.yaml"), 3,
                                                     "profile.yaml", None])),
               "name": "x", "title": "x"}
    paths = _leaf_paths(doc)
    for _ in range(data.draw(st.integers(0 if kind == "extends" else 1, 3), label="edits")):
        where = data.draw(st.sampled_from(paths), label="key")
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        if data.draw(st.booleans(), label="delete"):
            parent.pop(where[-1], None)
        else:
            parent[where[-1]] = copy.deepcopy(data.draw(st.sampled_from(PROFILE_VALUES),
                                                         label="value"))
        paths = _leaf_paths(doc)
        if not paths:
            break
    path.write_text(yaml.safe_dump(doc))
    return str(path)


# ---- strategies: options --------------------------------------------------------------------
def idx_pair(data, case: Path, damage: bool) -> Path:
    """An IDX images file (uint8, the model's 4x4 maps) with its labels file beside it, the
    images drawn damaged (cut short, wrong magic, a count the labels do not share)."""
    n = data.draw(st.integers(1, 6), label="idx samples")
    images = np.random.default_rng(n).integers(0, 256, (n, 4, 4), dtype=np.uint8)
    head = bytes([0, 0, 8, 3]) + struct.pack(">3I", n, 4, 4)
    raw = head + images.tobytes()
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", n) + bytes(i % CLASSES for i in range(n))
    if damage:
        how = data.draw(st.sampled_from(["short", "magic", "count"]), label="idx damage")
        raw = {"short": raw[:-1], "magic": b"\x01" + raw[1:],
               "count": bytes([0, 0, 8, 3]) + struct.pack(">3I", n + 1, 4, 4) + raw[16:]}[how]
    gz = data.draw(st.booleans(), label="idx gz")
    images_path = case / ("x-images-idx3-ubyte" + (".gz" if gz else ""))
    labels_path = case / ("x-labels-idx1-ubyte" + (".gz" if gz else ""))
    write = gzip.compress if gz else bytes
    images_path.write_bytes(write(raw))
    labels_path.write_bytes(write(labels))
    return images_path


NUMBERS = ["0", "-1", "1", "2", "8", "nan", "inf", "-inf", "1e309", "1e-320", "abc", "", " ",
           "0x10", "2.5", "1_000", "99999999999999999999", "-0", "+3", "0.3", "1.0"]
OPTION_POOLS = {
    "--timesteps": NUMBERS + ['{"2": 3}', '{"2": null}', '{"2": "abc"}', '{"2": 2.5}', "true",
                              '{"nope": 2}', "[1]", '{"2": 99999999999999999999}', "{",
                              '{"2": -1, "4": 1}', sys.executable, str(PROFILE_DIR)],
    "--input-shape": ["1,4,4", "16", "1x4x4", "4,4", "0", "-1,4,4", "a", "1,4,4,4", ",",
                      "1,4,4000", "1,0,4", "2,4,4"],
    "--alignment": ["avg-repeat", "ttm", "none", "bogus"],
    "--neuron": ["if", "tpp", "lif"],
    "--v-init": NUMBERS, "--input-max": NUMBERS, "--weight-bits": NUMBERS, "--seed": NUMBERS,
    "--input-bits": NUMBERS,
}


VALID_OPTIONS = {"--timesteps": ["1", "2", "8", '{"2": 3}'], "--input-shape": ["1,4,4", "16"],
                 "--alignment": ["avg-repeat", "ttm"], "--neuron": ["if", "tpp"],
                 "--v-init": ["0", "0.5", "1"], "--input-max": ["1", "2.5", "0.3"],
                 "--weight-bits": ["2", "8", "16"], "--seed": ["0", "1", "8"],
                 "--input-bits": ["4", "8", "12", "16"]}


def options(data, names: list[str]) -> list[str]:
    """A drawn subset of ``names``, each with a drawn value: half the time a valid one (so
    that the cases also reach the later stages), else one from the option's edge cases."""
    argv = []
    for name in names:
        if data.draw(st.booleans(), label=f"use {name}"):
            pool = VALID_OPTIONS[name] if data.draw(st.booleans(), label=f"valid {name}") \
                else OPTION_POOLS.get(name, NUMBERS)
            argv += [name, data.draw(st.sampled_from(pool), label=name)]
    return argv


def flags(data, names: list[str]) -> list[str]:
    """A drawn subset of the flags ``names``."""
    return [name for name in names if data.draw(st.booleans(), label=name)]


def output_dir(data, assets: Path, case: Path) -> tuple[Path, list[Path]]:
    """(-o path, the previous builds it may replace): new, nested, or a previous build."""
    kind = data.draw(st.sampled_from(["new", "nested", "previous build", "long name"]),
                     label="output")
    if kind == "previous build":
        shutil.copytree(assets / "build", case / "prev")
        return case / "prev", [case / "prev"]
    return {"new": case / "out", "nested": case / "a" / "b" / "out",
            "long name": case / LONG_NAME}[kind], []


# ---- one test per verb ----------------------------------------------------------------------
@fuzz(50)
@given(data=st.data())
def test_fuzz_compile(assets, data):
    with case_dir(assets) as case:
        model = model_file(data, assets, case)
        out, previous = output_dir(data, assets, case)
        argv = ["compile", model, "-o", out,
                *options(data, ["--timesteps", "--input-shape", "--alignment", "--neuron",
                                "--v-init", "--input-max", "--weight-bits", "--seed",
                                "--input-bits"]),
                *flags(data, ["--trust-pickle", "--per-layer-scaling"])]
        if data.draw(st.booleans(), label="calib?"):
            argv += ["--calib", data_file(data, assets, case)]
        if data.draw(st.integers(0, 3), label="profile?") == 0:
            argv += ["--target", profile_file(data, case)]
        code, err = run_case(argv, case, assets, outputs=[out], replaceable=previous)
        if code == 0:
            assert (out / "report.json").is_file() and (out / "schedule.json").is_file()


@fuzz(35)
@given(data=st.data())
def test_fuzz_check(assets, data):
    with case_dir(assets) as case:
        argv = ["check", model_file(data, assets, case),
                *options(data, ["--timesteps", "--input-shape"]),
                *flags(data, ["--json", "--trust-pickle"])]
        if data.draw(st.booleans(), label="profile?"):
            argv += ["--target", profile_file(data, case)]
        run_case(argv, case, assets)


@fuzz(40)
@given(data=st.data())
def test_fuzz_profiles(assets, data):
    """Hardware profiles alone: the bundled YAML with drawn damage, through check."""
    with case_dir(assets) as case:
        target = profile_file(data, case)
        code, _ = run_case(["check", assets / "model.pt", "--target", target], case, assets)
        assert code != 0 or not target.endswith(".yaml") or "nan" not in \
            Path(target).read_text().lower()


def build_arg(data, assets: Path, case: Path) -> Path:
    """A build argument: the valid build (copied), a damaged copy, or not a build at all."""
    kind = data.draw(st.sampled_from(["valid", "valid", "damaged net", "edited net", "no net",
                                      "file", "missing"]), label="build kind")
    path = case / "build"
    if kind == "file":
        path.write_bytes(b"not a build")
    elif kind != "missing":
        shutil.copytree(assets / "build", path)
    if kind == "damaged net":
        net = path / "network.net"
        net.write_bytes(damaged(data, net.read_bytes()))
    elif kind == "edited net":
        edit_hdf5(data, path / "network.net")
    elif kind == "no net":
        (path / "network.net").unlink()
    return path


HDF5_VALUES = [np.nan, np.inf, -1, 0, 2 ** 40, 0.5, "abc", np.zeros((0,)), np.ones((3, 3)),
               np.array([np.nan, 1.0])]


def edit_hdf5(data, path: Path) -> None:
    """Replace one drawn dataset of a NetX file with a drawn value; sometimes recompute the
    extension's digest, as a careless tool would, so that the value checks are reached."""
    with h5py.File(path, "r+") as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset)
                     else None)
        name = data.draw(st.sampled_from(sorted(names)), label="dataset")
        value = data.draw(st.sampled_from(HDF5_VALUES), label="value")
        del f[name]
        f.create_dataset(name, data=value)
        if "mtdeploy/digest" in f and data.draw(st.booleans(), label="redigest"):
            try:
                params = {i: {n: f[f"mtdeploy/params/{i}/{n}"][()]
                              for n in f[f"mtdeploy/params/{i}"]} for i in f["mtdeploy/params"]}
                digest = extension_digest(f["mtdeploy/graph"][()].decode(),
                                          f["mtdeploy/stock"][()].decode(), params)
            except (KeyError, AttributeError, TypeError):
                return
            del f["mtdeploy/digest"]
            f["mtdeploy"].create_dataset("digest", data=np.array([digest.encode()], "S80"))


@fuzz(60)
@given(data=st.data())
def test_fuzz_simulate(assets, data):
    with case_dir(assets) as case:
        build = build_arg(data, assets, case)
        argv = ["simulate", build, "--input", data_file(data, assets, case),
                *options(data, ["--seed"]), *flags(data, ["--fixed-point"])]
        outputs = []
        if data.draw(st.booleans(), label="-o"):
            out = case / data.draw(st.sampled_from(["out.npy", "sub/dir/out.npy", "out.txt"]))
            argv += ["-o", out]
            outputs = [out]
        code, _ = run_case(argv, case, assets, outputs=outputs)
        if code == 0 and outputs:
            assert np.isfinite(np.load(outputs[0])).all()


@fuzz(4)
@given(data=st.data())
def test_fuzz_simulate_on_lava(assets, data):
    """The Lava backend (each valid case runs Lava's simulator: few examples)."""
    with case_dir(assets) as case:
        run_case(["simulate", build_arg(data, assets, case), "--input",
                  data_file(data, assets, case), "--backend", "lava",
                  *flags(data, ["--fixed-point"])], case, assets)


@fuzz(10)
@given(data=st.data())
def test_fuzz_ladder(assets, data):
    with case_dir(assets) as case:
        argv = ["ladder", build_arg(data, assets, case), "--input",
                data_file(data, assets, case)]
        if data.draw(st.booleans(), label="-n"):
            argv += ["-n", data.draw(st.sampled_from(["0", "-1", "1", "2", "abc", "1e3"]))]
        run_case(argv, case, assets)


SEARCH_POOLS = {"--budget": ["mean-T=4", "sum-T=0", "synops=-1", "cores=abc", "x", "mean-T=nan",
                             "max-T=inf", "cores=1"],
                "--val-fraction": ["0.3", "0", "1", "nan", "-0.5", "abc", "inf"],
                "--epochs": ["0", "-1", "abc", "nan", "1e3"],
                "--threads": ["1", "0", "-2", "abc"],
                "--device": ["cpu", "cuda", "tpu", ""],
                "--level-choices": ["1,2,3", "0,2", "2,abc", "", "4", "-1", "1,1e9"],
                "--screen-samples": ["1", "0", "-3", "abc", "1000000"]}


@fuzz(12)
@given(data=st.data())
def test_fuzz_search(assets, data):
    with case_dir(assets) as case:
        model = model_file(data, assets, case)
        out = case / data.draw(st.sampled_from(["s.pt", "deep/s.pt", "s.txt"]), label="-o")
        argv = ["search", model, "--data", data_file(data, assets, case), "-o", out,
                "--epochs", "0", "--threads", "1"]
        for name, pool in SEARCH_POOLS.items():
            if data.draw(st.booleans(), label=f"use {name}"):
                argv += [name, data.draw(st.sampled_from(pool), label=name)]
        argv += [*options(data, ["--seed", "--input-shape"]), *flags(data, ["--trust-pickle"])]
        outputs = [out, out.with_suffix(".front.json")]
        code, _ = run_case(argv, case, assets, outputs=outputs)
        if code == 0:
            assert all(p.is_file() for p in outputs)


@fuzz(6)
@given(extra=st.lists(st.sampled_from(["--json", "x", "-o", "--help", "loihi2", "--version"]),
                      max_size=2))
def test_fuzz_targets_and_bare_command_lines(assets, extra):
    with case_dir(assets) as case:
        run_case(["targets", *extra], case, assets)
        run_case(extra, case, assets)


# ---- -o onto an existing input: the output-safety part of issue 12 -------------------------
OVERWRITE_CASES = {
    "compile -o the data file": ["compile", "model.pt", "-o", "data.npz"],
    "simulate -o its own input": ["simulate", "build", "--input", "x.npy", "-o", "x.npy"],
    "search -o the model it reads": ["search", "model.pt", "--data", "data.npz", "-o",
                                     "model.pt", "--epochs", "0", "--threads", "1"],
}


@pytest.mark.parametrize("case", sorted(OVERWRITE_CASES))
def test_output_onto_an_existing_input_leaves_it_alone(assets, case, tmp_path, monkeypatch):
    for name in ("model.pt", "data.npz", "x.npy", "build"):
        (shutil.copytree if name == "build" else shutil.copy)(assets / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(OVERWRITE_CASES[case])
    TALLY["cases"] += 1
    TALLY["-o onto an input"] += 1
    assert code in (0, 2, 3)
    assert {p: d for p, d in _snapshot(tmp_path).items() if p in before} == before


# ---- a few cases in a process of their own, with their peak memory ---------------------------
def _subprocess_case(argv: list[str], cwd: Path) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of ``python -m mtdeploy argv`` run by a bare
    wrapper process, whose only child it is (RUSAGE_CHILDREN then measures just that run)."""
    wrapper = ("import resource, subprocess, sys\n"
               "r = subprocess.run([sys.executable, '-m', 'mtdeploy', *sys.argv[1:]], "
               "capture_output=True, text=True)\n"
               "sys.stderr.write(r.stderr)\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "sys.exit(r.returncode)\n")
    res = subprocess.run([sys.executable, "-c", wrapper, *argv], cwd=cwd, capture_output=True,
                         text=True, env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                                         "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    peak = int(res.stdout.strip().splitlines()[-1])
    TALLY["cases"] += 1
    TALLY[f"verb:{argv[0]}"] += 1
    TALLY[f"exit {res.returncode}"] += 1
    TALLY["peak rss kb"] = max(TALLY["peak rss kb"], peak)
    return res.returncode, res.stderr, peak


def _random_model(assets: Path, case: Path) -> list[str]:
    (case / "m.pt").write_bytes(bytes(range(256)) * 8)
    return ["compile", "m.pt", "-o", "out"]


def _huge_samples(assets: Path, case: Path) -> list[str]:
    (case / "x.npy").write_bytes(huge_header(2 ** 37))
    return ["simulate", str(assets / "build"), "--input", "x.npy", "-o", "out.npy"]


def _untrusted_pickle(assets: Path, case: Path) -> list[str]:
    return ["check", str(assets / "pickled.pt"), "--input-shape", "1,4,4"]


SUBPROCESS_CASES = {"compile random bytes": _random_model,
                    "simulate a header promising 16 TiB": _huge_samples,
                    "check an untrusted pickle": _untrusted_pickle}


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_subprocess_cases_exit_2_within_a_memory_bound(assets, case, tmp_path):
    argv = SUBPROCESS_CASES[case](assets, tmp_path)
    before = _snapshot(tmp_path)
    code, err, peak_kb = _subprocess_case(argv, tmp_path)
    assert code == 2, err
    assert err.startswith("mtdeploy: error:") and "Traceback" not in err, err
    assert _snapshot(tmp_path) == before         # nothing written, nothing touched
    assert peak_kb < MEMORY_BOUND_KB, f"peak RSS {peak_kb // 1024} MiB"
