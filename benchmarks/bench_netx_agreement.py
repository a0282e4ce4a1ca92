"""Agreement between stock lava-dl netx running mtdeploy's .net file and mtdeploy's reference.

    .venv/bin/python benchmarks/bench_netx_agreement.py [--samples N] [--levels 8,4,2,4]

On the digits example (examples/digits; trained here if model.pt is missing) it converts and
quantizes the model, writes network.net, loads it with stock ``netx.hdf5.Network`` on Lava's
CPU simulator (Loihi2SimCfg, fixed_pt) and compares its readout with mtdeploy's reference
fixed-point output: argmax agreement and accuracy, for the model as trained (T = levels: the
stock file is the streaming approximation) and with every T = 1 (the exactly reproduced
subset). Prints a table and writes benchmarks/results/netx_agreement.json.

``run_stock_netx`` is the one place that runs a .net file in stock netx; the NetX tests use it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DIGITS = ROOT / "examples" / "digits"
RESULTS = ROOT / "benchmarks" / "results" / "netx_agreement.json"


def run_stock_netx(path, x_int: np.ndarray, reset_interval: int, input_message_bits: int = 8,
                   input_layout: str = "flat-chw", reset_offset: int = 1,
                   spikes: bool = False) -> dict:
    """Run a .net file in stock netx, one sample per window of ``reset_interval`` steps.

    ``x_int``: (N, *input_shape) integers, presented on every step of their window (graded
    spikes with ``input_message_bits`` > 0). Block k (1-based) sees input step t at step t + k
    and netx resets it at offsets ``reset_offset + k``, so with reset_offset=1 every block runs
    each sample's window from rest. Returns the last block's ``v`` at the end of each window
    (N, *out, Lava units) and, with ``spikes``, each block's spike counts per window
    {block index (0-based): (N, *shape in C,H,W)}.
    """
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io
    from lava.proc.monitor.process import Monitor

    x_int = np.asarray(x_int)
    n, r = x_int.shape[0], int(reset_interval)
    net = netx.hdf5.Network(net_config=str(path), input_message_bits=input_message_bits,
                            reset_interval=r, reset_offset=reset_offset)
    blocks = len(net.layers)
    total = n * r + blocks
    frames = np.stack([x.transpose(*reversed(range(x.ndim))) if input_layout == "xyz"
                       else x.reshape(-1) for x in x_int])            # (N, *lava_shape)
    if tuple(frames.shape[1:]) != tuple(net.inp.shape):
        raise ValueError(f"input {frames.shape[1:]} does not match netx's {net.inp.shape}")
    data = np.zeros((*net.inp.shape, total), np.int64)
    for i in range(n):
        data[..., i * r:(i + 1) * r] = frames[i][..., None]
    source = io.source.RingBuffer(data=data)
    source.s_out.connect(net.inp)
    v_mon = Monitor()
    v_mon.probe(net.layers[-1].neuron.v, total)
    s_mons = []
    if spikes:
        for layer in net.layers:
            mon = Monitor()
            mon.probe(layer.neuron.s_out, total)
            s_mons.append(mon)
    try:
        net.run(condition=RunSteps(num_steps=total), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        v = _monitored(v_mon)
        trains = [_monitored(m) for m in s_mons]
    finally:
        net.stop()
    ends = np.arange(1, n + 1) * r + blocks - 1                       # 0-based window ends
    out = {"v": np.stack([_chw(v[t]) for t in ends]), "steps": total}
    if spikes:
        out["counts"] = {}
        for k, train in enumerate(trains):
            starts = np.arange(n) * r + k + 1
            out["counts"][k] = np.stack([_chw(train[s:s + r].sum(0)) for s in starts])
    return out


def _monitored(monitor) -> np.ndarray:
    data = monitor.get_data()
    (per_var,) = data.values()
    (arr,) = per_var.values()
    return np.asarray(arr)


def _chw(a: np.ndarray) -> np.ndarray:
    """Lava's (x, y, z) layout back to (C, H, W); vectors unchanged."""
    return a.transpose(*reversed(range(a.ndim))) if a.ndim == 3 else a


