"""SIGINT, SIGTERM and SIGHUP as an exception, so that cleanup runs before the process exits.

Python turns only SIGINT into :class:`KeyboardInterrupt`; a SIGTERM (``kill``, a job scheduler)
or a SIGHUP (a closed terminal) ends the process at once, skipping every ``finally``: Lava's OS
processes and shared memory outlive it, temp files stay behind. Inside
:func:`interrupts_raised`, each of the three raises :class:`Interrupted` in the main thread
instead, once; a repeat while that unwinds is ignored, so the cleanup it triggered can finish.
"""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s)
_UNCHOSEN = (signal.SIG_DFL, signal.default_int_handler)   # what a signal has if nobody chose


class Interrupted(KeyboardInterrupt):
    """The process got ``signum``; its exit status should be 128 + signum."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextlib.contextmanager
def interrupts_raised():
    """Within the block, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (once).

    Only signals still at their default are taken over: one that is ignored (``nohup`` ignores
    SIGHUP) or has a handler of its own (an enclosing block's, or the application's) keeps it.
    Outside the main thread, where Python cannot set handlers, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    taken = [s for s, h in previous.items() if h in _UNCHOSEN]
    for s in taken:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in taken:
            signal.signal(s, previous[s])


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal's number (130 for a plain Ctrl-C)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)
