"""Simulation speed, memory and scale-out of the reference simulator (issue 15's evidence).

Speed, per network (issue 15's 3-conv + 2-linear QCFS CNN on 1x28x28, QCFS ResNet-20 at CIFAR
shape, the digits CNN on 1x8x8; uniform T = levels = 8, random uniform [0, 1) inputs), every
row timed in the same process, the rows interleaved within each repetition, the minimum over
the repetitions kept:

* ANN x1: the torch QCFS model (float32, BatchNorm folded, no_grad), one forward per sample;
  ANN x T is T times that minimum (the cost of stepping the ANN once per time step); the
  ratios are to the float32 ANN, and a float64 ANN row is there for mtdeploy's float64 mode;
* mtdeploy avg-repeat float (float32 and float64), fixed point, and the streaming alignments
  ``ttm`` and ``none`` (float32): ``mtdeploy.sim.reference.simulate`` as ``mtdeploy simulate``
  calls it (SynOps and spike totals recorded, per-sample counts not kept);
* SpikingJelly (when installed: ``pip install .[bench]``): the same layers, every QCFS replaced
  by a multi-step ``IFNode(v_reset=None)`` (threshold = the QCFS clip value), the stateless
  layers run on all T x N rows at once (what ``SeqToANNContainer`` does), input repeated T times.

Then: peak RSS of ``mtdeploy simulate`` (a fresh process per size) on 1,000 / 10,000 / 100,000
random digits samples; two-process data-parallel simulate (``--workers 2``) against one process,
compared exactly; Lava's CPU simulator on the digits build, per-sample time with and without
pipelining, each compared bit for bit with the reference's fixed point.

    .venv/bin/python benchmarks/bench_simulation.py [--samples 2000] [--repeat 3] [--threads 2]
        [--nets cnn28,resnet20,digits] [--memory-samples 1000,10000,100000] [--lava-samples 16]
        [--skip memory,parallel,lava]

Prints the tables and writes benchmarks/results/simulation.json (the machine's load average is
recorded: the figures are wall clock on a shared machine).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from architectures import calibrate, cnn28, randomize_bn, resnet20  # noqa: E402
from mtdeploy.frontends import import_torch  # noqa: E402
from mtdeploy.nn import QCFS  # noqa: E402
from mtdeploy.passes import ConvertOptions, convert, quantize  # noqa: E402
from mtdeploy.sim.parallel import simulate_workers  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402

T = 8
ANN = "ANN x1 (torch float32)"
SJ = "SpikingJelly multi-step IF (float32)"


def digits_cnn(levels: int = T) -> nn.Module:
    """The digits example's CNN (examples/digits/train.py), every layer at ``levels``."""
    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples/digits/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model([levels] * 4)


NETS = {"cnn28": (lambda: cnn28(T), (1, 28, 28)),
        "resnet20": (lambda: resnet20(T), (3, 32, 32)),
        "digits": (digits_cnn, (1, 8, 8))}


# ---- the networks ---------------------------------------------------------------------------
def prepared(name: str, n: int, seed: int = 0):
    """(torch model with random weights, calibrated thresholds, eval mode; inputs (n, *shape))."""
    torch.manual_seed(seed)
    make, shape = NETS[name]
    model = randomize_bn(make(), seed)
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed + 1))
    calibrate(model, x[:256])
    return model.eval(), x


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy with every Conv2d-BatchNorm2d pair of a Sequential fused (what a user deploying
    the ANN would run, and what mtdeploy's graph holds)."""
    model = copy.deepcopy(model)
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return model


def snn_graph(model: nn.Module, shape, alignment: str):
    return quantize(convert(import_torch(model, shape), ConvertOptions(alignment=alignment,
                                                                        input_max=1.0)))


class MultiStepIF(nn.Module):
    """SpikingJelly's multi-step IF neuron on (T*N, ...) rows: the layers around it run on all
    T x N rows at once, as ``SeqToANNContainer`` runs them."""

    def __init__(self, steps: int, threshold: float):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.steps = steps
        self.node = neuron.IFNode(v_threshold=threshold, v_reset=None, step_mode="m")

    def forward(self, x):
        return self.node(x.reshape(self.steps, -1, *x.shape[1:])).flatten(0, 1)


def spikingjelly_net(ann: nn.Module, steps: int) -> nn.Module | None:
    try:
        import spikingjelly  # noqa: F401
    except ImportError:
        return None
    net = copy.deepcopy(ann)
    for parent in list(net.modules()):
        for key, child in list(parent.named_children()):
            if isinstance(child, QCFS):
                setattr(parent, key, MultiStepIF(steps, float(child.threshold)))
    return net.eval()


def run_spikingjelly(net: nn.Module, x: torch.Tensor, steps: int, batch: int) -> torch.Tensor:
    from spikingjelly.activation_based import functional

    outs = []
    for s in range(0, len(x), batch):
        xb = x[s:s + batch]
        y = net(xb.unsqueeze(0).expand(steps, *xb.shape).reshape(-1, *xb.shape[1:]))
        outs.append(y.reshape(steps, len(xb), -1).mean(0))
        functional.reset_net(net)
    return torch.cat(outs)


def run_ann(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[s:s + batch]) for s in range(0, len(x), batch)])


