"""IDX data (the MNIST-family format) wherever samples are taken: small files written here, in
the format's own byte layout, so nothing in CI needs a downloaded data set."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torch import nn

from mtdeploy.cli import main
from mtdeploy.errors import InputError
from mtdeploy.idx import load_idx_samples, read_idx, resolve
from mtdeploy.io import load_samples
from mtdeploy.nn import QCFS, save_traced

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
         np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``, written from the specification (not with mtdeploy)."""
    code = CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_pair(directory, prefix: str, n: int = 12, size: int = 6, gz: bool = True, seed: int = 0):
    """``prefix-images-idx3-ubyte[.gz]`` and ``prefix-labels-idx1-ubyte[.gz]``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    paths = []
    for name, array in ((f"{prefix}-images-idx3-ubyte{suffix}", images),
                        (f"{prefix}-labels-idx1-ubyte{suffix}", labels)):
        data = idx_bytes(array)
        (directory / name).write_bytes(gzip.compress(data) if gz else data)
        paths.append(directory / name)
    return images, labels, paths


@pytest.mark.parametrize("gz", [True, False])
def test_images_and_labels_read_back(tmp_path, gz):
    images, labels, (img_path, _) = write_pair(tmp_path, "train", gz=gz)
    for given in (img_path, tmp_path):     # the images file, or the directory of one pair
        x, y = load_samples(given)
        assert x.shape == (12, 1, 6, 6) and y.dtype == np.int64
        np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_every_idx_type_reads_as_stored(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    (tmp_path / "a.idx3").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx3"), array)


def test_images_without_labels_are_unlabelled(tmp_path):
    images, _, (img_path, lab_path) = write_pair(tmp_path, "t10k", gz=False)
    lab_path.unlink()
    x, y = load_idx_samples(img_path)
    assert y is None and x.shape == (12, 1, 6, 6)


def _damage(tmp_path, how: str):
    _, _, (img, lab) = write_pair(tmp_path, "train", gz=False)
    data = img.read_bytes()
    if how == "truncated":
        img.write_bytes(data[:-5])
    elif how == "truncated-gz":
        img.unlink()
        img = img.with_name(img.name + ".gz")
        img.write_bytes(gzip.compress(data[:-40]))
    elif how == "bad-magic":
        img.write_bytes(b"\x12\x34" + data[2:])
    elif how == "bad-type":
        img.write_bytes(data[:2] + b"\x07" + data[3:])
    elif how == "trailing":
        img.write_bytes(data + b"\0\0")
    elif how == "mismatched":
        lab.write_bytes(idx_bytes(np.zeros(11, dtype=np.uint8)))
    elif how == "labels-2d":
        lab.write_bytes(idx_bytes(np.zeros((12, 2), dtype=np.uint8)))
    elif how == "empty":
        img.write_bytes(b"")
    elif how == "corrupt-gz":
        img.unlink()
        img = img.with_name(img.name + ".gz")
        img.write_bytes(gzip.compress(data)[:30] + b"garbage" * 10)
    return img


@pytest.mark.parametrize("how, words", [
    ("truncated", ["truncated", "promises"]), ("truncated-gz", ["truncated"]),
    ("bad-magic", ["bad magic"]), ("bad-type", ["bad magic"]), ("trailing", ["more data"]),
    ("mismatched", ["12 images", "11 labels"]), ("labels-2d", ["one dimension"]),
    ("empty", ["bad magic"]), ("corrupt-gz", ["IDX"])])
def test_damaged_files_are_input_errors(tmp_path, how, words):
    img = _damage(tmp_path, how)
    with pytest.raises(InputError) as exc:
        load_samples(img)
    for word in words:
        assert word in str(exc.value)
    assert str(img.name) in str(exc.value) or "labels" in str(exc.value)


def test_a_directory_with_two_pairs_asks_for_a_file(tmp_path):
    write_pair(tmp_path, "train")
    write_pair(tmp_path, "t10k")
    with pytest.raises(InputError, match="exactly one images file"):
        resolve(tmp_path)
    with pytest.raises(InputError, match="t10k-images-idx3-ubyte.gz, train-images"):
        load_samples(tmp_path)


def test_a_directory_without_idx_files_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no IDX files"):
        load_samples(tmp_path / "empty")


@pytest.fixture
def idx_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), QCFS(4, 1.0), nn.Linear(16, 10))
    save_traced(model, torch.zeros(2, 1, 6, 6), tmp_path / "model.pt")
    return tmp_path / "model.pt"


def test_cli_verbs_take_idx_data(tmp_path, capsys, idx_model):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _, _, (img, _) = write_pair(data_dir, "train", n=40, seed=1)
    build = tmp_path / "build"
    assert main(["compile", str(idx_model), "-o", str(build)]) == 0
    assert main(["simulate", str(build), "--input", str(img), "-o", str(tmp_path / "o.npy")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and np.load(tmp_path / "o.npy").shape == (40, 10)
    assert main(["search", str(idx_model), "--data", str(data_dir), "--epochs", "0",
                 "-o", str(tmp_path / "s.pt")]) == 0


def test_cli_reports_a_damaged_idx_file(tmp_path, capsys, idx_model):
    img = _damage(tmp_path, "truncated")
    build = tmp_path / "build"
    assert main(["compile", str(idx_model), "-o", str(build)]) == 0
    capsys.readouterr()
    assert main(["simulate", str(build), "--input", str(img)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtdeploy: error:") and "truncated" in err


def write_fashion_like(directory, n_train: int = 60, n_test: int = 20, gz: bool = True) -> None:
    """The four Fashion-MNIST files (28x28 images), tiny and random: for the example's and the
    benchmark's tests, which need no downloaded data."""
    directory.mkdir(parents=True, exist_ok=True)
    write_pair(directory, "train", n=n_train, size=28, gz=gz, seed=1)
    write_pair(directory, "t10k", n=n_test, size=28, gz=gz, seed=2)
