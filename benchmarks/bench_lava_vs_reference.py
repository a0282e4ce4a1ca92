"""Lava CPU simulation vs the reference simulator: time per sample on the same build and inputs.

For each small synthetic MT-SNN (MLP, CNN, residual; avg-repeat and TTM) this quantizes the
graph once, runs the same N samples through the reference simulator's fixed-point mode and
through Lava's Loihi2SimCfg (fixed_pt), checks that the outputs are bit-identical, and reports
seconds per sample for both and their ratio. Lava's time is split into building the process
graph, compiling and forking its processes, the run itself, and stopping: the run is what grows
with N, the rest is paid once per build.

    .venv/bin/python benchmarks/bench_lava_vs_reference.py [--samples 32] [--repeat 3]

Writes benchmarks/results/lava_vs_reference.json. Timings are wall clock on this machine
(``os.cpu_count()`` is recorded); every Lava process is an OS process, so the Lava side
depends heavily on the core count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtdeploy.passes import ConvertOptions, convert, quantize  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402
from mtdeploy.targets.loihi2.lava.network import child_pids, lower_to_lava  # noqa: E402
from mtdeploy.testing import random_cnn, random_mlp, random_residual  # noqa: E402

CASES = {
    "mlp 64-128-64-10": lambda rng: random_mlp(rng, n_in=64, hidden=(128, 64), classes=10,
                                               levels=(4, 8)),
    "cnn 1x8x8 c4-c8": lambda rng: random_cnn(rng, size=8, channels=(4, 8), classes=10,
                                              levels=(8, 4)),
    "residual 1x8x8 c4": lambda rng: random_residual(rng, size=8, channels=4, classes=10,
                                                     levels=(8, 4, 4)),
}


def _best(times: list[float]) -> float:
    return float(min(times))


def bench_case(name: str, alignment: str, n: int, repeat: int) -> dict:
    rng = np.random.default_rng(0)
    graph = quantize(convert(CASES[name](rng), ConvertOptions(alignment=alignment,
                                                              input_max=2.0)))
    x = rng.uniform(-0.5, 1.5, (n, *graph.input.shape))

    simulate(graph, x[:1], mode="fixed", record=False)          # warm-up (torch kernels)
    ref_times, ref = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        ref = simulate(graph, x, mode="fixed", record=False)
        ref_times.append(time.perf_counter() - t)

    lava_runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        net = lower_to_lava(graph, True, x)
        build_s = time.perf_counter() - t
        with net:
            out = net.run(timeout_s=1800)
        lava_runs.append({"build_s": build_s, **net.timings})
    best = min(lava_runs, key=lambda r: r["run_s"])
    desc = net.describe()
    ref_ps = _best(ref_times) / n
    run_ps = best["run_s"] / n
    total_ps = (best["build_s"] + best["compile_and_start_s"] + best["run_s"] + best["read_s"]
                + best["stop_s"]) / n
    return {
        "model": name, "alignment": alignment, "samples": n,
        "processes": desc["process_count"], "steps_per_sample": desc["steps_per_sample"],
        "bit_exact": bool(np.array_equal(out, ref.output)),
        "reference_s_per_sample": ref_ps,
        "lava_run_s_per_sample": run_ps,
        "lava_total_s_per_sample": total_ps,
        "lava_steps_per_s": best["steps"] / best["run_s"],
        "lava_once_per_build_s": {k: round(best[k], 4) for k in
                                  ("build_s", "compile_and_start_s", "read_s", "stop_s")},
        "ratio_run": run_ps / ref_ps,
        "ratio_total": total_ps / ref_ps,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="runs per side; the fastest counts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/lava_vs_reference.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)     # the reference on one core; Lava forks one process per node

    rows = []
    for name in CASES:
        for alignment in ("avg-repeat", "ttm"):
            rows.append(bench_case(name, alignment, args.samples, args.repeat))
            r = rows[-1]
            print(f"  {name:<20} {alignment:<10} done: ratio {r['ratio_run']:.0f}x", flush=True)
    leftover = sorted(child_pids())

    head = (f"{'model':<20} {'align':<10} {'procs':>5} {'steps':>5} {'exact':>5} "
            f"{'ref ms/smp':>10} {'lava ms/smp':>11} {'ratio':>7} {'w/ build':>9} {'steps/s':>8}")
    print(head)
    for r in rows:
        print(f"{r['model']:<20} {r['alignment']:<10} {r['processes']:>5} "
              f"{r['steps_per_sample']:>5} {str(r['bit_exact']):>5} "
              f"{1e3 * r['reference_s_per_sample']:>10.3f} {1e3 * r['lava_run_s_per_sample']:>11.2f} "
              f"{r['ratio_run']:>6.0f}x {r['ratio_total']:>8.0f}x {r['lava_steps_per_s']:>8.0f}")
    print("ratio = Lava run time per sample / reference per sample (same build, same inputs); "
          "'w/ build' adds building, compiling, forking and stopping, spread over the samples")
    if leftover:
        print(f"warning: child processes left behind: {leftover}")

    doc = {"benchmark": "lava_vs_reference", "samples": args.samples, "repeat": args.repeat,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads()},
           "lava_version": net_version(), "leftover_child_processes": leftover, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    return 0 if all(r["bit_exact"] for r in rows) and not leftover else 1


def net_version() -> str:
    from importlib.metadata import version

    return version("lava-nc")


if __name__ == "__main__":
    sys.exit(main())