# ---- speed --------------------------------------------------------------------------------
def speed_rows(name: str, n: int, batch: int):
    """{row: (callable, note)} for one network, all on the same inputs and batch size."""
    model, x = prepared(name, n)
    shape = NETS[name][1]
    ann = fold_bn(model)
    xn = x.numpy().astype(np.float64)
    graphs = {a: snn_graph(model, shape, a) for a in ("avg-repeat", "ttm", "none")}

    def sim(alignment, mode, precision="float64"):
        return lambda: simulate(graphs[alignment], xn, mode, batch_size=batch,
                                keep_counts=False, precision=precision)

    ann64 = copy.deepcopy(ann).double()
    x64 = x.double()
    rows = {ANN: lambda: run_ann(ann, x, batch),
            "ANN x1 (torch float64)": lambda: run_ann(ann64, x64, batch),
            "mtdeploy avg-repeat float32": sim("avg-repeat", "float", "float32"),
            "mtdeploy avg-repeat float64": sim("avg-repeat", "float"),
            "mtdeploy avg-repeat fixed point": sim("avg-repeat", "fixed"),
            "mtdeploy streaming ttm float32": sim("ttm", "float", "float32"),
            "mtdeploy streaming none float32": sim("none", "float", "float32"),
            "mtdeploy streaming ttm fixed point": sim("ttm", "fixed")}
    sj = spikingjelly_net(ann, T)
    if sj is not None:
        rows[SJ] = lambda: run_spikingjelly(sj, x, T, batch)
    return rows


def time_rows(rows: dict, repeat: int) -> dict[str, dict[str, float]]:
    """Minimum wall time and minimum CPU time (this process, all its threads) of each row over
    ``repeat`` rounds, the rows interleaved in each round. On a machine shared with other work
    the CPU time is the steadier measure: waiting for a core does not count."""
    best: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for _ in range(repeat):
            for key, fn in rows.items():
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                w, c = time.perf_counter() - w0, time.process_time() - c0
                b = best.setdefault(key, {"wall_s": w, "cpu_s": c})
                b["wall_s"], b["cpu_s"] = min(b["wall_s"], w), min(b["cpu_s"], c)
    return best


def speed(name: str, n: int, batch: int, repeat: int) -> dict:
    times = time_rows(speed_rows(name, n, batch), repeat)
    ann = times[ANN]
    table = [{"row": ANN, **ann},
             {"row": f"ANN x T (T = {T} times the row above)",
              **{k: v * T for k, v in ann.items()}}]
    table += [{"row": k, **v} for k, v in times.items() if k != ANN]
    for r in table:
        for m in ("wall_s", "cpu_s"):
            r[f"{m[:-2]}_over_ann"] = r[m] / ann[m]
            r[f"{m[:-2]}_over_spikingjelly"] = r[m] / times[SJ][m] if SJ in times else None
    return {"network": name, "samples": n, "batch_size": batch, "T": T, "repeat": repeat,
            "load_average": os.getloadavg(), "rows": table}


