"""lava-dl's own NetX files through mtdeploy, checked against stock netx step for step.

    .venv/bin/python benchmarks/bench_lavadl_files.py DIR [--steps 16] [--samples 2] [-o JSON]
    .venv/bin/python benchmarks/bench_lavadl_files.py --table [-o JSON]   # the table again

For every ``*.net`` in DIR (e.g. the tutorial networks in lava-dl's repository; they are not
shipped with mtdeploy): imported (``read_netx``), ``mtdeploy check``, ``mtdeploy compile``,
``mtdeploy simulate --fixed-point`` (reference) and ``--backend lava``, and a run of the file
in stock netx (``lava.lib.dl.netx.hdf5.Network`` on ``Loihi2SimCfg(select_tag="fixed_pt")``).
Agreement: every population's output (spikes, or graded sigma-delta payloads) at every step
of every sample, reference vs stock netx; and each population's per-sample totals, mtdeploy's
Lava backend vs stock netx. Prints a table and writes benchmarks/results/lavadl_files.json.

How stock netx is driven (:func:`run_stock`): an input block with a neuron gets the input on
its neuron's ``a_in`` (``Network.inp`` is left unconnected by netx; lava-dl's PilotNet SNN
tutorial connects its encoder the same way), otherwise ``Network.inp`` gets it. CUBA/LOIHI
networks run with ``reset_interval = steps`` (one sample per window, each block from rest);
netx ignores resets for SDNN networks, and a delay carries spikes across a window's end into
the next sample's, so with either each sample is a stock run of its own (mtdeploy's semantics:
every sample from rest, nothing delayed past its window; docs/netx.md §6).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtdeploy.cli import main as cli_main  # noqa: E402
from mtdeploy.frontends.netx import read_netx  # noqa: E402
from mtdeploy.kinds.neurons import ACT_SHIFT  # noqa: E402
from mtdeploy.ir.snn import is_readout, is_source, populations  # noqa: E402
from mtdeploy.sim.reference import population_steps  # noqa: E402
from mtdeploy.targets.loihi2.netx.schema import read_netx_layers  # noqa: E402


def stock_populations(graph) -> list[str]:
    """The populations stock netx builds a block for, in block order: not the input, nor the
    readout mtdeploy adds after a spiking output layer (named ``readout``; an output layer
    that is an accumulator is itself the readout, ``layer<i>.readout``)."""
    return [p.name for p in populations(graph) if not is_source(p) and p.name != "readout"]


def run_stock(path, x_int: np.ndarray, steps: int, input_layout: str,
              input_message_bits: int = 8) -> dict:
    """Stock netx's per-step output of every block: {block index: (N, steps, *C,H,W)}.

    ``x_int`` (N, *input_shape) integers, presented on every step of the sample's window.
    """
    layers, _ = read_netx_layers(path)
    input_neuron = layers[0]["type"] == "input" and "neuron" in layers[0]
    sdnn = any(layer.get("neuron", {}).get("type") == "SDNN" for layer in layers)
    # netx ignores resets for SDNN, and its delays carry spikes into the next sample's window:
    # then each sample is a run of its own
    delays = any(layer["type"] == "dense" and np.any(np.asarray(layer.get("delay", 0)))
                 for layer in layers)
    runs = [x_int[i:i + 1] for i in range(len(x_int))] if sdnn or delays else [x_int]
    trains: dict[int, list] = {}
    for chunk in runs:
        for k, t in _stock_run(path, chunk, steps, input_layout, input_message_bits,
                               input_neuron, reset=not sdnn).items():
            trains.setdefault(k, []).append(t)
    return {k: np.concatenate(v) for k, v in trains.items()}


def _stock_run(path, x_int, steps, input_layout, bits, input_neuron, reset) -> dict:
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io as lava_io
    from lava.proc.monitor.process import Monitor

    n, r = len(x_int), int(steps)
    # With an input neuron the source drives block 0 directly (no synapse hop): block k's
    # window of sample i starts at 0-based step i*r + k; through Network.inp one step later.
    base = 0 if input_neuron else 1
    options = {"reset_interval": r, "reset_offset": base} if reset else {}
    with contextlib.redirect_stderr(io.StringIO()):          # netx warns about SDNN resets
        net = netx.hdf5.Network(net_config=str(path), input_message_bits=bits, **options)
    blocks = len(net.layers)
    total = n * r + blocks + base
    frames = np.stack([x.transpose(*reversed(range(x.ndim))) if input_layout == "xyz"
                       else x.reshape(-1) for x in x_int])
    port = net.in_layer.neuron.a_in if input_neuron else net.inp
    data = np.zeros((*port.shape, total), np.int64)
    for i in range(n):
        data[..., i * r:(i + 1) * r] = frames[i].reshape(port.shape)[..., None]
    source = lava_io.source.RingBuffer(data=data)
    source.s_out.connect(port)
    monitors = []
    for layer in net.layers:
        mon = Monitor()
        mon.probe(layer.neuron.s_out, total)
        monitors.append(mon)
    last = net.layers[-1].neuron
    if hasattr(last, "v"):                 # a LIF output layer: its voltage is the readout
        monitors.append(Monitor())
        monitors[-1].probe(last.v, total)
    try:
        net.run(condition=RunSteps(num_steps=total), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        got = [_monitored(m) for m in monitors]
    finally:
        net.stop()
    out = {}
    for k, train in enumerate(got[:blocks]):
        starts = np.arange(n) * r + k + base
        out[k] = np.stack([np.stack([_chw(train[s + t]) for t in range(r)]) for s in starts])
    if len(got) > blocks:
        ends = np.arange(n) * r + blocks - 1 + base + r - 1
        out["v_end"] = np.stack([_chw(got[blocks][t]) for t in ends])
    return out


def _monitored(monitor) -> np.ndarray:
    (per_var,) = monitor.get_data().values()
    (arr,) = per_var.values()
    return np.asarray(arr)


def _chw(a: np.ndarray) -> np.ndarray:
    return a.transpose(*reversed(range(a.ndim))) if a.ndim == 3 else a


def sample_inputs(graph, layers: list[dict], n: int, seed: int = 0) -> np.ndarray:
    """Integer inputs as the file's first block takes them: spikes (0/1) into a synapse,
    graded values 0..127 into an input neuron."""
    rng = np.random.default_rng(seed)
    shape = (n, *graph.input.shape)
    if layers[0]["type"] == "input" and "neuron" in layers[0]:
        return rng.integers(0, 128, shape).astype(np.float64)
    return (rng.random(shape) < 0.3).astype(np.float64)


def compare(path, steps: int, n: int, lava: bool = True) -> dict:
    """One file's row (see the module docstring)."""
    row: dict = {"file": Path(path).name, "bytes": Path(path).stat().st_size,
                 "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]}
    try:
        layers, _ = read_netx_layers(path)
        row["layers"] = [layer.get("type") for layer in layers]
        row["neurons"] = sorted({str(layer["neuron"].get("type")) for layer in layers
                                 if isinstance(layer.get("neuron"), dict)})
        graph = read_netx(path, steps=steps)
        row["imported"] = True
    except Exception as exc:                            # a row per file, whatever happens
        return {**row, "imported": False, "error": _first_line(exc)}
    row["kinds"] = sorted({p.kind for p in populations(graph) if not is_source(p)})
    x = sample_inputs(graph, layers, n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", x)
        row["checked"] = _cli(row, "check", ["check", str(path)])
        row["compiled"] = _cli(row, "compile", ["compile", str(path), "-o", str(tmp / "b")])
        row["simulated"] = row["compiled"] and _cli(
            row, "simulate", ["simulate", str(tmp / "b"), "--input", str(tmp / "x.npy"),
                              "--fixed-point", "-o", str(tmp / "ref.npy")])
        if lava:
            t0 = time.perf_counter()
            row["simulated_lava"] = row["compiled"] and _cli(
                row, "simulate --backend lava",
                ["simulate", str(tmp / "b"), "--input", str(tmp / "x.npy"), "--fixed-point",
                 "--backend", "lava", "-o", str(tmp / "lava.npy")])
            row["lava_s"] = round(time.perf_counter() - t0, 1)
            if row["simulated"] and row["simulated_lava"]:
                row["lava_output_equal"] = bool(np.array_equal(np.load(tmp / "ref.npy"),
                                                               np.load(tmp / "lava.npy")))
    _agreement(row, path, graph, layers, x, steps, lava)
    return row


def _agreement(row: dict, path, graph, layers, x, steps: int, lava: bool) -> None:
    names = stock_populations(graph)
    layout = "xyz" if len(graph.input.shape) == 3 else "flat-chw"
    t0 = time.perf_counter()
    try:
        stock = run_stock(path, x, steps, layout)
    except Exception as exc:
        row.update(stock_ran=False, stock_error=_first_line(exc))
        return
    row.update(stock_ran=True, stock_s=round(time.perf_counter() - t0, 1))
    ref = population_steps(graph, x)
    v_end = stock.pop("v_end", None)
    if len(stock) != len(names):
        row["agree_reference"] = False
        row["agreement_note"] = f"{len(stock)} stock blocks, {len(names)} populations"
        return
    per_step = {}
    for k, name in enumerate(names):
        if is_readout(graph[name]):
            # an accumulator that cannot fire: no spikes, and v/64 = the summed current
            per_step[name] = not np.any(stock[k]) and v_end is not None and np.array_equal(
                v_end, ref[name][0] * steps * 2 ** ACT_SHIFT)
        else:
            per_step[name] = np.array_equal(np.moveaxis(ref[name], 0, 1), stock[k])
    row["agree_reference"] = all(per_step.values())
    row["compared_values"] = int(sum(stock[k].size for k in stock))
    row["stock_nonzero"] = int(sum(np.count_nonzero(stock[k]) for k in stock))
    row["disagreeing_populations"] = [n for n, ok in per_step.items() if not ok]
    if lava:
        from mtdeploy.targets.loihi2.lava import run_lava
        try:
            _, counts = run_lava(graph, x, fixed_point=True, record_counts=True)
            row["agree_lava"] = all(np.array_equal(counts[name], stock[k].sum(1))
                                    for k, name in enumerate(names) if name in counts) \
                and sum(name in counts for name in names) >= len(names) - 1
        except Exception as exc:
            row.update(agree_lava=False, lava_error=_first_line(exc))


def _cli(row: dict, what: str, argv: list[str]) -> bool:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    if code != 0:
        row.setdefault("errors", {})[what] = f"exit {code}: " + err.getvalue().strip()[:300]
    return code == 0


def _first_line(exc: Exception) -> str:
    """The error's type and its first two lines (a refusal's headline and first reason)."""
    lines = str(exc).strip().splitlines()[:2]
    return f"{type(exc).__name__}: {' '.join(line.strip() for line in lines)[:300]}"


def _mark(v) -> str:
    return {True: "yes", False: "NO", None: "-"}.get(v, str(v))


def print_table(rows: list[dict]) -> None:
    cols = ["file", "neurons", "imported", "checked", "compiled", "simulated", "simulated_lava",
            "stock_ran", "agree_reference", "agree_lava"]
    print("| " + " | ".join(cols + ["values compared (non-zero)"]) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for r in rows:
        cells = [r["file"], ",".join(r.get("neurons", [])) or "-"] + \
            [_mark(r.get(c)) for c in cols[2:]] + \
            [f"{r['compared_values']:,} ({r['stock_nonzero']:,})" if "compared_values" in r
             else "-"]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        for what, msg in {**r.get("errors", {}),
                          **{k: r[k] for k in ("error", "stock_error", "lava_error") if k in r}
                          }.items():
            print(f"  {r['file']}: {what}: {msg}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, nargs="?", help="a directory of .net files")
    ap.add_argument("--steps", type=int, default=16, help="steps per sample (>= 16)")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--no-lava", action="store_true", help="skip mtdeploy's Lava backend")
    ap.add_argument("-o", type=Path, default=ROOT / "benchmarks" / "results" / "lavadl_files.json")
    ap.add_argument("--table", action="store_true", help="print the table of the JSON in -o")
    a = ap.parse_args(argv)
    if a.table:
        print_table(json.loads(a.o.read_text())["rows"])
        return 0
    if a.dir is None:
        ap.error("give a directory of .net files (or --table)")
    rows = []
    for path in sorted(a.dir.glob("*.net")):
        t0 = time.perf_counter()
        rows.append(compare(path, a.steps, a.samples, lava=not a.no_lava))
        rows[-1]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{path.name}: {json.dumps(rows[-1])[:400]}", flush=True)
    print_table(rows)
    a.o.parent.mkdir(parents=True, exist_ok=True)
    a.o.write_text(json.dumps({"steps": a.steps, "samples": a.samples, "rows": rows}, indent=1))
    print(f"wrote {a.o}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
