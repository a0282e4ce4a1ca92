"""Digits: does a per-layer (mixed) timestep search beat uniform T at the same latency/SynOps?

Trains the digits example once (examples/digits/train.py, cached under --work) and searches
per-layer levels + thresholds on its calibration set (digits_calib.npz, 256 training images).
The held-out digits are split in two halves: A is the search's validation data, B is never
seen by it. Prints:

* the uniform-T points (all layers L = 1..16, thresholds fine-tuned the same way) against the
  best mixed configuration at equal-or-lower mean T (= equal sum T: the layer count is fixed)
  and at equal-or-lower SynOps, scored two-fold (pick on A, score on B, and vice versa), so the
  many mixed candidates get no selection advantage over the five uniform ones;
* the chosen configuration under --budget, compiled (TorchScript -> mtdeploy compile) and run
  on the reference simulator, which must equal its ANN (avg-repeat is exact).

Writes benchmarks/results/search_front.json and search_front.png.

    .venv/bin/python benchmarks/bench_search.py [--budget mean-T=2] [--train-uniform]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtdeploy.api import load_model  # noqa: E402
from mtdeploy.io import write_json  # noqa: E402
from mtdeploy.search import search  # noqa: E402
from mtdeploy.search.files import split_calibration  # noqa: E402
from mtdeploy.search.front import front_table, plot_front  # noqa: E402
from mtdeploy.sim.ann import ann_forward  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402

INPUT_SHAPE = (1, 8, 8)


def _train(out_dir: Path, levels: str, epochs: int) -> Path:
    """The digits example's model.pt (trained once per levels/epochs, then reused)."""
    if not (out_dir / "model.pt").is_file():
        spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples/digits/train.py")
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
        train.main(["--out-dir", str(out_dir), "--levels", levels, "--epochs", str(epochs)])
    return out_dir