def print_speed(result: dict) -> None:
    print(f"\n{result['network']}: {result['samples']} samples, batch {result['batch_size']}, "
          f"T = {result['T']}, min of {result['repeat']}; load average after "
          f"{tuple(round(v, 1) for v in result['load_average'])} on {os.cpu_count()} CPUs")
    print(f"{'simulator':<40} {'wall s':>7} {'/ ANN':>6} {'/ SJ':>5}   {'CPU s':>7} {'/ ANN':>6} "
          f"{'/ SJ':>5}")
    for r in result["rows"]:
        def sj(v):
            return "-" if v is None else f"{v:.2f}"
        print(f"{r['row']:<40} {r['wall_s']:>7.2f} {r['wall_over_ann']:>6.2f} "
              f"{sj(r['wall_over_spikingjelly']):>5}   {r['cpu_s']:>7.2f} {r['cpu_over_ann']:>6.2f} "
              f"{sj(r['cpu_over_spikingjelly']):>5}")


# ---- the digits build: memory, Lava ---------------------------------------------------------
def digits_build(work: Path) -> Path:
    """The digits example trained (10 epochs, default mixed levels 8,4,2,4) and compiled."""
    build = work / "build"
    if (build / ".mtdeploy-build").exists():
        return build
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out-dir",
                    str(work), "--epochs", "10"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "mtdeploy", "compile", str(work / "model.pt"),
                    "--target", "loihi2", "-o", str(build)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return build


#: runs ``mtdeploy simulate`` and prints this process's peak resident memory (VmHWM) on exit.
#: Read inside the child: a child forked from this (large) benchmark process would report the
#: parent's resident pages in ``ru_maxrss`` (Linux keeps the pre-exec high-water mark there).
_PEAK_MAIN = ("import sys, atexit; from mtdeploy.cli import main; "
              "atexit.register(lambda: print('VmHWM', next(l.split()[1] for l in "
              "open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)); "
              "sys.exit(main(sys.argv[1:]))")