# ---- the benchmark ---------------------------------------------------------------------------
def _digits(levels: str, epochs: int):
    """model.pt and the test split, training the example first if it is missing."""
    model, test = DIGITS / "model.pt", DIGITS / "digits_test.npz"
    if not (model.is_file() and test.is_file()):
        import importlib.util

        spec = importlib.util.spec_from_file_location("digits_train", DIGITS / "train.py")
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
        train.main(["--levels", levels, "--epochs", str(epochs)])
    data = np.load(test)
    return model, data["x"], data["y"]


def evaluate(graph, x: np.ndarray, y: np.ndarray, path: Path, label: str,
             multiples=(1,)) -> list[dict]:
    """Write ``graph`` to ``path``, run it in stock netx with windows of ``m`` x the
    recommended reset_interval for each m, and compare with the reference fixed-point output."""
    from mtdeploy.sim.reference import simulate
    from mtdeploy.frontends.netx import stock_run_settings
    from mtdeploy.targets.loihi2.netx.plan import readout_logits
    from mtdeploy.targets.loihi2.netx.writer import write_netx

    warnings = write_netx(graph, path)
    run = stock_run_settings(path)
    ref = simulate(graph, x, mode="fixed", record=False).output
    limit = 2 ** (run["input_message_bits"] - 1) - 1
    x_int = np.clip(np.round(x * 2.0 ** run["input_exp"]), -limit, limit)
    rows = []
    for m in (multiples if not run["exact"] else (1,)):
        window = run["reset_interval"] * m
        t0 = time.perf_counter()
        stock = run_stock_netx(path, x_int, window, run["input_message_bits"], run["input_layout"])
        seconds = time.perf_counter() - t0
        logits = readout_logits(stock["v"], run, window)
        ref_pred, stock_pred = ref.argmax(1), logits.argmax(1)
        rows.append({
            "config": label, "exact_subset": run["exact"], "reset_interval": window,
            "samples": int(len(x)), "lava_steps": stock["steps"], "lava_seconds": round(seconds, 1),
            "argmax_agreement": float((ref_pred == stock_pred).mean()),
            "reference_accuracy": float((ref_pred == y).mean()),
            "stock_netx_accuracy": float((stock_pred == y).mean()),
            "readout_equal": bool(np.array_equal(logits, ref)),
            "max_abs_logit_diff": float(np.abs(logits - ref).max()),
            "warnings": [str(w) for w in warnings],
        })
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=0, help="test samples (0: all)")
    parser.add_argument("--windows", default="1,2",
                        help="stock windows as multiples of the recommended reset_interval, for "
                             "the approximate (T = levels) file (default 1,2)")
    parser.add_argument("--levels", default="8,4,2,4", help="levels if the example is trained here")
    parser.add_argument("--epochs", type=int, default=30, help="epochs if trained here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    multiples = [int(m) for m in args.windows.split(",")]

    from mtdeploy.api import load_model
    from mtdeploy.passes import ConvertOptions, convert, quantize

    model, x, y = _digits(args.levels, args.epochs)
    if args.samples:
        x, y = x[:args.samples], y[:args.samples]
    ann = load_model(model, x.shape[1:])
    work = args.out.parent / "netx_agreement"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, timesteps in (("T = levels (streaming approximation)", None),
                             ("T = 1 everywhere (exact subset)", 1)):
        # per layer: stock netx has one vThMant per layer (semantics §3, per-channel units)
        graph = quantize(convert(ann, ConvertOptions(timesteps=timesteps)), per_channel=False)
        name = "levels" if timesteps is None else "t1"
        rows += evaluate(graph, x, y, work / f"digits_{name}.net", label, multiples)
    header = (f"{'configuration':<38} {'window':>6} {'N':>5} {'agree':>7} {'ref acc':>8} "
              f"{'netx acc':>9} {'equal':>6} {'lava s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['config']:<38} {r['reset_interval']:>6} {r['samples']:>5} "
              f"{r['argmax_agreement']:>7.4f} {r['reference_accuracy']:>8.4f} "
              f"{r['stock_netx_accuracy']:>9.4f} {str(r['readout_equal']):>6} {r['lava_seconds']:>7}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "netx_agreement", "model": str(model.relative_to(ROOT)),
           "command": " ".join([".venv/bin/python benchmarks/bench_netx_agreement.py",
                                *(sys.argv[1:] if argv is None else argv)]),
           "rows": rows}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
