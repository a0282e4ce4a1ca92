"""What mtdeploy may write and replace (issue 12): build directories and output files are
replaced only when that destroys nothing of the user's, appear whole or not at all (a full disk,
concurrent builds), get the modes the umask asks for, and compile refuses sizes no target holds.
"""
import errno
import json
import math
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.io import BUILD_MARKER, atomic_dir, atomic_path, atomic_paths
from mtdeploy.nn import QCFS, save_traced
from mtdeploy.targets.profiles import load_profile
from test_cli import run
from test_search import _cli_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def model(tmp_path, qcfs_cnn):
    """A TorchScript model (input shape recorded) in its own directory."""
    path = tmp_path / "models" / "model.pt"
    path.parent.mkdir()
    save_traced(qcfs_cnn.model, qcfs_cnn.batch(2), path)
    return path


def leftovers(directory: Path) -> list[str]:
    """Temp files or directories of an atomic writer (``.name.XXXX.tmp`` / ``.old``)."""
    return sorted(p.name for p in directory.iterdir()
                  if p.name.startswith(".") and p.name.endswith((".tmp", ".old")))


# ---- what compile -o may replace ----------------------------------------------------------------
def test_a_directory_with_other_files_is_refused_unless_forced(capsys, tmp_path, model):
    out = tmp_path / "r" / "u"
    out.mkdir(parents=True)
    (out / "precious.txt").write_text("precious\n")
    code, _, err = run(capsys, "compile", model, "-o", out)
    assert code == 2
    assert f"mtdeploy: error: {out}: not an mtdeploy build (precious.txt)" in err
    assert "--force" in err
    assert (out / "precious.txt").read_text() == "precious\n" and sorted(os.listdir(out)) == \
        ["precious.txt"]
    assert leftovers(out.parent) == []
    code, _, err = run(capsys, "compile", model, "-o", out, "--force")
    assert code == 0, err
    assert not (out / "precious.txt").exists() and (out / "report.json").is_file()


def test_an_empty_directory_and_an_earlier_build_are_replaced(capsys, tmp_path, model):
    out = tmp_path / "b"
    out.mkdir()
    assert run(capsys, "compile", model, "-o", out)[0] == 0
    first = json.loads((out / BUILD_MARKER).read_text())["files"]
    assert set(first) == set(os.listdir(out)) - {BUILD_MARKER}
    assert run(capsys, "compile", model, "-o", out, "--timesteps", "2")[0] == 0
    assert json.loads((out / "report.json").read_text())["latency"]["mean_T"] == 2
    assert leftovers(tmp_path) == []


def test_a_build_the_user_added_a_file_to_is_refused(capsys, tmp_path, model):
    out = tmp_path / "b"
    assert run(capsys, "compile", model, "-o", out)[0] == 0
    (out / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "compile", model, "-o", out)
    assert code == 2 and "holds files mtdeploy did not write (notes.txt)" in err
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("force", [False, True])
def test_never_the_input_models_directory_a_file_or_the_current_directory(
        capsys, tmp_path, model, monkeypatch, force):
    flag = ["--force"] if force else []
    text = tmp_path / "somefile.txt"
    text.write_text("keep me\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for target, message in [(model.parent, "holds the input"), (text, "is not a directory"), (fifo, "is not a directory"),
                            (".", "the current directory"), ("..", "the current directory"),
                            ("", "an empty output path")]:
        code, _, err = run(capsys, "compile", model, "-o", target, *flag)
        assert code == 2 and message in err, (target, err)
    assert model.is_file() and text.read_text() == "keep me\n"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(cwd) == []
    assert leftovers(tmp_path) == [] and leftovers(model.parent) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_an_impossible_path_is_an_input_error(capsys, model):
    code, _, err = run(capsys, "compile", model, "-o", "/proc/mtdeploy-build")
    assert code == 2 and "mtdeploy: error: /proc/mtdeploy-build: cannot write" in err


def test_a_link_to_a_directory_builds_there_and_stays_a_link(capsys, tmp_path, model):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert run(capsys, "compile", model, "-o", link)[0] == 0
    assert link.is_symlink() and (real / "report.json").is_file()


