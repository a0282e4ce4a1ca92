"""``mtdeploy simulate``: run a build on the samples of a file; print, and save the outputs.

Memory stays flat in the number of samples: an ``.npy`` input is memory-mapped and read a
batch at a time, the outputs go into a memory-mapped ``.npy`` beside the target (renamed into
place at the end), and only spike totals are kept, not every sample's counts.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from mtdeploy.api import load_build, simulate_build
from mtdeploy.errors import InputError
from mtdeploy.io import atomic_path, check_output_files, load_samples, save_npy
from mtdeploy.sim.parallel import is_leader

STATUS_EVERY_S = 10.0      # without a terminal: one status line on stderr this often


def run(a) -> int:
    if a.output:   # before the run: a long simulation must not end in an unusable -o
        check_output_files([a.output], protect=[a.input, a.build])
    x, y = open_samples(a.input)
    graph = load_build(a.build)
    shape = (len(x), *graph[graph.output].shape)
    streamed = a.backend == "reference" and a.output and is_leader()
    report = _Progress(sys.stderr)
    with _npy_output(a.output if streamed else None, shape) as out:
        out, result = simulate_build(
            graph, x, backend=a.backend, fixed_point=a.fixed_point, seed=a.seed,
            progress=report, device=a.device, workers=a.workers, batch_size=a.batch_size,
            memory_budget=a.memory_budget, keep_counts=False, out=out, pipeline=a.pipeline,
            precision=a.precision, labels=y)
        report.close()
        if out is None:            # a rank other than 0 of a torchrun group: rank 0 reports
            return 0
        _print_summary(a, len(x), out, y, result)
        if a.output and not streamed:
            save_npy(a.output, out)
    if a.output:
        print(f"  outputs -> {a.output}")
    return 0


def _print_summary(a, n: int, out, y, result) -> None:
    mode = "fixed-point" if a.fixed_point else "float"
    print(f"simulated {n} samples ({a.backend}, {mode})")
    if result is not None:
        print(f"  SynOps per sample: {result.total_synops / max(n, 1):.1f}")
        if result.input_clipped:
            print(f"  warning: {result.input_clipped} input values saturated the fixed-point "
                  "range; recompile with a larger --input-max", file=sys.stderr)
    if y is not None:
        print(f"  accuracy: {float(np.mean(np.asarray(out).argmax(1) == y)):.4f}")


def open_samples(path) -> tuple[np.ndarray, np.ndarray | None]:
    """The samples of ``--input``: an ``.npy`` memory-mapped (never read whole into memory),
    anything else through :func:`mtdeploy.io.load_samples`."""
    path = Path(path)
    if path.suffix != ".npy" or not path.is_file():
        return load_samples(path)
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return load_samples(path)        # its message says what is wrong with the file
    if not isinstance(x, np.ndarray) or x.ndim < 1 or x.dtype.kind not in "biuf":
        raise InputError(f"{path}: expected a numeric array (N, *input_shape), got "
                         f"{getattr(x, 'dtype', type(x))}")
    return x, None


@contextlib.contextmanager
def _npy_output(path, shape: tuple[int, ...]):
    """A float64 ``.npy`` memory map being filled under a temp name beside ``path``, renamed
    into place only if the block succeeds (None without a path)."""
    if path is None:
        yield None
        return
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=shape)
        yield out
        out.flush()


class _Progress:
    """A progress bar on a terminal, else a one-line status on ``stream`` every
    STATUS_EVERY_S seconds (and a last one), so logs of long runs show that they move."""

    def __init__(self, stream):
        self.stream, self.bar = stream, None
        self.tty = stream.isatty()
        self.t0 = self.last = time.monotonic()
        self.done = self.total = 0

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="simulate", unit="sample", leave=False,
                                file=self.stream)
            self.bar.update(done - self.bar.n)
        elif time.monotonic() - self.last >= STATUS_EVERY_S:
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        rate = self.done / max(self.last - self.t0, 1e-9)
        print(f"simulate: {self.done}/{self.total} samples ({rate:.0f}/s)", file=self.stream,
              flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.total and self.last != self.t0:
            self._line()
