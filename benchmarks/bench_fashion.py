"""Fashion-MNIST: the seed papers' central claims, in shape, measured with mtdeploy in one run.

Models come from examples/fashion/train.py (cached under build/fashion/ by their settings); the
validation images (split from TRAIN) make every choice, the 10,000 test images make none.
Tables (each row: float and fixed-point accuracy, mean T, sum T, sequential latency in steps,
SynOps per sample and the loihi2 profile's energy estimate from the measured spikes):

1. MT-SNN: per training seed, the per-layer timestep search (finer level choices, screening
   on a calibration subset, threshold + weight fine-tuning with the chosen levels, the same
   budget for every candidate, uniform ones included). For each uniform T: the best mixed
   configuration (picked on validation) at equal or lower mean T (= sum T / 4, and the same
   sequential latency: every configuration has the same hops) and at equal or lower SynOps;
   test predictions paired sample by sample, pooled over seeds, 95% bootstrap interval; and
   the oracle (best mixed picked on the test set itself: an upper bound for any search).
2. QCFS: one model trained at L, run at T = 1, 2, 4, 8, 16: avg-repeat (exactly the QCFS ANN
   at levels T) and streaming IF (no alignment, the QCFS paper's SNN), next to the ANN.
3. Optimized potential initialisation: streaming IF with v(0) = theta/2 versus 0 at each T.
4. TPP: at T != L, streaming IF versus TPP neurons (several TPP seeds).
5. Temporal flexibility (MTT): the model at many T with each alignment; TTM only differs from
   streaming where T changes, so it is shown on the searched mixed configuration.

Everything goes through mtdeploy's API as a user's script would: search() for the search,
compile_model() and simulate_build() for every row, the checker for energy; the chosen mixed
configuration is compiled for loihi2 into a build directory and run on Lava's CPU simulator on
a few test images, which must equal the reference fixed point. Writes
benchmarks/results/fashion.json and fashion_*.png.

    .venv/bin/python benchmarks/bench_fashion.py [--seeds 0,1,2] [--quick] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtdeploy.api import compile_model, load_model, simulate_build  # noqa: E402
from mtdeploy.io import write_json  # noqa: E402
from mtdeploy.search import SearchSettings, search  # noqa: E402
from mtdeploy.targets.checker import check  # noqa: E402


def _module(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


EXAMPLE = _module("fashion_example", ROOT / "examples/fashion/train.py")
PAIRED = _module("bench_search", ROOT / "benchmarks/bench_search.py")   # the bootstrap interval


# ---- one configuration, as a user runs it ---------------------------------------------------
class Runner:
    """compile_model + simulate_build for one row; compiled builds and results are cached by
    their settings, so a configuration shown in several tables is run once."""

    def __init__(self, target: str = "loihi2"):
        self.target = target
        self.cache: dict = {}

    def row(self, model: Path, x, y, *, fixed: bool = True, **options) -> dict:
        key = (str(model), len(x), fixed, tuple(sorted(options.items())))
        if key not in self.cache:
            self.cache[key] = self._run(model, x, y, fixed, options)
        return self.cache[key]

    def _run(self, model, x, y, fixed, options) -> dict:
        t0 = time.perf_counter()
        build = compile_model(model, target=self.target, write=False, **options)
        lat = build.schedule["latency"]
        out, res = simulate_build(build.graph, x, precision="float32")
        n = len(x)
        spikes = {k: v / n for k, v in res.spikes.items()}
        energy = check(build.graph, self.target, spike_counts=spikes, suggest=False).energy
        row = {"acc_float": float((out.argmax(1) == y).mean()),
               "mean_T": lat["mean_T"], "sum_T": lat["sum_T"], "max_T": lat["max_T"],
               "latency_steps": lat["sequential_steps"],
               "interval_steps": lat["pipeline_interval_steps"],
               "synops": res.total_synops / n, "energy_uJ": energy["energy_uJ"],
               "paper_energy_uJ": energy["paper_energy"]["snn_uJ"], "samples": n,
               "T_per_layer": [row["T"] for row in build.report["layers"][:-1]],
               "fits": bool(build.check.fits) if build.check is not None else None}
        if fixed:
            out_fx, _ = simulate_build(build.graph, x, fixed_point=True)
            row["acc_fixed"] = float((out_fx.argmax(1) == y).mean())
        row["seconds"] = time.perf_counter() - t0
        return row


def _fmt(r: dict, acc_keys=("acc_float", "acc_fixed")) -> str:
    accs = " ".join(f"{100 * r[k]:6.2f}" if r.get(k) is not None else f"{'-':>6}" for k in acc_keys)
    return (f"{accs} {r['mean_T']:5.2f} {r['sum_T']:4} {r['latency_steps']:5} "
            f"{r['synops']:9.0f} {r['energy_uJ']:8.3f}")


ROW_HEAD = f"{'float':>6} {'fixed':>6} {'meanT':>5} {'sumT':>4} {'steps':>5} {'SynOps':>9} {'E (uJ)':>8}"


# ---- table 1: the search against uniform T ---------------------------------------------------
def search_worker(args, seed: int, out: Path) -> None:
    """Search one trained model (its own process: the seeds run in parallel) and save what the
    tables need: every candidate's levels, costs and validation figures, its TorchScript (the
    searched model as a user gets it) and its per-sample test correctness (its module is the
    avg-repeat SNN's exact ANN twin)."""
    split = _split(args)
    model = EXAMPLE.trained_model(split, args.trained_levels, args.train_epochs, seed,
                                  args.train_samples, Path(args.cache_dir), args.threads)
    settings = SearchSettings(
        seed=seed, finetune_epochs=args.ft_epochs, finetune_weights=not args.thresholds_only,
        level_choices=args.level_choices, max_finetune=args.max_finetune,
        screen_samples=args.screen_samples, per_uniform=args.per_uniform,
        anchor_levels=args.detail_levels, threads=args.threads,
        progress=None if sys.stderr.isatty() else "lines", target=None)
    t0 = time.perf_counter()
    result = search(load_model(model), *split["calib"], *split["val"], settings)
    seconds = time.perf_counter() - t0
    x, y = split["test"]
    out.mkdir(parents=True, exist_ok=True)
    records, correct = [], []
    for c in result.candidates:
        path = out / ("L" + "-".join(map(str, c.key())) + ".pt")
        result.module(c).save_torchscript(path)
        correct.append(_predict(result.module(c), x) == y)
        records.append({"levels": list(c.key()), "uniform": c.is_uniform, "path": str(path),
                        "val_acc": c.val_acc, "calib_loss": c.calib_loss,
                        **{m: c.costs[m] for m in ("mean_T", "sum_T", "max_T", "synops")}})
    np.save(out / "correct.npy", np.array(correct))
    write_json(out / "search.json", {"seed": seed, "model": str(model), "candidates": records,
                                     "search_seconds": seconds, "settings": result.settings,
                                     "front": result.to_json()})
    print(f"seed {seed}: search {seconds:.0f} s, {result.settings['configurations_measured']} "
          f"configurations screened on {result.settings['screen_samples']}, "
          f"{len(result.candidates)} fine-tuned on {result.settings['calib_samples']} "
          f"calibration images", flush=True)


def _load_search(out: Path) -> dict:
    doc = json.loads((out / "search.json").read_text())
    correct = np.load(out / "correct.npy")
    for k, c in enumerate(doc["candidates"]):
        c["index"] = k
    return {**doc, "correct": correct}


def _predict(module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        return np.concatenate([module(torch.as_tensor(x[i:i + batch], dtype=torch.float32))
                               .argmax(1).numpy() for i in range(0, len(x), batch)])


def _mixed_pick(candidates, metric: str, limit: float, score):
    """Best mixed candidate by ``score`` (higher is better) within ``limit``; ties go to the
    lower calibration loss, then the cheaper one."""
    fits = [c for c in candidates if not c["uniform"] and c[metric] <= limit + 1e-9]
    if not fits:
        return None
    return min(fits, key=lambda c: (-score(c), c["calib_loss"], c[metric], c["levels"]))


def compare(runs: list[dict], metric: str, levels) -> list[dict]:
    """Uniform T vs the mixed pick (on validation) at equal or lower ``metric``, paired on the
    test set and pooled over seeds; plus the oracle pick (on the test set)."""
    rows = []
    for level in levels:
        u_vec, m_vec, o_vec, seeds, picks = [], [], [], [], []
        for run in runs:
            cands, corr = run["candidates"], run["correct"]
            u = next(c for c in cands if c["uniform"] and c["levels"][0] == level)
            pick = _mixed_pick(cands, metric, u[metric], lambda c: c["val_acc"])
            oracle = _mixed_pick(cands, metric, u[metric], lambda c: corr[c["index"]].mean())
            if pick is None:
                continue
            u_vec.append(corr[u["index"]])
            m_vec.append(corr[pick["index"]])
            o_vec.append(corr[oracle["index"]])
            seeds.append(np.full(corr.shape[1], run["seed"]))
            picks.append({"seed": run["seed"], "uniform": u, "mixed": pick, "oracle": oracle})
        row = {"uniform_T": level, "metric": metric, "compared": bool(u_vec), "picks": picks}
        if u_vec:
            u_all, m_all, o_all, s_all = map(np.concatenate, (u_vec, m_vec, o_vec, seeds))
            diff = m_all.astype(float) - u_all.astype(float)
            lo, hi = PAIRED._bootstrap_ci(diff, s_all)
            row.update({"n": int(len(diff)), "uniform_acc": float(u_all.mean()),
                        "mixed_acc": float(m_all.mean()), "oracle_acc": float(o_all.mean()),
                        "delta": float(diff.mean()), "ci95": [lo, hi],
                        "oracle_delta": float((o_all.astype(float) - u_all).mean())})
        rows.append(row)
    return rows


def _compiled_rows(runner: Runner, row: dict, split: dict, fixed_n: int) -> None:
    """Compile and simulate the uniform and mixed picks of one comparison row (every seed):
    the accuracy, cost and energy columns come from the compiled SNN."""
    x, y = split["test"]
    for pick in row["picks"]:
        for role in ("uniform", "mixed"):
            pick[f"{role}_row"] = runner.row(Path(pick[role]["path"]), x[:fixed_n], y[:fixed_n])
            pick[f"{role}_levels"] = pick[role]["levels"]


def table1(args, runs, runner: Runner, split) -> dict:
    out = {}
    levels = [lv for lv in sorted(set(args.level_choices)) if lv <= max(args.trained_levels)]
    for metric in ("mean_T", "synops"):
        rows = compare(runs, metric, levels)
        for row in rows:
            if row["compared"] and row["uniform_T"] in args.detail_levels:
                _compiled_rows(runner, row, split, args.fixed_samples)
        out[metric] = rows
        _print_table1(rows, metric, len(runs))
    return out


def _print_table1(rows, metric: str, n_seeds: int) -> None:
    what = {"mean_T": "mean T (= sum T / 4 = equal sequential latency: the hops are the same)",
            "synops": "SynOps per sample (measured on validation)"}[metric]
    print(f"\nTable 1 (MT-SNN): uniform T vs the best mixed configuration at equal or lower {what};"
          f" test accuracy (%) over {n_seeds} seed(s) x test images, paired; delta with 95% CI")
    print(f"{'uniform':>7} {'n':>6} {'unif':>6} {'mixed':>6} {'delta':>6} {'95% CI':>15} "
          f"{'oracle':>6}  verdict")
    for r in rows:
        if not r["compared"]:
            print(f"{'T=' + str(r['uniform_T']):>7}  no mixed configuration this cheap")
            continue
        lo, hi = r["ci95"]
        verdict = "mixed higher" if lo > 0 else ("uniform higher" if hi < 0 else "no difference")
        print(f"{'T=' + str(r['uniform_T']):>7} {r['n']:>6} {100 * r['uniform_acc']:6.2f} "
              f"{100 * r['mixed_acc']:6.2f} {100 * r['delta']:+6.2f} [{100 * lo:+5.2f},"
              f"{100 * hi:+5.2f}] {100 * r['oracle_acc']:6.2f}  {verdict}")
    detailed = [(r, p) for r in rows for p in r["picks"] if "mixed_row" in p]
    if detailed:
        print(f"  compiled rows (reference simulator, first {detailed[0][1]['mixed_row']['samples']}"
              f" test images):\n  {'T':>3} {'seed':>4} {'role':>7} {'levels':>12} " + ROW_HEAD)
        for r, p in detailed:
            for role in ("uniform", "mixed"):
                print(f"  {r['uniform_T']:>3} {p['seed']:>4} {role:>7} "
                      f"{','.join(map(str, p[role + '_levels'])):>12} " + _fmt(p[role + "_row"]))


# ---- tables 2-5: conversion claims on one trained model -----------------------------------
def table2_3(args, runner, model, x, y) -> dict:
    """QCFS T sweep (avg-repeat = QCFS ANN at levels T; streaming IF) and v(0) = theta/2 vs 0."""
    rows = []
    print(f"\nTables 2-3 (QCFS, OPI): model trained at L={args.trained_levels}, first {len(x)} test "
          f"images; avg-repeat is the QCFS ANN at levels T exactly; 'stream' is IF without "
          f"alignment (the QCFS paper's SNN)\n{'T':>3} {'form':>16} " + ROW_HEAD)
    for t in args.sweep_T:
        for name, opts in (("avg-repeat", {"alignment": "avg-repeat"}),
                           ("stream v0=th/2", {"alignment": "none", "v_init": 0.5}),
                           ("stream v0=0", {"alignment": "none", "v_init": 0.0})):
            r = runner.row(model, x, y, timesteps=t, **opts)
            rows.append({"T": t, "form": name, **r})
            print(f"{t:>3} {name:>16} " + _fmt(r), flush=True)
    return {"rows": rows}


def table4(args, runner, model, x, y) -> dict:
    """TPP vs streaming IF at T != L, over TPP seeds."""
    rows = []
    print(f"\nTable 4 (TPP): streaming IF vs TPP neurons at T != L (TPP seeds "
          f"{args.tpp_seeds}), first {len(x)} test images\n{'T':>3} {'neuron':>10} " + ROW_HEAD)
    for t in [t for t in args.sweep_T if t not in args.trained_levels]:
        r = runner.row(model, x, y, timesteps=t, alignment="none")
        rows.append({"T": t, "neuron": "if", **r})
        print(f"{t:>3} {'IF':>10} " + _fmt(r), flush=True)
        for s in args.tpp_seeds:
            r = runner.row(model, x, y, timesteps=t, alignment="none", neuron="tpp", seed=s)
            rows.append({"T": t, "neuron": "tpp", "tpp_seed": s, **r})
            print(f"{t:>3} {'TPP s=' + str(s):>10} " + _fmt(r), flush=True)
    return {"rows": rows}


def table5(args, runner, model, mixed_model: Path | None, x, y, flex: bool = True) -> dict:
    """One model at many T with each alignment; TTM on the searched mixed configuration."""
    rows = []
    print(f"\nTable 5 (MTT temporal flexibility): one model (trained at L={args.trained_levels}) at "
          f"each T; first {len(x)} test images\n{'T':>8} {'alignment':>10} " + ROW_HEAD)
    for t in args.flex_T if flex else []:
        for align in ("avg-repeat", "none"):
            r = runner.row(model, x, y, timesteps=t, alignment=align)
            rows.append({"T": t, "alignment": align, **r})
            print(f"{t:>8} {align:>10} " + _fmt(r), flush=True)
    if mixed_model is not None:
        for align in ("avg-repeat", "ttm"):
            r = runner.row(mixed_model, x, y, alignment=align)
            rows.append({"T": "mixed", "alignment": align, **r})
            print(f"{'mixed':>8} {align:>10} " + _fmt(r) + f"  T {r['T_per_layer']}", flush=True)
    return {"rows": rows}


# ---- the chosen configuration on Lava -----------------------------------------------------
def lava_check(args, path: Path, x, y, work: Path) -> dict:
    """Compile for loihi2 into a build directory, check it fits, run Lava (fixed_pt) on a few
    test images and compare with the reference fixed point."""
    t0 = time.perf_counter()
    build = compile_model(path, target="loihi2", out_dir=work / "lava-build", force=True)
    ref, _ = simulate_build(build.out_dir, x, fixed_point=True)
    lava, _ = simulate_build(build.out_dir, x, backend="lava", fixed_point=True)
    doc = {"build": str(build.out_dir), "fits": bool(build.check.fits),
           "cores": build.check.totals["cores"], "samples": len(x),
           "lava_equals_reference_fixed": bool(np.array_equal(lava, ref)),
           "max_abs_diff": float(np.abs(np.asarray(lava) - ref).max()),
           "lava_acc": float((np.asarray(lava).argmax(1) == y).mean()),
           "seconds": time.perf_counter() - t0, "latency": build.schedule["latency"]}
    print(f"\nLava check: {path.name} compiled for loihi2 ({'fits' if doc['fits'] else 'DOES NOT FIT'}"
          f", {doc['cores']} cores); Lava fixed_pt on {len(x)} test images "
          f"{'EQUALS' if doc['lava_equals_reference_fixed'] else 'DIFFERS FROM'} the reference "
          f"fixed point (max |diff| {doc['max_abs_diff']:.3g}); {doc['seconds']:.0f} s")
    return doc


# ---- plots and JSON -------------------------------------------------------------------------
def _plot(doc: dict, path: Path) -> None:
    """Left: pooled test accuracy of uniform T and the mixed pick with the paired interval;
    right: accuracy vs T of the conversion forms (tables 2-4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtdeploy.io import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric in zip(axes[:2], ("mean_T", "synops")):
        rows = [r for r in doc["table1"][metric] if r["compared"]]
        xs = [r["uniform_T"] for r in rows]
        ax.plot(xs, [100 * r["uniform_acc"] for r in rows], "s--", color="tab:red",
                label="uniform T (same fine-tuning)")
        err = np.array([[100 * (r["delta"] - r["ci95"][0]), 100 * (r["ci95"][1] - r["delta"])]
                        for r in rows]).T
        ax.errorbar(xs, [100 * r["mixed_acc"] for r in rows], yerr=err if len(rows) else None,
                    fmt="o-", color="tab:blue", capsize=3,
                    label="mixed pick at <= cost (95% CI of the paired delta)")
        ax.plot(xs, [100 * r["oracle_acc"] for r in rows], "^:", color="0.5",
                label="oracle mixed (picked on test)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"uniform T (mixed compared at <= its {metric})")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    conv = doc["table2_3"]["rows"]
    for form, style in (("avg-repeat", "o-"), ("stream v0=th/2", "s--"), ("stream v0=0", "v:")):
        pts = [r for r in conv if r["form"] == form]
        ax.plot([r["T"] for r in pts], [100 * r["acc_float"] for r in pts], style, label=form)
    tpp = doc["table4"]["rows"]
    ts = sorted({r["T"] for r in tpp if r["neuron"] == "tpp"})
    ax.plot(ts, [100 * np.mean([r["acc_float"] for r in tpp if r["neuron"] == "tpp" and r["T"] == t])
                 for t in ts], "d-.", label="TPP (mean over seeds)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("T (all layers)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.suptitle("Fashion-MNIST QCFS CNN: mixed vs uniform T (left, middle); conversion forms "
                 "(right)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _jsonable(table1: dict) -> dict:
    """Picks as their candidates' records (levels, costs, validation accuracy)."""
    keep = ("levels", "val_acc", "mean_T", "sum_T", "synops")
    return {metric: [{**{k: v for k, v in r.items() if k != "picks"},
                      "picks": [{k: ({f: v[f] for f in keep} if isinstance(v, dict) and "levels" in v
                                     else v) for k, v in p.items()} for p in r["picks"]]}
                     for r in rows] for metric, rows in table1.items()}


# ---- main -------------------------------------------------------------------------------------
def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="Fashion-MNIST IDX folder (default: the Debian package's)")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (pooled in table 1)")
    ap.add_argument("--train-samples", type=int, default=15000)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--levels", default="8,8,8,8", help="levels the models are trained with")
    ap.add_argument("--level-choices", default="1,2,3,4,6,8")
    ap.add_argument("--ft-epochs", type=int, default=1, help="fine-tuning epochs per candidate")
    ap.add_argument("--thresholds-only", action="store_true",
                    help="fine-tune thresholds only (default: thresholds and weights)")
    ap.add_argument("--max-finetune", type=int, default=12)
    ap.add_argument("--per-uniform", type=int, default=2)
    ap.add_argument("--screen-samples", type=int, default=1000)
    ap.add_argument("--test-samples", type=int, default=None, help="default: all 10,000")
    ap.add_argument("--fixed-samples", type=int, default=2000,
                    help="test images for the compiled rows of table 1 (float and fixed)")
    ap.add_argument("--sim-samples", type=int, default=1000, help="test images for tables 2-5")
    ap.add_argument("--detail-levels", default="2,4", help="uniform T whose table 1 rows are "
                    "compiled and simulated (float, fixed point, energy)")
    ap.add_argument("--lava-samples", type=int, default=8, help="0: no Lava run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a smoke run: one seed, tiny settings")
    ap.add_argument("--cache-dir", default=str(ROOT / "build/fashion"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fashion"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)   # search:SEED or tables (internal)
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.train_samples, a.train_epochs, a.level_choices = "0", 200, 1, "1,2,4"
        a.ft_epochs, a.max_finetune, a.per_uniform, a.screen_samples = 1, 6, 1, 100
        a.test_samples, a.fixed_samples, a.sim_samples = 300, 100, 100
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.trained_levels = [int(v) for v in a.levels.split(",")]
    a.level_choices = [int(v) for v in a.level_choices.split(",")]
    a.detail_levels = [int(v) for v in a.detail_levels.split(",")]
    a.sweep_T = [1, 2, 4, 8, 16] if not a.quick else [1, 4]
    a.flex_T = [1, 2, 3, 4, 6, 8, 12, 16] if not a.quick else [2]
    a.tpp_seeds = [0, 1, 2] if not a.quick else [0]
    return a


def _split(args) -> dict:
    split = EXAMPLE.load_split(args.data_dir, **({"val_samples": 60, "calib_samples": 150}
                                                 if args.quick else {}))
    if args.test_samples:
        split["test"] = tuple(a[:args.test_samples] for a in split["test"])
    return split


def _key(args, *names) -> str:
    """A cache folder name from the settings that change a worker's results."""
    text = json.dumps({n: getattr(args, n) for n in names}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


TRAIN_KEYS = ("data_dir", "train_samples", "train_epochs", "trained_levels", "quick")
SEARCH_KEYS = TRAIN_KEYS + ("level_choices", "ft_epochs", "thresholds_only", "max_finetune",
                            "per_uniform", "screen_samples", "test_samples", "detail_levels")
TABLE_KEYS = TRAIN_KEYS + ("sim_samples", "sweep_T", "flex_T", "tpp_seeds", "seeds")


def tables_worker(args, out: Path) -> None:
    """Tables 2-5 (the model-only rows) on the first seed's model, in a process of its own."""
    split = _split(args)
    model = EXAMPLE.trained_model(split, args.trained_levels, args.train_epochs, args.seeds[0],
                                  args.train_samples, Path(args.cache_dir), args.threads)
    x, y = (a[:args.sim_samples] for a in split["test"])
    runner = Runner()
    doc = {"table2_3": table2_3(args, runner, model, x, y),
           "table4": table4(args, runner, model, x, y),
           "table5": table5(args, runner, model, None, x, y)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "tables.json", doc)


def _run_workers(args, argv, jobs: list[tuple[str, Path, str]]) -> None:
    """Run the uncached workers as parallel processes (one per seed, one for tables 2-5), each
    logging to ``<its folder>.log``, shown when it ends; any failure stops the benchmark."""
    procs = []
    for name, out, marker in jobs:
        if (out / marker).is_file():
            print(f"{name}: cached in {out}")
            continue
        log = out.parent / f"{out.name}.log"
        with open(log, "w") as fh:
            procs.append((name, log, subprocess.Popen(
                [sys.executable, __file__, *argv, "--worker", name], stdout=fh,
                stderr=subprocess.STDOUT)))
        print(f"{name}: running, log {log}", flush=True)
    for name, log, proc in procs:
        code = proc.wait()
        print("".join(f"[{name}] {line}" for line in log.read_text().splitlines(True)
                      if "mtdeploy search:" not in line), end="", flush=True)
        if code != 0:
            raise SystemExit(f"worker {name} failed (exit {code}); log {log}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.cache_dir) / "bench"
    search_dirs = {seed: work / f"search-{_key(args, *SEARCH_KEYS)}" / f"seed{seed}"
                   for seed in args.seeds}
    tables_dir = work / f"tables-{_key(args, *TABLE_KEYS)}"
    if args.worker:
        kind, _, seed = args.worker.partition(":")
        if kind == "search":
            search_worker(args, int(seed), search_dirs[int(seed)])
        else:
            tables_worker(args, tables_dir)
        return 0
    if args.lava_samples:
        # Lava sets multiprocessing's start method when imported; a progress bar (tqdm) set it
        # first would make that import fail, so load Lava before anything draws one.
        from mtdeploy.targets.loihi2.lava import describe_lava  # noqa: F401
    t_start = time.perf_counter()
    split = _split(args)
    print(f"Fashion-MNIST: {len(split['train'][0])} training images ({args.train_samples} used "
          f"per model, {args.train_epochs} epochs), {len(split['val'][0])} validation (split from "
          f"train: selection), {len(split['calib'][0])} calibration, {len(split['test'][0])} test; "
          f"seeds {args.seeds}", flush=True)
    t_train = time.perf_counter()
    for seed in args.seeds:   # trained (or found in the cache) before the workers start
        EXAMPLE.trained_model(split, args.trained_levels, args.train_epochs, seed,
                              args.train_samples, Path(args.cache_dir), args.threads)
    t_train = time.perf_counter() - t_train
    for d in [*search_dirs.values(), tables_dir]:
        d.parent.mkdir(parents=True, exist_ok=True)
    _run_workers(args, argv, [(f"search:{s}", d, "search.json") for s, d in search_dirs.items()]
                 + [("tables", tables_dir, "tables.json")])
    runs = [_load_search(search_dirs[s]) for s in args.seeds]
    runner = Runner()
    doc = {"table1": table1(args, runs, runner, split)}
    tables = json.loads((tables_dir / "tables.json").read_text())
    _print_tables(tables)
    x, y = (a[:args.sim_samples] for a in split["test"])
    chosen = _chosen(doc["table1"]["mean_T"], args)
    if chosen is not None:
        first = Path(runs[0]["model"])
        tables["table5"]["rows"] += table5(args, runner, first, chosen, x, y, flex=False)["rows"]
    doc.update(tables)
    if args.lava_samples and chosen is not None:
        xt, yt = split["test"]
        doc["lava"] = lava_check(args, chosen, xt[:args.lava_samples], yt[:args.lava_samples], work)
    doc["table1"] = _jsonable(doc["table1"])
    doc["timing"] = {"total_seconds": time.perf_counter() - t_start, "train_seconds": t_train,
                     "search_seconds": {r["seed"]: r["search_seconds"] for r in runs}}
    doc["settings"] = {k: v for k, v in vars(args).items()}
    doc["search_settings"] = runs[0]["settings"]
    doc["command"] = "benchmarks/bench_fashion.py " + " ".join(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), doc)
    _plot(doc, out.with_suffix(".png"))
    print(f"\nbenchmark time {doc['timing']['total_seconds']:.0f} s (training {t_train:.0f} s "
          f"here, searches {', '.join(f'{v:.0f}' for v in doc['timing']['search_seconds'].values())}"
          f" s each, in parallel); wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0 if doc.get("lava", {}).get("lava_equals_reference_fixed", True) else 1


def _print_tables(tables: dict) -> None:
    """Tables 2-5 as the worker measured them (it printed them too, into its log)."""
    print("\nTables 2-3 (QCFS T sweep; OPI v0 = theta/2 vs 0)\n"
          f"{'T':>3} {'form':>16} " + ROW_HEAD)
    for r in tables["table2_3"]["rows"]:
        print(f"{r['T']:>3} {r['form']:>16} " + _fmt(r))
    print(f"\nTable 4 (TPP vs streaming IF at T != L)\n{'T':>3} {'neuron':>10} " + ROW_HEAD)
    for r in tables["table4"]["rows"]:
        name = "IF" if r["neuron"] == "if" else f"TPP s={r['tpp_seed']}"
        print(f"{r['T']:>3} {name:>10} " + _fmt(r))
    print(f"\nTable 5 (temporal flexibility)\n{'T':>8} {'alignment':>10} " + ROW_HEAD)
    for r in tables["table5"]["rows"]:
        print(f"{r['T']:>8} {r['alignment']:>10} " + _fmt(r))


def _chosen(rows: list[dict], args) -> Path | None:
    """The deployed configuration: the first seed's mixed pick at the lowest detailed mean T."""
    for r in rows:
        if r["compared"] and r["uniform_T"] in args.detail_levels:
            return Path(r["picks"][0]["mixed"]["path"])
    return None


if __name__ == "__main__":
    sys.exit(main())