def peak_rss(args: list[str], threads: int) -> tuple[float, float, int]:
    """(peak RSS in MiB, wall seconds, exit code) of ``mtdeploy ARGS`` run as a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK_MAIN, *args], env=env, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kib = [int(l.split()[1]) for l in proc.stderr.splitlines() if l.startswith("VmHWM")]
    return (kib[-1] / 1024 if kib else float("nan")), time.perf_counter() - t0, proc.returncode


def memory(build: Path, sizes: list[int], threads: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="mtdeploy-bench-") as tmp:
        for n in sizes:
            x = np.random.default_rng(n).uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)
            np.save(Path(tmp) / "x.npy", x)
            del x
            out = Path(tmp) / "out.npy"
            for fixed in (False, True):
                cmd = ["simulate", str(build), "--input", str(Path(tmp) / "x.npy"), "-o",
                       str(out)] + (["--fixed-point"] * fixed)
                mib, wall, code = peak_rss(cmd, threads)
                ok = code == 0 and np.load(out, mmap_mode="r").shape[0] == n
                rows.append({"samples": n, "mode": "fixed" if fixed else "float",
                             "peak_rss_mib": round(mib, 1), "wall_s": round(wall, 2), "ok": ok})
                print(f"  simulate {n:>7} samples {rows[-1]['mode']:<5}: peak RSS {mib:7.1f} MiB, "
                      f"{wall:6.1f} s, {'ok' if ok else 'FAILED'}", flush=True)
    return rows


def lava_pipelining(build: Path, n: int) -> dict:
    from mtdeploy.api import load_build
    from mtdeploy.targets.loihi2.lava import lower_to_lava
    from mtdeploy.targets.loihi2.lava.network import child_pids

    graph = load_build(build)
    data = np.load(build.parent / "digits_test.npz")
    x = data["x"][:n].astype(np.float64)
    ref = simulate(graph, x, "fixed")
    result = {"samples": n}
    for pipeline in (False, True):
        net = lower_to_lava(graph, True, x, record_counts=True, pipeline=pipeline)
        with net:
            out = net.run(timeout_s=1800)
        desc, timing = net.describe(), net.timings
        exact = bool(np.array_equal(out, ref.output)) and all(
            np.array_equal(c, ref.counts[p]) for p, c in net.counts.items())
        result["pipelined" if pipeline else "sequential"] = {
            "steps_per_sample": desc["steps_per_sample"], "sample_interval": desc["sample_interval"],
            "total_steps": desc["total_steps"], "processes": desc["process_count"],
            "run_s": timing["run_s"], "run_s_per_sample": timing["run_s"] / n,
            "bit_exact_with_reference": exact}
    seq, pipe = result["sequential"], result["pipelined"]
    result["speedup"] = seq["run_s"] / pipe["run_s"]
    result["step_ratio"] = seq["total_steps"] / pipe["total_steps"]
    result["leftover_processes"] = sorted(child_pids())
    return result


# ---- data-parallel ----------------------------------------------------------------------------
def data_parallel(n: int, batch: int) -> list[dict]:
    model, x = prepared("cnn28", n, seed=5)
    rows = []
    for alignment, mode in (("avg-repeat", "float"), ("ttm", "fixed")):
        graph = snn_graph(model, (1, 28, 28), alignment)
        xn = x.numpy().astype(np.float64)
        t0 = time.perf_counter()
        one = simulate(graph, xn, mode, batch_size=batch)
        t1 = time.perf_counter()
        two = simulate_workers(graph, xn, 2, mode, batch_size=batch)
        t2 = time.perf_counter()
        same = (np.array_equal(one.output, two.output) and one.synops == two.synops
                and one.spikes == two.spikes and set(one.counts) == set(two.counts)
                and all(np.array_equal(one.counts[k], two.counts[k]) for k in one.counts))
        rows.append({"network": "cnn28", "alignment": alignment, "mode": mode, "samples": n,
                     "batch_size": batch, "one_process_s": t1 - t0, "two_processes_s": t2 - t1,
                     "identical": bool(same)})
    return rows


# ---- main -------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default="cnn28=2000,resnet20=200,digits=2000",
                    help="samples per network, name=N,...")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", default="cnn28,resnet20,digits")
    ap.add_argument("--memory-samples", default="1000,10000,100000")
    ap.add_argument("--lava-samples", type=int, default=16)
    ap.add_argument("--parallel-samples", type=int, default=400)
    ap.add_argument("--skip", default="", help="sections to skip: memory,parallel,lava")
    ap.add_argument("--work", default=str(ROOT / "build/bench-simulation"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/simulation.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = dict((k, int(v)) for k, v in (p.split("=") for p in args.samples.split(",")))
    skip = set(filter(None, args.skip.split(",")))
    doc = {"benchmark": "simulation", "threads": args.threads,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "torch": torch.__version__, "load_average_start": os.getloadavg()},
           "speed": [], "memory": None, "parallel": None, "lava": None}
    for name in filter(None, args.nets.split(",")):
        doc["speed"].append(speed(name, samples.get(name, 2000), args.batch_size, args.repeat))
        print_speed(doc["speed"][-1])
    build = None if {"memory", "lava"} <= skip else digits_build(Path(args.work))
    if "memory" not in skip:
        print("\npeak memory of `mtdeploy simulate` on the digits build (random inputs):")
        doc["memory"] = memory(build, [int(v) for v in args.memory_samples.split(",")],
                               args.threads)
    if "parallel" not in skip:
        doc["parallel"] = data_parallel(args.parallel_samples, args.batch_size // 4)
        print("\ndata-parallel simulate, 2 processes (gloo) vs 1:")
        for r in doc["parallel"]:
            print(f"  cnn28 {r['alignment']:<10} {r['mode']:<5} {r['samples']} samples: 1 process "
                  f"{r['one_process_s']:.1f} s, 2 processes {r['two_processes_s']:.1f} s, "
                  f"identical: {r['identical']}")
    if "lava" not in skip:
        doc["lava"] = lava = lava_pipelining(build, args.lava_samples)
        print(f"\nLava CPU simulation of the digits build, {lava['samples']} samples (fixed_pt):")
        for key in ("sequential", "pipelined"):
            r = lava[key]
            print(f"  {key:<10}: a sample every {r['sample_interval']:>3} steps "
                  f"({r['steps_per_sample']} per sample), {r['total_steps']} steps, "
                  f"{r['run_s']:.2f} s run = {1e3 * r['run_s_per_sample']:.0f} ms/sample, "
                  f"bit-exact with the reference: {r['bit_exact_with_reference']}")
        print(f"  pipelining speed-up {lava['speedup']:.2f}x (steps {lava['step_ratio']:.2f}x)")
    doc["machine"]["load_average_end"] = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) at start {doc['machine']['load_average_start']}, "
          f"at end {doc['machine']['load_average_end']} on {os.cpu_count()} CPUs")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
