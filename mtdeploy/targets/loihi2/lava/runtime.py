"""Running a built Lava process graph and always releasing its OS processes.

Lava runs every leaf process as an OS process. A run here is bounded by a deadline, notices a
process that died (Lava 0.10 would wait forever), and ends with a graceful stop or, when that is
impossible or hangs, by terminating the runtime's processes itself. SIGTERM and SIGHUP end a run
like Ctrl-C does (:mod:`mtdeploy.interrupts`), and the processes Lava forks leave Ctrl-C to
this one: a terminal sends it to the whole process group, and each child would print a traceback.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from importlib.metadata import version
from typing import Any, Callable, TypeVar

from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg

from mtdeploy.errors import MtdeployError
from mtdeploy.interrupts import SIGNALS, interrupts_raised

DEFAULT_TIMEOUT_S = 600.0
STOP_GRACE_S = 30.0         # a graceful stop taking longer is abandoned for termination
JOIN_S = 5.0                # wait for one terminated (then killed) OS process
POLL_S = 0.002              # how often the run loop checks for completion
ACTOR_CHECK_EVERY = 50      # ... and every this many polls, for a dead process

R = TypeVar("R")


class LavaRuntime:
    """One run of the process graph around ``root``: compile, start, step, read, stop.

    ``timings`` holds the wall-clock seconds of the run's phases.
    """

    def __init__(self, root, select_tag: str, process_count: int):
        self.root = root
        self.select_tag = select_tag
        self.process_count = process_count
        self.timings: dict[str, float] = {}
        self._started = False
        self._stopped = False

    def run(self, steps: int, read: Callable[[], R],
            timeout_s: float | None = DEFAULT_TIMEOUT_S) -> R:
        """Run ``steps`` steps, return ``read()`` (called while the processes still live).

        The runtime is stopped afterwards whatever happens (errors, Ctrl-C, SIGTERM, SIGHUP:
        these raise :class:`mtdeploy.interrupts.Interrupted` here). ``timeout_s`` counts
        from this call, compile and start-up included, and is enforced while the network runs:
        past it the OS processes are terminated and :class:`MtdeployError` is raised. A process
        that dies mid-run raises :class:`MtdeployError` with its exception at once.
        """
        if self._started:
            raise MtdeployError("this LavaNetwork has already run; build a new one "
                                "(lower_to_lava) for another batch")
        self._started = True
        with interrupts_raised(), _children_ignore_interrupts():
            return self._run(steps, read, timeout_s)

    def _run(self, steps: int, read: Callable[[], R], timeout_s: float | None) -> R:
        deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
        finished = False
        try:
            t0 = time.perf_counter()
            self.root.create_runtime(run_cfg=Loihi2SimCfg(select_tag=self.select_tag))
            t1 = time.perf_counter()
            self._step(steps, deadline, timeout_s)
            t2 = time.perf_counter()
            result = read()
            t3 = time.perf_counter()
            self.timings = {"compile_and_start_s": t1 - t0, "run_s": t2 - t1,
                            "read_s": t3 - t2, "steps": steps}
            finished = True
        finally:
            t4 = time.perf_counter()
            self.stop(graceful=finished)
            self.timings["stop_s"] = time.perf_counter() - t4
        return result

    def _step(self, steps: int, deadline: float | None, timeout_s: float | None) -> None:
        """Run without blocking and poll, so that the deadline and dead processes are noticed."""
        runtime = self.root.runtime
        self.root.run(condition=RunSteps(num_steps=steps, blocking=False))
        ports = list(runtime.service_to_runtime)
        polls = 0
        while not all(p.probe() for p in ports):
            if deadline is not None and time.monotonic() > deadline:
                raise MtdeployError(
                    f"the Lava run did not finish within {timeout_s:g} s ({steps} steps, "
                    f"{self.process_count} processes); its processes were terminated")
            polls += 1
            if polls % ACTOR_CHECK_EVERY == 0:
                _raise_if_an_actor_died(runtime)
            time.sleep(POLL_S)
        runtime.wait()

    def stop(self, graceful: bool = True) -> None:
        """Stop Lava (once); if a graceful stop is impossible or hangs, terminate its OS
        processes. Nothing to do for a graph that never ran."""
        if self._stopped:
            return
        self._stopped = True
        runtime = getattr(self.root, "runtime", None)
        if runtime is None:
            return
        if graceful:
            stopper = threading.Thread(target=_quiet_stop, args=(runtime,), daemon=True)
            stopper.start()
            stopper.join(STOP_GRACE_S)
            if not stopper.is_alive():
                return
        _terminate(runtime)


_RUNS = [0]   # Lava runs in progress in this process (children forked meanwhile are Lava's)


_FORKED_BY = [0]   # the pid that forked the current child (set just before each fork)
_PR_SET_PDEATHSIG = 1


def _before_fork() -> None:
    _FORKED_BY[0] = os.getpid()


def _child_signals() -> None:
    """In a process forked during a Lava run: SIGINT ignored (the parent takes Ctrl-C and
    stops its children), SIGTERM and SIGHUP at their default (the parent's handlers, inherited
    through fork, would keep a child alive when the parent terminates it), and SIGTERM from the
    kernel when the parent ends: a child forked while a signal was stopping the parent, before
    the runtime knew of it, would otherwise outlive it for good (seen under heavy load)."""
    if _RUNS[0]:
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN if s == signal.SIGINT else signal.SIG_DFL)
        _die_with_parent()


def _die_with_parent() -> None:
    """Linux's PR_SET_PDEATHSIG; elsewhere nothing (the runtime's stop still ends children)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != _FORKED_BY[0]:      # the parent ended before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


