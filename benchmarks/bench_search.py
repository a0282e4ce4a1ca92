"""Digits: does a per-layer (mixed) timestep search beat uniform T at the same latency/SynOps?

For each training seed (--seeds): trains the digits example (examples/digits/train.py, cached
under --work), searches per-layer levels + thresholds on its calibration set (256 training
images), and scores every fine-tuned configuration on the held-out digits, split in halves:
A is the search's validation data, B is never seen by it. Prints:

* each uniform-T point (all layers L = 1..16, thresholds fine-tuned the same way) against the
  best mixed configuration at equal-or-lower mean T (= equal-or-lower sum T: the layer count
  is fixed) and at equal-or-lower SynOps. Mixed is picked two-fold (on A, scored on B, and the
  other way round), so the many mixed candidates get no selection advantage over the one
  uniform configuration; predictions are pooled over seeds and paired sample by sample, with a
  95% bootstrap interval on the difference, plus an "oracle" (best mixed picked on the test
  data itself) as an upper bound on what any search over these candidates could show;
* a verdict: does the mixed front dominate (interval above zero at every comparison)?
* the first seed's chosen configuration under --budget, compiled (TorchScript -> mtdeploy
  compile) and run on the reference simulator, which must equal its ANN (avg-repeat is exact).

Writes benchmarks/results/search_front.json, search_front.png (first seed's front) and
search_front_paired.png (the pooled comparison).

    .venv/bin/python benchmarks/bench_search.py [--seeds 0,1,2] [--budget mean-T=2]
        [--finetune-weights] [--train-uniform]
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
from mtdeploy.search.engine import LEVEL_CHOICES  # noqa: E402
from mtdeploy.search.data import split_calibration  # noqa: E402
from mtdeploy.search.front import front_table, plot_front  # noqa: E402
from mtdeploy.sim.ann import ann_forward  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402

INPUT_SHAPE = (1, 8, 8)


def _train(out_dir: Path, levels: str, epochs: int, seed: int) -> Path:
    """The digits example's model.pt (trained once per levels/epochs/seed, then reused)."""
    if not (out_dir / "model.pt").is_file():
        spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples/digits/train.py")
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
        train.main(["--out-dir", str(out_dir), "--levels", levels, "--epochs", str(epochs),
                    "--seed", str(seed), "--threads", "1"])
    return out_dir