def _training_split() -> dict:
    """The digits example's own training split (examples/common.py), as calibration data."""
    spec = importlib.util.spec_from_file_location("digits_common", ROOT / "examples/common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    split = common.load_digits_split()
    return {"x": split.x_train, "y": split.y_train}


def _accuracy(module, x: np.ndarray, y: np.ndarray) -> float:
    module.eval()
    with torch.no_grad():
        return float((module(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy() == y).mean())


def _best_within(candidates, metric: str, limit: float, select_acc: dict):
    """The mixed configuration a user would pick at this cost: best on the selection half
    (ties: lower calibration loss, then cheaper)."""
    fits = [c for c in candidates if not c.is_uniform and c.costs[metric] <= limit + 1e-9]
    if not fits:
        return None
    return min(fits, key=lambda c: (-select_acc[id(c)], c.calib_loss, c.costs[metric], c.key()))


def _compare(result, acc: list[dict], sizes: list[int], metric: str) -> list[dict]:
    """Two-fold held-out comparison: pick the mixed configuration on one half, score it on the
    other, and the other way round; pooled over both halves every held-out sample is a test
    sample and no pick is scored on the data that made it. The candidates themselves (tuned on
    calibration data only) do not depend on either half."""
    total = sum(sizes)
    rows = []
    for u in result.uniform:
        row = {"uniform_T": u.costs["max_T"], "mean_T": u.costs["mean_T"], "sum_T": u.costs["sum_T"],
               "synops": u.costs["synops"],
               "uniform_heldout": sum(acc[h][id(u)] * sizes[h] for h in (0, 1)) / total,
               "mixed_levels": None}
        picks = [_best_within(result.candidates, metric, u.costs[metric], acc[sel]) for sel in (0, 1)]
        if all(p is not None for p in picks):
            row.update({
                "mixed_levels": [list(p.levels.values()) for p in picks],
                "mixed_mean_T": max(p.costs["mean_T"] for p in picks),
                "mixed_sum_T": max(p.costs["sum_T"] for p in picks),
                "mixed_synops": max(p.costs["synops"] for p in picks),
                # picked on half `sel`, scored on the other half
                "mixed_heldout": sum(acc[1 - sel][id(p)] * sizes[1 - sel]
                                     for sel, p in enumerate(picks)) / total})
        rows.append(row)
    return rows


def _print_compare(rows, metric: str, trained: dict | None, total: int) -> None:
    label = {"mean_T": "mean T (and sum T)", "synops": "SynOps per sample"}[metric]
    print(f"\nuniform T vs the best mixed configuration at equal or lower {label}; accuracy in % "
          f"on {total} held-out samples (mixed: picked on one half, scored on the other, both ways)")
    head = (f"{'uniform':>7} {'meanT':>5} {'sumT':>4} {'SynOps':>9} {'acc':>6}"
            + (f" {'trainedL':>8}" if trained else "")
            + f" | {'mixed levels (pick A / pick B)':<32} {'meanT':>5} {'sumT':>4} {'SynOps':>9} "
            f"{'acc':>6} {'delta':>6}")
    print(head)
    for r in rows:
        left = (f"{'T=' + str(r['uniform_T']):>7} {r['mean_T']:>5.2f} {r['sum_T']:>4} "
                f"{r['synops']:>9.0f} {100 * r['uniform_heldout']:>6.2f}")
        if trained:
            acc = trained.get(r["uniform_T"])
            left += f" {'-' if acc is None else format(100 * acc, '.2f'):>8}"
        if r["mixed_levels"] is None:
            print(left + " | (no mixed configuration this cheap)")
            continue
        a, b = r["mixed_levels"]
        picks = str(a) if a == b else f"{a} / {b}"
        print(left + f" | {picks:<32} {r['mixed_mean_T']:>5.2f} {r['mixed_sum_T']:>4} "
              f"{r['mixed_synops']:>9.0f} {100 * r['mixed_heldout']:>6.2f} "
              f"{100 * (r['mixed_heldout'] - r['uniform_heldout']):>+6.2f}")


def _compile_and_simulate(searched_pt: Path, graph_module, x: np.ndarray, y: np.ndarray) -> dict:
    """TorchScript -> compile (write=False) -> reference simulation; compare with the ANN."""
    from mtdeploy.api import compile_model

    try:
        build = compile_model(searched_pt, input_shape=INPUT_SHAPE, write=False)
        snn, how = build.graph, "mtdeploy.api.compile_model(write=False)"
    except ImportError as exc:   # the budget checker has not landed: same passes, no check
        from mtdeploy.passes import convert, quantize, schedule

        snn = quantize(convert(load_model(searched_pt, INPUT_SHAPE)))
        schedule(snn)
        how = f"convert+quantize+schedule (compile_model unavailable: {exc})"
    imported = load_model(searched_pt, INPUT_SHAPE)
    ann = ann_forward(imported, x).numpy()
    gm = graph_module.double().eval()
    with torch.no_grad():
        gm_out = gm(torch.as_tensor(x, dtype=torch.float64)).numpy()
    sim_float = simulate(snn, x, mode="float")
    sim_fixed = simulate(snn, x, mode="fixed")
    return {
        "how": how,
        "levels_after_reimport": [n.attrs["levels"] for n in imported.of_kind("qcfs")],
        "T_per_layer": [n.T for n in snn.of_kind("qcfs")],
        "max_abs_sim_float_minus_ann": float(np.abs(sim_float.output - ann).max()),
        "max_abs_reimported_ann_minus_searched_module": float(np.abs(ann - gm_out).max()),
        "argmax_agreement_sim_float_vs_ann": float((sim_float.output.argmax(1) == ann.argmax(1)).mean()),
        "ann_test_acc": float((ann.argmax(1) == y).mean()),
        "sim_float_test_acc": float((sim_float.output.argmax(1) == y).mean()),
        "sim_fixed_test_acc": float((sim_fixed.output.argmax(1) == y).mean()),
        "sim_synops_per_sample": sim_float.total_synops / len(x),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="mean-T=2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ft-epochs", type=int, default=5, help="threshold fine-tuning epochs")
    ap.add_argument("--train-epochs", type=int, default=30, help="epochs of the digits example")
    ap.add_argument("--levels", default="8,4,2,4", help="levels the example is trained with")
    ap.add_argument("--finetune-weights", action="store_true",
                    help="fine-tune weights as well as thresholds (every candidate alike)")
    ap.add_argument("--calib", choices=["example", "train"], default="example",
                    help="calibration data: the example's digits_calib.npz (256 training images) "
                         "or the whole training split (1347)")
    ap.add_argument("--train-uniform", action="store_true",
                    help="also train QCFS from scratch at each uniform L (about 35 s each)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: this model is too small to gain from more)")
    ap.add_argument("--work", default=str(ROOT / "build/bench-search"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/search_front"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    t0 = time.perf_counter()
    model_dir = _train(work / f"digits-{args.levels.replace(',', '-')}-e{args.train_epochs}",
                       args.levels, args.train_epochs)
    t_train = time.perf_counter() - t0
    graph = load_model(model_dir / "model.pt", INPUT_SHAPE)
    if args.calib == "example":
        calib = dict(np.load(model_dir / "digits_calib.npz"))
    else:
        calib = _training_split()
    held = np.load(model_dir / "digits_test.npz")
    # two held-out halves: A is the search's validation data (its choice), B scores that choice
    test_x, test_y, val_x, val_y = split_calibration(held["x"], held["y"], 0.5, args.seed)
    print(f"digits: calibration {len(calib['y'])} ({args.calib}), validation {len(val_y)}, "
          f"test {len(test_y)} (held-out halves); model levels {args.levels}")

    t0 = time.perf_counter()
    result = search(graph, calib["x"], calib["y"], val_x, val_y, budget=args.budget,
                    seed=args.seed, finetune_epochs=args.ft_epochs, threads=args.threads,
                    finetune_weights=args.finetune_weights,
                    progress=sys.stderr.isatty())
    t_search = time.perf_counter() - t0
    test_acc = {id(c): _accuracy(result.module(c), test_x, test_y) for c in result.candidates}
    val_acc = {id(c): c.val_acc for c in result.candidates}
    halves, sizes = [val_acc, test_acc], [len(val_y), len(test_y)]
    print(f"search: {result.settings['configurations_measured']} configurations measured, "
          f"{len(result.candidates)} fine-tuned, {t_search:.1f} s (training {t_train:.1f} s)")

    trained = None
    if args.train_uniform:
        trained = {}
        for level in (1, 2, 4, 8, 16):
            d = _train(work / f"digits-uniform{level}-e{args.train_epochs}",
                       ",".join([str(level)] * 4), args.train_epochs)
            g = load_model(d / "model.pt", INPUT_SHAPE)
            trained[level] = float((ann_forward(g, held["x"]).numpy().argmax(1) == held["y"]).mean())

    by_t = _compare(result, halves, sizes, "mean_T")
    by_synops = _compare(result, halves, sizes, "synops")
    _print_compare(by_t, "mean_T", trained, sum(sizes))
    _print_compare(by_synops, "synops", None, sum(sizes))
    tally = {}
    for m, rows in (("mean_T", by_t), ("synops", by_synops)):
        deltas = [r["mixed_heldout"] - r["uniform_heldout"] for r in rows if r["mixed_levels"]]
        tally[m] = {"compared": len(deltas), "mixed_higher": sum(d > 1e-12 for d in deltas),
                    "equal": sum(abs(d) <= 1e-12 for d in deltas),
                    "mixed_lower": sum(d < -1e-12 for d in deltas)}
    for m, t in tally.items():
        print(f"{'by mean T' if m == 'mean_T' else 'by SynOps'}: mixed higher at {t['mixed_higher']}"
              f", equal at {t['equal']}, lower at {t['mixed_lower']} of {t['compared']} uniform "
              f"points with a cheaper-or-equal mixed configuration (1 sample = "
              f"{100 / sum(sizes):.2f}%)")
    print(f"\nPareto front on mean T (validation accuracy), uniform points included:\n"
          f"{front_table(result, 'mean_T')}")

    searched_pt = work / "searched.pt"
    result.module().save_torchscript(searched_pt)
    check = _compile_and_simulate(searched_pt, result.module(), test_x, test_y)
    c = result.chosen
    print(f"\nchosen under {result.budget}: levels {list(c.levels.values())}, mean T "
          f"{c.costs['mean_T']:.2f}, sum T {c.costs['sum_T']}, val {100 * c.val_acc:.2f}%, "
          f"test (half B) {100 * test_acc[id(c)]:.2f}%")
    print(f"compiled via {check['how']}: T per layer {check['T_per_layer']}; reference sim (float) "
          f"vs ANN max |diff| {check['max_abs_sim_float_minus_ann']:.2e}, argmax agreement "
          f"{check['argmax_agreement_sim_float_vs_ann']:.4f}; test accuracy ANN "
          f"{100 * check['ann_test_acc']:.2f}%, SNN float {100 * check['sim_float_test_acc']:.2f}%, "
          f"fixed point {100 * check['sim_fixed_test_acc']:.2f}%")

    out = Path(args.out)
    doc = result.to_json()
    for k, cand in enumerate(result.candidates):
        doc["points"][k]["heldout_B_acc"] = test_acc[id(cand)]
    doc["benchmark"] = {"command": "benchmarks/bench_search.py " + " ".join(argv or sys.argv[1:]),
                        "search_seconds": t_search, "train_seconds": t_train,
                        "compare_by_mean_T": by_t, "compare_by_synops": by_synops,
                        "heldout_tally": tally,
                        "trained_uniform_test_acc": trained, "compiled_chosen": check}
    write_json(out.with_suffix(".json"), doc)
    plot_front(result, out.with_suffix(".png"),
               title=f"digits QCFS CNN: per-layer T search vs uniform T (validation accuracy; "
                     f"budget {result.budget})")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    exact = check["max_abs_sim_float_minus_ann"] < 1e-9 and \
        check["argmax_agreement_sim_float_vs_ann"] == 1.0
    if not exact:
        print("ERROR: the searched model's reference simulation does not match its ANN",
              file=sys.stderr)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
