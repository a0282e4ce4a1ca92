"""Data-parallel simulation over processes with ``torch.distributed`` (gloo).

Every rank builds the same plan and batch size, so the batches are exactly those of a
single-process run; rank r runs batches r, r + W, ... and rank 0 gathers each round's
results in input order. The outputs are therefore identical to one process's, bit for bit.

Two ways in: :func:`simulate_workers` starts W - 1 processes on this machine and takes part
as rank 0 (``mtdeploy simulate --workers W``); :func:`simulate_distributed` runs inside a
process group someone else started (``torchrun --nproc-per-node W -m mtdeploy simulate ...``).
"""
from __future__ import annotations

import math
import mmap
import os
import pickle
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph
from mtdeploy.sim.plan import DEFAULT_MEMORY_BUDGET
from mtdeploy.sim.reference import (BatchResult, Collector, Progress, SimResult, prepare,
                                    run_batches, spans)

TIMEOUT = timedelta(minutes=30)      # a rank that died leaves the others waiting this long


def in_process_group() -> bool:
    """Whether this process runs inside a torch.distributed group with other ranks (e.g. it
    was started by ``torchrun``): initialises the group from the environment if needed."""
    if not dist.is_available():
        return False
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return False
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return dist.get_world_size() > 1


def is_leader() -> bool:
    """Whether this process reports and writes results: rank 0, or the only process."""
    return not in_process_group() or dist.get_rank() == 0


def simulate_distributed(graph: Graph, x, mode: str = "float", seed: int | None = None, *,
                         batch_size: int | None = None, record: bool = True,
                         progress: Progress | None = None, device="cpu",
                         memory_budget: int = DEFAULT_MEMORY_BUDGET, keep_counts: bool = True,
                         out=None, precision: str = "float64") -> SimResult | None:
    """This rank's share of :func:`mtdeploy.sim.reference.simulate`; rank 0 returns the whole
    SimResult (outputs into ``out`` if given), the other ranks None."""
    rank, world = dist.get_rank(), dist.get_world_size()
    run = prepare(graph, x, mode, seed, record, device, precision, memory_budget, batch_size)
    collect = Collector(graph, run.n, out, keep_counts and record) if rank == 0 else None
    mine = run_batches(run.plan, run.x, spans(run.n, run.batch_size, rank, world), run.seed,
                       record)
    done = 0
    for _ in range(math.ceil(math.ceil(run.n / run.batch_size) / world)):
        b = next(mine, None)
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(None if b is None else _on_cpu(b), gathered, dst=0)
        if collect is not None:
            for part in filter(None, gathered):
                collect.add(part)
                done += part.output.shape[0]
            if progress is not None:
                progress(done, run.n)
    if collect is None:
        return None
    collect.result.batch_size = run.batch_size
    return collect.result


def _on_cpu(b: BatchResult) -> BatchResult:
    return BatchResult(b.start, b.output.cpu(), {k: v.cpu() for k, v in b.counts.items()},
                       b.synops, b.spikes, b.clipped)


def simulate_workers(graph: Graph, x, workers: int, mode: str = "float",
                     seed: int | None = None, **options) -> SimResult:
    """:func:`simulate_distributed` on ``workers`` processes of this machine: this process is
    rank 0, the others are fresh interpreters running :func:`_rank_main` (nothing of the
    caller's script or multiprocessing state is re-run or changed), gloo with a rendezvous
    file, the CPU cores shared out."""
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    if dist.is_available() and dist.is_initialized():
        raise InputError("workers: this process already belongs to a torch.distributed group; "
                         "run one process per rank instead (torchrun)")
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="mtdeploy-ranks-") as tmp:
        job = Path(tmp) / "job.pkl"
        init = f"file://{Path(tmp) / 'rendezvous'}"
        # rank 0 reports progress and fills ``out``; the others only send their batches
        theirs = {k: v for k, v in options.items() if k not in ("progress", "out")}
        with open(job, "wb") as fh:
            pickle.dump({"graph": graph, "x": _shareable(x), "mode": mode, "seed": seed,
                         "options": theirs, "init": init, "world": workers}, fh)
        others = [subprocess.Popen([sys.executable, "-c", _RANK_MAIN, str(job), str(rank)],
                                   stdout=subprocess.DEVNULL) for rank in range(1, workers)]
        try:
            _wait_ready(others, Path(tmp))
            torch.set_num_threads(max(1, threads // workers))
            dist.init_process_group("gloo", init_method=init, rank=0, world_size=workers,
                                    timeout=TIMEOUT)
            result = simulate_distributed(graph, x, mode, seed, **options)
            dist.barrier()      # every rank done before the group goes away
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            torch.set_num_threads(threads)
            _reap(others)
    return result


#: a rank's program: this very mtdeploy (its directory first on sys.path), then _rank_main
_RANK_MAIN = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
              "from mtdeploy.sim.parallel import _rank_main; "
              "_rank_main(sys.argv[1], int(sys.argv[2]))")


def _wait_ready(children: list[subprocess.Popen], folder: Path) -> None:
    """Until every other rank has loaded its job (``ready.<rank>`` beside it); a rank that
    exits before that fails the run now, not after the rendezvous timeout."""
    while True:
        for rank, child in enumerate(children, start=1):
            if child.poll() is not None:
                raise RuntimeError(f"simulation rank {rank} exited with code {child.returncode} "
                                   "before joining (its error is above)")
        if all((folder / f"ready.{rank}").exists() for rank in range(1, len(children) + 1)):
            return
        time.sleep(0.05)


def _reap(children: list[subprocess.Popen]) -> None:
    """Wait for the other ranks; any still running after rank 0 is done or failed is killed."""
    for child in children:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _rank_main(job: str, rank: int) -> None:
    """Rank ``rank`` (1 .. world - 1) of :func:`simulate_workers`: its batches, sent to rank 0."""
    with open(job, "rb") as fh:
        spec = pickle.load(fh)
    world = spec["world"]
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    x = _opened(spec["x"])
    (Path(job).parent / f"ready.{rank}").touch()
    dist.init_process_group("gloo", init_method=spec["init"], rank=rank, world_size=world,
                            timeout=TIMEOUT)
    try:
        simulate_distributed(spec["graph"], x, spec["mode"], spec["seed"], **spec["options"])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _shareable(x):
    """What a spawned rank needs to read ``x``: a memory map's file, not its bytes."""
    whole = isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap)   # not a slice of one
    if whole and x.filename and x.flags.c_contiguous:
        return ("memmap", str(x.filename), x.dtype.str, tuple(x.shape), int(x.offset))
    return x


def _opened(source):
    if isinstance(source, tuple) and source and source[0] == "memmap":
        _, filename, dtype, shape, offset = source
        return np.memmap(filename, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset)
    return source