os.register_at_fork(before=_before_fork, after_in_child=_child_signals)


@contextlib.contextmanager
def _children_ignore_interrupts():
    """Mark a Lava run in progress, for :func:`_child_signals`."""
    _RUNS[0] += 1
    try:
        yield
    finally:
        _RUNS[0] -= 1


def _actors(runtime) -> list:
    """The runtime's OS processes (Lava's actors); empty once its infrastructure is gone."""
    infra = getattr(runtime, "_messaging_infrastructure", None)
    return list(getattr(infra, "actors", []) or [])


def _raise_if_an_actor_died(runtime) -> None:
    """A process model that raises leaves the rest of the run waiting forever (Lava 0.10's
    runtime service does not pass the error on); its OS process has exited though, so fail
    fast with its exception instead of running into the timeout."""
    for actor in _actors(runtime):
        if actor.is_alive():
            continue
        exc = actor.exception
        detail = ""
        if isinstance(exc, tuple) and exc:
            detail = f": {type(exc[0]).__name__}: {exc[0]}"
            if len(exc) > 1 and exc[1]:
                detail += "\n" + "\n".join(str(exc[1]).strip().splitlines()[-6:])
        raise MtdeployError(f"a Lava process exited during the run{detail}")


def _quiet_stop(runtime) -> None:
    try:
        runtime.stop()
    except Exception:  # noqa: BLE001 - a failed stop falls back to terminating below
        _terminate(runtime)


def _terminate(runtime) -> None:
    """End the runtime's own OS processes (its actors, then its shared-memory manager)."""
    actors = _actors(runtime)
    for actor in actors:
        try:
            if actor.is_alive():
                actor.terminate()
        except (ValueError, AssertionError):
            pass
    for actor in actors:
        _join_or_kill(actor)
    infra = getattr(runtime, "_messaging_infrastructure", None)
    try:
        if infra is not None and infra.smm is not None:
            infra.smm.shutdown()
    except Exception:  # noqa: BLE001 - already gone
        pass
    try:
        runtime._watchdog_manager.stop()
    except Exception:  # noqa: BLE001
        pass
    runtime._is_started = False   # keeps Runtime.__del__ from a blocking stop()
    runtime._is_running = False


def _join_or_kill(actor: Any) -> None:
    try:
        # Lava's SystemProcess.join() takes no timeout: use multiprocessing's own.
        multiprocessing.Process.join(actor, JOIN_S)
        if actor.is_alive():
            actor.kill()
            multiprocessing.Process.join(actor, JOIN_S)
    except (ValueError, AssertionError):
        pass


def child_pids() -> set[int]:
    """Live child processes of this interpreter (Lava runs each process as one), except
    Python's shared-memory resource tracker, a singleton that lives until the interpreter
    exits. Empty after every run here: how tests check that nothing was left behind."""
    live = multiprocessing.active_children()   # also reaps children that have exited
    if not os.path.isdir("/proc"):
        return {p.pid for p in live}
    return {int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _is_our_child(pid)}


def _is_our_child(pid: str) -> bool:
    """A live (not zombie) child of this interpreter other than the resource tracker."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        if int(fields[1]) != os.getpid() or fields[0] == "Z":
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"multiprocessing.resource_tracker" not in fh.read()
    except (OSError, IndexError, ValueError):
        return False


def lava_version() -> str:
    try:
        return version("lava-nc")
    except Exception:  # noqa: BLE001 - a report line, never a reason to fail
        return "unknown"
