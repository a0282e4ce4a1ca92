"""Interrupting ``mtdeploy simulate --backend lava`` (issue 12): Ctrl-C, SIGTERM and SIGHUP each
end the run promptly with 128 + the signal, leave no process of its tree and none of the
shared memory its Lava runtime mapped, and a Ctrl-C prints one line, not the children's
tracebacks."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdeploy.interrupts import Interrupted, exit_status, interrupts_raised

pytest.importorskip("lava.magma")

REPO = Path(__file__).resolve().parents[1]
START_S = 300     # hang guards, not timing claims: a broken handler waits here and fails
EXIT_S = 60


def _children() -> dict[int, list[int]]:
    """Parent pid -> its children's pids, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    return children


def tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def shared_memory(pids) -> set[str]:
    """The /dev/shm segments these processes map (their own, whatever else runs here)."""
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as fh:
                found |= {line.split("/dev/shm/")[1].split()[0] for line in fh
                          if "/dev/shm/" in line}
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def lava_job(tmp_path_factory, qcfs_cnn_module):
    """A build and enough samples for a Lava run of many seconds."""
    case = qcfs_cnn_module
    tmp = tmp_path_factory.mktemp("signals")
    model = tmp / "model.pt"
    torch.jit.trace(case.model, case.batch(2)).save(str(model))
    build = tmp / "build"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "mtdeploy", "compile", str(model), "--input-shape",
                    "1,8,8", "-o", str(build)], env=env, check=True, capture_output=True)
    np.save(tmp / "x.npy", case.batch(3000, seed=1).clamp(0, 1).numpy().astype(np.float32))
    return build, tmp / "x.npy", env


@pytest.fixture(scope="module")
def qcfs_cnn_module():
    from conftest import make_qcfs_cnn

    return make_qcfs_cnn()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process tree in /proc")
@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False),
                                           (signal.SIGHUP, False)],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_a_signal_ends_a_lava_run_and_leaves_nothing(lava_job, tmp_path, sig, to_group):
    skip_if_ignored(sig)
    build, x, env = lava_job
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        # its own session: a Ctrl-C goes to the whole process group, as a terminal sends it
        proc = subprocess.Popen([sys.executable, "-m", "mtdeploy", "simulate", str(build),
                                 "--input", str(x), "--backend", "lava"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    pids = [proc.pid]
    try:
        deadline = time.monotonic() + START_S
        while len(tree(proc.pid)) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)   # until Lava has forked its processes
        time.sleep(1.0)
        pids, segments = tree(proc.pid), shared_memory(tree(proc.pid))
        assert proc.poll() is None and len(pids) >= 4, "Lava did not start"
        assert segments, "the Lava runtime maps no shared memory: nothing to check"
        (os.killpg if to_group else os.kill)(proc.pid, sig)
        assert proc.wait(EXIT_S) == 128 + sig
        # Python's resource tracker, a child that ignores signals, exits by itself once the
        # last process holding its pipe is gone: give it time (a hang guard, not a claim)
        deadline = time.monotonic() + EXIT_S
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in pids if alive(pid)]
        assert left == [], f"processes left running: {[_cmdline(pid) for pid in left]}"
        assert sorted(s for s in segments if os.path.exists(f"/dev/shm/{s}")) == []
        lines = err_path.read_text().splitlines()
        assert lines == [f"mtdeploy: interrupted by {signal.Signals(sig).name}"], lines
    finally:   # a failed run leaves nothing for the next one either (children outlive it)
        for pid in set(pids) | set(tree(proc.pid)):
            _kill_python(pid)
        proc.wait()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"


def _kill_python(pid: int) -> None:
    try:
        if alive(pid) and b"python" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
    except OSError:   # gone meanwhile
        pass


def skip_if_ignored(sig) -> None:
    """Under ``nohup`` (or a parent that ignores the signal) mtdeploy keeps it ignored, as it
    should: there is nothing to test then."""
    if signal.getsignal(sig) is signal.SIG_IGN:
        pytest.skip(f"{signal.Signals(sig).name} is ignored by this process (e.g. nohup)")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_interrupts_raised_turns_a_signal_into_an_exception_once(sig):
    skip_if_ignored(sig)
    with interrupts_raised():
        with pytest.raises(Interrupted) as info:
            with interrupts_raised():   # nested: the outer handler stays in charge
                os.kill(os.getpid(), sig)
                time.sleep(30)          # the handler raises in here
        os.kill(os.getpid(), sig)       # a repeat while the first unwinds: ignored
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.signum == sig and exit_status(info.value) == 128 + sig
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)   # as under nohup
    try:
        with interrupts_raised():
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_outside_the_main_thread_nothing_changes():
    seen = []

    def worker():
        with interrupts_raised():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.SIG_DFL]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_forked_during_a_lava_run_ends_with_its_parent(tmp_path):
    """A Lava child the runtime never learned of (forked while a signal stopped the parent)
    must not outlive a parent that dies without cleaning up (SIGKILL here)."""
    script = (
        "import os, sys, time\n"
        "from mtdeploy.targets.loihi2.lava import runtime\n"
        "with runtime._children_ignore_interrupts():\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(120)\n"
        "        os._exit(0)\n"
        "print(pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    child = int(res.stdout.split()[0])
    deadline = time.monotonic() + 20
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert not alive(child), "the child outlived its killed parent"
    finally:
        _kill_python(child)