def _training_split() -> dict:
    """The digits example's own training split (examples/common.py), as calibration data."""
    spec = importlib.util.spec_from_file_location("digits_common", ROOT / "examples/common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    split = common.load_digits_split()
    return {"x": split.x_train, "y": split.y_train}


def _best_within(candidates, metric: str, limit: float, pick_acc: dict):
    """The mixed configuration a user would pick at this cost: best on the selection data
    (ties: lower calibration loss, then cheaper)."""
    fits = [c for c in candidates if not c.is_uniform and c.costs[metric] <= limit + 1e-9]
    if not fits:
        return None
    return min(fits, key=lambda c: (-pick_acc[id(c)], c.calib_loss, c.costs[metric], c.key()))


def _correct(module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample correctness (bool), so that comparisons can be paired sample by sample."""
    module.eval()
    with torch.no_grad():
        return module(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy() == y


def _run_seed(args, seed: int, work: Path) -> dict:
    """Train the digits example with this seed (cached), search it, and score every fine-tuned
    candidate on both held-out halves: A (the search's validation data) and B (never seen)."""
    t0 = time.perf_counter()
    model_dir = _train(work / f"digits-{args.levels.replace(',', '-')}-e{args.train_epochs}-s{seed}",
                       args.levels, args.train_epochs, seed)
    t_train = time.perf_counter() - t0
    graph = load_model(model_dir / "model.pt", INPUT_SHAPE)
    calib = dict(np.load(model_dir / "digits_calib.npz")) if args.calib == "example" \
        else _training_split()
    held = np.load(model_dir / "digits_test.npz")
    b_x, b_y, a_x, a_y = split_calibration(held["x"], held["y"], 0.5, seed)
    t0 = time.perf_counter()
    result = search(graph, calib["x"], calib["y"], a_x, a_y, budget=args.budget, seed=seed,
                    finetune_epochs=args.ft_epochs, threads=args.threads,
                    finetune_weights=args.finetune_weights, progress=sys.stderr.isatty())
    t_search = time.perf_counter() - t0
    correct = {half: {id(c): _correct(result.module(c), x, y) for c in result.candidates}
               for half, (x, y) in (("A", (a_x, a_y)), ("B", (b_x, b_y)))}
    print(f"seed {seed}: ANN (levels {args.levels}) {100 * result.input_model['val_acc']:.2f}% on "
          f"A; {result.settings['configurations_measured']} configurations measured, "
          f"{len(result.candidates)} fine-tuned; search {t_search:.1f} s, training {t_train:.1f} s")
    trained = None
    if args.train_uniform:
        trained = {}
        for level in LEVEL_CHOICES:
            d = _train(work / f"digits-uniform{level}-e{args.train_epochs}-s{seed}",
                       ",".join([str(level)] * 4), args.train_epochs, seed)
            g = load_model(d / "model.pt", INPUT_SHAPE)
            trained[level] = float((ann_forward(g, held["x"]).numpy().argmax(1) == held["y"]).mean())
    return {"seed": seed, "result": result, "correct": correct, "model_dir": model_dir,
            "held_B": (b_x, b_y), "t_train": t_train, "t_search": t_search, "trained": trained}


def _bootstrap_ci(diff: np.ndarray, seeds: np.ndarray, rounds: int = 4000) -> tuple[float, float]:
    """95% percentile interval of the mean paired difference, resampling samples within each
    training seed (the seeds are the units that were run, the samples vary inside them)."""
    rng = np.random.default_rng(12345)
    groups = [np.flatnonzero(seeds == s) for s in np.unique(seeds)]
    means = np.empty(rounds)
    for r in range(rounds):
        means[r] = np.mean(np.concatenate([diff[rng.choice(g, len(g))] for g in groups]))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _compare(runs: list[dict], metric: str) -> list[dict]:
    """Uniform T against the best mixed configuration at equal or lower ``metric``, pooled over
    training seeds and paired sample by sample.

    Mixed is picked two-fold (on half A, scored on B, and the other way round), so every
    held-out sample is a test sample and no pick is scored on the data that chose it; the
    many mixed candidates get no selection advantage over the one uniform configuration. The
    'oracle' is the best mixed configuration picked on the held-out data itself: an optimistic
    bound on what any search could find among these candidates."""
    # accuracy per candidate on half A, half B and both, once per run
    scores = []
    for run in runs:
        corr = run["correct"]
        acc = {h: {k: float(v.mean()) for k, v in corr[h].items()} for h in "AB"}
        acc["both"] = {k: float(np.concatenate([corr["A"][k], corr["B"][k]]).mean())
                       for k in corr["A"]}
        scores.append(acc)
    rows = []
    for level in LEVEL_CHOICES:
        uni_vec, mix_vec, oracle_vec, seed_vec, picks, costs = [], [], [], [], [], []
        for run, acc in zip(runs, scores):
            result, corr = run["result"], run["correct"]
            u = next(c for c in result.uniform if c.key()[0] == level)
            pick_a = _best_within(result.candidates, metric, u.costs[metric], acc["A"])
            pick_b = _best_within(result.candidates, metric, u.costs[metric], acc["B"])
            oracle = _best_within(result.candidates, metric, u.costs[metric], acc["both"])
            costs.append(u.costs)
            if pick_a is None:
                continue
            uni_vec.append(np.concatenate([corr["B"][id(u)], corr["A"][id(u)]]))
            mix_vec.append(np.concatenate([corr["B"][id(pick_a)], corr["A"][id(pick_b)]]))
            oracle_vec.append(np.concatenate([corr["B"][id(oracle)], corr["A"][id(oracle)]]))
            seed_vec.append(np.full(len(uni_vec[-1]), run["seed"]))
            picks.append({"seed": run["seed"], "picked_on_A": list(pick_a.key()),
                          "picked_on_B": list(pick_b.key()), "oracle": list(oracle.key()),
                          "mixed_cost": max(pick_a.costs[metric], pick_b.costs[metric])})
        row = {"uniform_T": level, "mean_T": costs[0]["mean_T"], "sum_T": costs[0]["sum_T"],
               "synops": float(np.mean([c["synops"] for c in costs])), "compared": bool(uni_vec)}
        if uni_vec:
            u, m, o, sd = map(np.concatenate, (uni_vec, mix_vec, oracle_vec, seed_vec))
            diff = m.astype(float) - u.astype(float)
            lo, hi = _bootstrap_ci(diff, sd)
            row.update({"samples": int(len(u)), "uniform_acc": float(u.mean()),
                        "mixed_acc": float(m.mean()), "oracle_acc": float(o.mean()),
                        "delta": float(diff.mean()), "delta_ci95": [lo, hi],
                        "mixed_only_right": int((m & ~u).sum()),
                        "uniform_only_right": int((u & ~m).sum()), "picks": picks})
        rows.append(row)
    return rows


def _verdict(row: dict) -> str:
    if not row["compared"]:
        return "no mixed configuration this cheap"
    lo, hi = row["delta_ci95"]
    return "mixed higher" if lo > 0 else ("uniform higher" if hi < 0 else "no measurable difference")


def _print_compare(rows, metric: str, n_seeds: int, trained: dict | None) -> None:
    label = {"mean_T": "mean T (= sum T / 4)", "synops": "SynOps per sample"}[metric]
    print(f"\nuniform T vs the best mixed configuration at equal or lower {label}: accuracy in % "
          f"on n held-out predictions (the {n_seeds} training seeds where such a mixed "
          f"configuration exists x both halves; mixed picked on one half, scored on the other); "
          f"delta = mixed - uniform with a 95% bootstrap interval")
    head = (f"{'uniform':>7} {'meanT':>5} {'sumT':>4} {'SynOps':>8} {'acc':>6}"
            + (f" {'trained':>7}" if trained else "")
            + f" | {'n':>4} {'mixed':>6} {'oracle':>6} {'delta':>6} {'95% CI':>15} {'+/-':>7}  verdict")
    print(head)
    for r in rows:
        left = f"{'T=' + str(r['uniform_T']):>7} {r['mean_T']:>5.2f} {r['sum_T']:>4} {r['synops']:>8.0f}"
        if not r["compared"]:
            print(left + f" {'':>6}" + (f" {'':>7}" if trained else "") + " | " + _verdict(r))
            continue
        left += f" {100 * r['uniform_acc']:>6.2f}"
        if trained:
            acc = trained.get(r["uniform_T"])
            left += f" {'-' if acc is None else format(100 * acc, '.2f'):>7}"
        lo, hi = r["delta_ci95"]
        print(left + f" | {r['samples']:>4} {100 * r['mixed_acc']:>6.2f} "
              f"{100 * r['oracle_acc']:>6.2f} "
              f"{100 * r['delta']:>+6.2f} [{100 * lo:>+5.2f},{100 * hi:>+5.2f}] "
              f"{r['mixed_only_right']:>3}/{r['uniform_only_right']:<3}  {_verdict(r)}")
    print("(+/-: predictions only mixed / only uniform got right; oracle: best mixed configuration "
          "picked on the held-out data itself, an upper bound for any search over these "
          "candidates)")


def _plot_paired(rows_by_metric: dict, path: Path, title: str) -> None:
    """Pooled held-out accuracy of uniform T and of the mixed pick at each uniform point's cost,
    with the paired difference and its interval underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtdeploy.io import atomic_path

    metrics = list(rows_by_metric)
    fig, axes = plt.subplots(2, len(metrics), figsize=(5.2 * len(metrics), 6.4), squeeze=False,
                             sharex="col", gridspec_kw={"height_ratios": [2, 1]})
    for col, metric in enumerate(metrics):
        rows = [r for r in rows_by_metric[metric] if r["compared"]]
        xs = [r[metric] for r in rows]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(xs, [100 * r["uniform_acc"] for r in rows], "s--", color="tab:red",
                 label="uniform T (thresholds fine-tuned alike)")
        top.plot(xs, [100 * r["mixed_acc"] for r in rows], "o-", color="tab:blue",
                 label="best mixed at <= this cost (held-out pick)")
        top.plot(xs, [100 * r["oracle_acc"] for r in rows], "^:", color="0.5",
                 label="oracle mixed (picked on test: upper bound)")
        for r in rows:
            top.annotate(f"T={r['uniform_T']}", (r[metric], 100 * r["uniform_acc"]),
                         textcoords="offset points", xytext=(4, -11), fontsize=7, color="tab:red")
        deltas = np.array([100 * r["delta"] for r in rows])
        ci = np.array([[100 * r["delta"] - 100 * r["delta_ci95"][0],
                        100 * r["delta_ci95"][1] - 100 * r["delta"]] for r in rows]).T
        bottom.errorbar(xs, deltas, yerr=ci, fmt="o", color="tab:blue", capsize=4)
        bottom.axhline(0, color="k", lw=0.8)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2 if metric != "synops" else 10)
            ax.grid(alpha=0.3, which="both")
        top.set_ylabel("held-out accuracy (%)")
        bottom.set_ylabel("mixed - uniform (pp), 95% CI")
        bottom.set_xlabel({"mean_T": "mean T of the uniform point",
                           "synops": "SynOps per sample of the uniform point"}[metric])
        top.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _compile_and_simulate(searched_pt: Path, graph_module, x: np.ndarray, y: np.ndarray) -> dict:
    """TorchScript -> compile (write=False) -> reference simulation; compare with the ANN."""
    from mtdeploy.api import compile_model

    # no --input-shape: save_torchscript records it in the archive
    snn = compile_model(searched_pt, write=False).graph
    how = "mtdeploy.api.compile_model(write=False)"
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
    ap.add_argument("--seeds", default="0,1,2",
                    help="training seeds of the digits example, comma-separated; each is "
                         "trained, searched and scored, and the comparison pools them")
    ap.add_argument("--ft-epochs", type=int, default=5, help="threshold fine-tuning epochs")
    ap.add_argument("--train-epochs", type=int, default=30, help="epochs of the digits example")
    ap.add_argument("--levels", default="8,4,2,4", help="levels the example is trained with")
    ap.add_argument("--finetune-weights", action="store_true",
                    help="fine-tune weights as well as thresholds (every candidate alike)")
    ap.add_argument("--calib", choices=["example", "train"], default="example",
                    help="calibration data: the example's digits_calib.npz (256 training images) "
                         "or the whole training split (1347)")
    ap.add_argument("--train-uniform", action="store_true",
                    help="also train QCFS from scratch at each uniform L, per seed (~6 s each)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: this model is too small to gain from more)")
    ap.add_argument("--work", default=str(ROOT / "build/bench-search"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/search_front"))
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    print(f"digits: {len(seeds)} training seeds {seeds}; model levels {args.levels}; calibration "
          f"{args.calib}; held-out test split in halves A (search validation) and B")
    runs = [_run_seed(args, seed, work) for seed in seeds]

    trained = None
    if args.train_uniform:
        trained = {lv: float(np.mean([r["trained"][lv] for r in runs])) for lv in LEVEL_CHOICES}
    by_t = _compare(runs, "mean_T")
    by_synops = _compare(runs, "synops")
    _print_compare(by_t, "mean_T", len(runs), trained)
    _print_compare(by_synops, "synops", len(runs), None)
    compared = [r for r in by_t + by_synops if r["compared"]]
    dominates = all(r["delta_ci95"][0] > 0 for r in compared)
    print(f"\nverdict: the mixed-timestep front {'DOMINATES' if dominates else 'does NOT dominate'}"
          f" uniform T on held-out digits: mixed higher at "
          f"{sum(_verdict(r) == 'mixed higher' for r in compared)}, no measurable difference at "
          f"{sum(_verdict(r) == 'no measurable difference' for r in compared)}, uniform higher at "
          f"{sum(_verdict(r) == 'uniform higher' for r in compared)} of {len(compared)} "
          f"comparisons (mean T and SynOps)")

    first = runs[0]
    result = first["result"]
    print(f"\nseed {first['seed']}: Pareto front on mean T (validation accuracy on A), uniform "
          f"points included:\n{front_table(result, 'mean_T')}")
    searched_pt = work / "searched.pt"
    result.module().save_torchscript(searched_pt)
    b_x, b_y = first["held_B"]
    check = _compile_and_simulate(searched_pt, result.module(), b_x, b_y)
    c = result.chosen
    print(f"\nchosen under {result.budget}: levels {list(c.levels.values())}, mean T "
          f"{c.costs['mean_T']:.2f}, sum T {c.costs['sum_T']}, A {100 * c.val_acc:.2f}%, "
          f"B {100 * first['correct']['B'][id(c)].mean():.2f}%")
    print(f"compiled via {check['how']}: T per layer {check['T_per_layer']}; reference sim (float) "
          f"vs ANN max |diff| {check['max_abs_sim_float_minus_ann']:.2e}, argmax agreement "
          f"{check['argmax_agreement_sim_float_vs_ann']:.4f}; accuracy on B: ANN "
          f"{100 * check['ann_test_acc']:.2f}%, SNN float {100 * check['sim_float_test_acc']:.2f}%, "
          f"fixed point {100 * check['sim_fixed_test_acc']:.2f}%")

    out = Path(args.out)
    doc = result.to_json()
    for k, cand in enumerate(result.candidates):
        doc["points"][k]["heldout_B_acc"] = float(first["correct"]["B"][id(cand)].mean())
    doc["benchmark"] = {
        "command": "benchmarks/bench_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seeds": seeds, "front_and_chosen_from_seed": first["seed"],
        "search_seconds": {r["seed"]: r["t_search"] for r in runs},
        "train_seconds": {r["seed"]: r["t_train"] for r in runs},
        "compare_by_mean_T": by_t, "compare_by_synops": by_synops,
        "mixed_front_dominates": dominates,
        "trained_uniform_test_acc_mean_over_seeds": trained, "compiled_chosen": check}
    write_json(out.with_suffix(".json"), doc)
    plot_front(result, out.with_suffix(".png"),
               title=f"digits QCFS CNN, seed {first['seed']}: per-layer T search vs uniform T "
                     f"(validation accuracy; budget {result.budget})")
    paired_png = out.with_name(out.name + "_paired.png")
    _plot_paired({"mean_T": by_t, "synops": by_synops}, paired_png,
                 f"digits, {len(runs)} seeds pooled: uniform T vs the best mixed configuration at "
                 f"equal or lower cost (held-out)")
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.png')} and {paired_png}")
    exact = check["max_abs_sim_float_minus_ann"] < 1e-9 and \
        check["argmax_agreement_sim_float_vs_ann"] == 1.0
    if not exact:
        print("ERROR: the searched model's reference simulation does not match its ANN",
              file=sys.stderr)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