def _build(target, rounds, tag, barrier):
    barrier.wait()
    for i in range(rounds):
        with atomic_dir(target) as tmp:
            for name in ("a.json", "b.json"):
                (tmp / name).write_text(json.dumps({"writer": tag, "round": i}))


def test_concurrent_builds_into_one_directory_replace_each_other_whole(tmp_path):
    # 6 processes x 15 builds: the unlocked swap of the past failed here every time
    # (ENOTEMPTY when two renamed at once).
    ctx = multiprocessing.get_context("fork")
    target, writers = tmp_path / "new" / "b", 6   # its parent too is made concurrently
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_build, args=(target, 15, k, barrier)) for k in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * writers
    a, b = (json.loads((target / n).read_text()) for n in ("a.json", "b.json"))
    assert a == b   # both files from the same build
    assert os.listdir(tmp_path) == ["new"] and os.listdir(tmp_path / "new") == ["b"]


def test_a_parent_another_writer_makes_meanwhile_is_used_and_kept(tmp_path, monkeypatch):
    real_mkdir = os.mkdir

    def raced(path, *args):   # another process made it between our look and our mkdir
        real_mkdir(path, *args)
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))

    monkeypatch.setattr(os, "mkdir", raced)
    with atomic_path(tmp_path / "new" / "a.json") as tmp:
        tmp.write_text("a")
    assert (tmp_path / "new" / "a.json").read_text() == "a"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "other" / "b.json"):
            raise RuntimeError("failed")
    assert (tmp_path / "other").is_dir()   # not ours to remove


def test_concurrent_compiles_into_one_output_all_succeed(tmp_path, model):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mtdeploy", "compile", str(model), "-o", str(tmp_path / "b")]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, errors
    assert (tmp_path / "b" / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "models"]


