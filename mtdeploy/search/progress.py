"""Where a long search shows that it is alive: bars on a terminal, status lines in a log.

tqdm redraws one line with carriage returns: in a log file or a CI job that is nothing for the
whole run and then one unreadable line. Status lines instead go to stderr when a stage starts
and then every ``every_s`` seconds, from a timer thread, so that a single long step (one
fine-tuning run) still shows up.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Iterable, Iterator

from mtdeploy.errors import InputError

STATUS_EVERY_S = 15.0
MODES = ("bars", "lines")


def progress_mode(setting) -> str | None:
    """``SearchSettings.progress`` -> "bars", "lines" or None (silent). None: bars when stderr
    is a terminal, else silent (the API's default; the CLI asks for lines in a log)."""
    if setting is None:
        return "bars" if sys.stderr.isatty() else None
    if isinstance(setting, bool):
        return "bars" if setting else None
    if setting in MODES:
        return setting
    raise InputError(f"progress must be True, False, None or one of {MODES}, got {setting!r}")


class Progress:
    """``track(items, desc)`` behind a bar or status lines; a context that runs the timer."""

    def __init__(self, setting, every_s: float = STATUS_EVERY_S, stream=None):
        self.mode = progress_mode(setting)
        self.every_s = every_s
        self.stream = stream
        self._status: tuple[str, int, int | None, float] | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        if self.mode == "lines":
            self._timer = threading.Thread(target=self._every, name="mtdeploy-progress",
                                           daemon=True)
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()

    def track(self, items: Iterable, desc: str) -> Iterable:
        if self.mode == "bars":
            from tqdm import tqdm   # only when someone watches a terminal

            return tqdm(items, leave=False, desc=desc)
        if self.mode == "lines":
            return self._lines(items, desc)
        return items

    def _lines(self, items: Iterable, desc: str) -> Iterator:
        total = len(items) if hasattr(items, "__len__") else None
        started = time.monotonic()
        self._status = (desc, 0, total, started)
        self._print()
        try:
            for done, item in enumerate(items):
                self._status = (desc, done, total, started)
                yield item
        finally:   # also when the caller stops early: the timer must not report a stale stage
            if self._status is not None and self._status[3] == started:
                self._status = None

    def _every(self) -> None:
        while not self._stop.wait(self.every_s):
            self._print()

    def _print(self) -> None:
        status = self._status
        if status is None:
            return
        desc, done, total, started = status
        print(f"mtdeploy {desc}: {done}/{total if total is not None else '?'} done, "
              f"{time.monotonic() - started:.0f} s", file=self.stream or sys.stderr, flush=True)
