"""Digits: QCFS ANN vs its MT-SNN conversions (avg-repeat, TTM, TPP) vs uniform-T QCFS.

Prints a table (accuracy, mean T, sum T, SynOps per sample, sequential latency) and writes
benchmarks/results/conversion_digits.json. Also times the reference simulator against ANN
forward passes (the simulator should cost about T ANN passes, not a Python loop per sample).

    .venv/bin/python benchmarks/bench_conversion_digits.py [--epochs 30]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtdeploy.api import load_model  # noqa: E402
from mtdeploy.passes import ConvertOptions, convert, quantize, schedule  # noqa: E402
from mtdeploy.sim.ann import ann_forward  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402


def _train_example(out_dir: Path, levels: str, epochs: int | None) -> Path:
    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples/digits/train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    if not (out_dir / "model.pt").is_file():
        argv = ["--out-dir", str(out_dir), "--levels", levels]
        if epochs:
            argv += ["--epochs", str(epochs)]
        train.main(argv)
    return out_dir


def _row(name, graph_or_none, acc, sched=None, synops=None, note=""):
    lat = sched["latency"] if sched else {}
    return {"model": name, "accuracy": round(float(acc), 4),
            "mean_T": round(lat["mean_T"], 3) if lat else None, "sum_T": lat.get("sum_T"),
            "synops_per_sample": None if synops is None else round(float(synops), 1),
            "sequential_steps": lat.get("sequential_steps"), "note": note}


def evaluate(model_dir: Path, label: str, x, y, rows: list, timesteps=None):
    graph = load_model(model_dir / "model.pt", input_shape=(1, 8, 8))
    ann = ann_forward(graph, x).numpy()
    levels = [n.attrs["levels"] for n in graph.of_kind("qcfs")]
    rows.append(_row(f"{label} QCFS ANN (levels {levels})", None, (ann.argmax(1) == y).mean(),
                     note="reference"))
    configs = [("avg-repeat", "if"), ("ttm", "if"), ("avg-repeat", "tpp")]
    if timesteps is not None:
        configs = [("avg-repeat", "if")]
    for alignment, neuron in configs:
        snn = convert(graph, ConvertOptions(alignment=alignment, neuron=neuron, timesteps=timesteps))
        quantize(snn)
        sched = schedule(snn)
        for mode in ("float", "fixed"):
            res = simulate(snn, x, mode=mode)
            acc = (res.output.argmax(1) == y).mean()
            agree = (res.output.argmax(1) == ann.argmax(1)).mean()
            name = f"{label} MT-SNN {alignment}/{neuron} {mode}"
            if timesteps is not None:
                name += f" (T={timesteps} all layers)"
            rows.append(_row(name, snn, acc, sched, res.total_synops / len(x),
                             note=f"argmax agreement with ANN {agree:.4f}"))
    return graph


def time_simulator(graph, x, repeats=3):
    snn = quantize(convert(graph))
    mean_t = schedule(snn)["latency"]["mean_T"]
    xt = torch.as_tensor(x)

    def best(fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    t_ann = best(lambda: ann_forward(graph, xt))
    t_float = best(lambda: simulate(snn, x, mode="float", record=False))
    t_fixed = best(lambda: simulate(snn, x, mode="fixed", record=False))
    return {"samples": len(x), "ann_forward_s": t_ann, "sim_float_s": t_float,
            "sim_fixed_s": t_fixed, "mean_T": mean_t,
            "sim_float_over_ann_x_meanT": t_float / (t_ann * mean_t),
            "sim_fixed_over_ann_x_meanT": t_fixed / (t_ann * mean_t)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--work", default=str(ROOT / "build/bench-digits"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/conversion_digits.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(args.work)
    mixed_levels = "8,4,2,4"
    mixed = _train_example(work / "mixed", mixed_levels, args.epochs)
    data = np.load(mixed / "digits_test.npz")
    x, y = data["x"].astype(np.float64), data["y"]
    rows: list[dict] = []
    graph = evaluate(mixed, "mixed", x, y, rows)
    mean_t = float(np.mean([int(v) for v in mixed_levels.split(",")]))
    uniform_t = 2 ** round(math.log2(mean_t))
    uniform = _train_example(work / f"uniform{uniform_t}", ",".join([str(uniform_t)] * 4), args.epochs)
    evaluate(uniform, f"uniform-T{uniform_t}", x, y, rows)
    evaluate(mixed, "mixed", x, y, rows, timesteps=uniform_t)
    timing = time_simulator(graph, x)

    w = max(len(r["model"]) for r in rows)
    print(f"{'model':<{w}}  {'acc':>6}  {'meanT':>5}  {'sumT':>4}  {'SynOps/sample':>13}  {'latency':>7}  note")
    for r in rows:
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(f"{r['model']:<{w}}  {r['accuracy']:>6.4f}  {f(r['mean_T'], '>5.2f')}  "
              f"{f(r['sum_T'], '>4')}  {f(r['synops_per_sample'], '>13.1f')}  "
              f"{f(r['sequential_steps'], '>7')}  {r['note']}")
    print(f"\nreference simulator on {timing['samples']} test samples: ANN forward "
          f"{timing['ann_forward_s'] * 1e3:.1f} ms, SNN float {timing['sim_float_s'] * 1e3:.1f} ms, "
          f"fixed {timing['sim_fixed_s'] * 1e3:.1f} ms = {timing['sim_float_over_ann_x_meanT']:.2f}x / "
          f"{timing['sim_fixed_over_ann_x_meanT']:.2f}x (ANN time x mean T {timing['mean_T']:.2f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "timing": timing}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