# ---- failed writes leave nothing ---------------------------------------------------------------
def test_a_full_disk_during_compile_is_exit_2_and_leaves_nothing(capsys, tmp_path, model,
                                                                   monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    code, _, err = run(capsys, "compile", model, "-o", tmp_path / "new" / "b")
    assert code == 2
    assert f"mtdeploy: error: {tmp_path / 'new' / 'b'}: cannot write: No space left" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]   # not even new/


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs root and a kernel that lets us mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                            str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_really_full_disk_is_exit_2_for_compile_and_search(tmp_path, small_disk, model):
    # HDF5 reports a full disk as a RuntimeError, and torch.jit.save would abort the process:
    # both must end as a clean error with nothing left on the disk.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "mtdeploy"]
    res = subprocess.run(cli + ["compile", str(model), "-o", str(small_disk / "b")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "cannot write: No space left on device" in res.stderr
    assert os.listdir(small_disk) == []
    with open(small_disk / "filler", "wb", buffering=0) as fh:   # a small search fits 64 KiB
        with pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 4096)
    searched, data = _cli_model(tmp_path)
    res = subprocess.run(cli + ["search", str(searched), "--data", str(data), "--input-shape",
                                "12", "-o", str(small_disk / "s.pt"), "--epochs", "0",
                                "--threads", "1"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 2 and "cannot write: No space left on device" in res.stderr
    assert os.listdir(small_disk) == ["filler"]


# ---- search: all outputs or none ------------------------------------------------------------
def test_search_checks_every_output_before_searching(capsys, tmp_path, monkeypatch):
    searched, data = _cli_model(tmp_path)
    monkeypatch.setattr("mtdeploy.cli.search.search",
                        lambda *a, **k: pytest.fail("the search ran with an unwritable output"))
    (tmp_path / "a-file").write_text("")
    base = ["search", searched, "--data", data, "--input-shape", "12"]
    for extra, message in [
            (["-o", tmp_path / "s.pt", "--plot", tmp_path / "a-file" / "p.png"],
             "is not a directory"),
            (["-o", tmp_path / "s.pt", "--front", tmp_path], "a directory"),
            (["-o", tmp_path / "s.pt", "--front", tmp_path / "s.pt"], "named for two outputs"),
            (["-o", searched], "is also an input"),
            # permission bits would let root write here: the check tries
            (["-o", tmp_path / "s.pt", "--front", "/proc/mtdeploy/f.json"],
             "cannot write in /proc")]:
        code, _, err = run(capsys, *base, *extra)
        assert code == 2 and message in err, (extra, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "data.npz", "model.pt"]


def test_search_writes_all_outputs_or_none(capsys, tmp_path, monkeypatch):
    searched, data = _cli_model(tmp_path)

    def plot_fails(result, path, title=None):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mtdeploy.cli.search.plot_front", plot_fails)
    out = tmp_path / "s.pt"
    code, _, err = run(capsys, "search", searched, "--data", data, "--input-shape", "12",
                       "-o", out, "--plot", tmp_path / "s.png", "--epochs", "0", "--threads", "1")
    assert code == 2 and f"{tmp_path / 's.png'}: cannot write: No space left" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "model.pt"]


def test_atomic_paths_renames_nothing_when_the_block_fails(tmp_path):
    old = tmp_path / "old.json"
    old.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_paths(old, tmp_path / "new.json") as (a, b):
            a.write_text("replaced")
            b.write_text("new")
            raise RuntimeError("the second output failed")
    assert sorted(os.listdir(tmp_path)) == ["old.json"] and old.read_text() == "old"
    with atomic_paths(old, tmp_path / "new.json") as (a, b):
        a.write_text("replaced")
        b.write_text("new")
    assert old.read_text() == "replaced" and (tmp_path / "new.json").read_text() == "new"


def test_an_output_file_never_replaces_a_directory_or_a_special_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for target in ("fifo", "dir"):
        with pytest.raises(InputError, match="an output file may replace only a regular file"):
            with atomic_path(tmp_path / target) as tmp:
                tmp.write_text("x")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and (tmp_path / "dir").is_dir()


# ---- modes follow the umask -----------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_modes_the_umask_asks_for(capsys, tmp_path, model, umask):
    previous = os.umask(umask)
    try:
        assert run(capsys, "compile", model, "-o", tmp_path / "b")[0] == 0
        with atomic_path(tmp_path / "out.npy") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o777 & ~umask
    for f in [*(tmp_path / "b").iterdir(), tmp_path / "out.npy"]:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~umask, f.name


# ---- compile-time bounds --------------------------------------------------------------------
def test_timesteps_beyond_the_state_bits_are_refused(capsys, tmp_path, model):
    profile = load_profile("loihi2")
    most = math.isqrt(2 ** (profile.state_bits - 1) - 1)    # 2896: most * most fits 24 bits
    code, _, err = run(capsys, "compile", model, "--timesteps", "100000", "-o", tmp_path / "b")
    assert code == 2 and "mtdeploy: error: --timesteps too large for loihi2" in err
    assert "T <= 2,896" in err and not (tmp_path / "b").exists()
    assert run(capsys, "compile", model, "--timesteps", most + 1, "-o", tmp_path / "b")[0] == 2
    code, _, err = run(capsys, "compile", model, "--timesteps", most, "-o", tmp_path / "b")
    assert code == 0, err


def test_a_huge_input_shape_is_refused_from_shapes_alone(capsys, tmp_path, monkeypatch):
    # fully convolutional: every input shape is consistent, so only the size can refuse it
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), QCFS(4, 1.0), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, 10)).eval()
    path = tmp_path / "fcn.pt"
    torch.jit.trace(net, torch.rand(2, 1, 8, 8)).save(str(path))
    monkeypatch.setattr("mtdeploy.frontends.torch_builder.GraphBuilder._check_rebuilt",
                        lambda *a: pytest.fail("torch ran at the huge input shape"))
    code, _, err = run(capsys, "compile", path, "--input-shape", "1,30000,30000",
                       "-o", tmp_path / "b")
    assert code == 2
    assert "the network has 14,400,000,010 neurons, more than the largest hardware profile" in err


def test_outputs_of_a_normal_compile_are_complete(capsys, tmp_path, model):
    code, out, _ = run(capsys, "compile", model, "-o", tmp_path / "b")
    assert code == 0
    listed = out.split("files: ")[1].strip().split(", ")
    assert sorted(listed + [BUILD_MARKER]) == sorted(os.listdir(tmp_path / "b"))
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    assert run(capsys, "simulate", tmp_path / "b", "--input", tmp_path / "x.npy")[0] == 0
