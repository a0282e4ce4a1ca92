"""``mtdeploy`` command line: parses, calls :mod:`mtdeploy.api`, prints, maps errors to exit codes.

Exit codes: 0 ok, 1 internal error (or `ladder` found a divergence), 2 bad input, 3 does not fit
the target, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mtdeploy import __version__
from mtdeploy.errors import InputError, MtdeployError


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W, C,L or F, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


def _timesteps(spec: str | None):
    """``--timesteps``: an integer for all layers, a JSON object {layer: T}, or a JSON file."""
    if spec is None:
        return None
    text = spec.strip()
    if text.isdigit():
        return int(text)
    if Path(text).is_file():
        text = Path(text).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"--timesteps: expected an integer, a JSON object or a JSON file, got "
                         f"{spec!r}") from None
    if not isinstance(value, (int, dict)) or isinstance(value, bool):
        raise InputError("--timesteps JSON must be an integer or an object {layer: T}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same prefix and exit code as ours
        self.print_usage(sys.stderr)
        print(f"mtdeploy: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mtdeploy", description="Deploy mixed-timestep spiking neural networks "
                "(QCFS-trained PyTorch ANNs) on Loihi-style neuromorphic chips.")
    p.add_argument("--version", action="version", version=f"mtdeploy {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    model_help = ("a TorchScript .pt (safe), a torch.save'd nn.Module .pt (needs --trust-pickle: "
                  "unpickling runs code from the file), an mtdeploy .mtir, a NetX .net, or a "
                  "build's network.mtsnn.h5")

    c = sub.add_parser("compile", help="convert, check and build a model for a target")
    c.add_argument("model", help=model_help)
    c.add_argument("--target", default="loihi2", help="profile name (see 'mtdeploy targets') or YAML path")
    c.add_argument("--input-shape", type=_shape,
                   help="one sample's shape without batch, e.g. 1,8,8 (not needed for models saved "
                   "with mtdeploy.nn.save_traced, which record it)")
    c.add_argument("-o", "--output", default="build", help="build directory (default: build/)")
    c.add_argument("--timesteps", help="T for all layers (int), or per layer as JSON / a JSON file; "
                   "default: each layer's QCFS levels")
    c.add_argument("--alignment", default="avg-repeat", choices=["avg-repeat", "ttm", "none"])
    c.add_argument("--neuron", default="if", choices=["if", "tpp"])
    c.add_argument("--v-init", type=float, default=0.5,
                   help="initial membrane potential as a fraction of the threshold (0.5; 0 to compare)")
    c.add_argument("--input-max", type=float, help="largest |input| (sets the input's fixed-point "
                   "scale; default 1.0)")
    c.add_argument("--weight-bits", type=int, default=8)
    c.add_argument("--seed", type=int, default=0, help="seed of the TPP neurons' random stream")
    c.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled nn.Module (runs code from the file)")

    k = sub.add_parser("check", help="hardware budget findings only")
    k.add_argument("model", help=model_help)
    k.add_argument("--target", default="loihi2")
    k.add_argument("--input-shape", type=_shape,
                   help="one sample's shape without batch, e.g. 1,8,8 (not needed for models saved "
                   "with mtdeploy.nn.save_traced, which record it)")
    k.add_argument("--timesteps")
    k.add_argument("--json", action="store_true", help="findings as JSON on stdout")
    k.add_argument("--trust-pickle", action="store_true")

    s = sub.add_parser("simulate", help="run a build on inputs")
    s.add_argument("build", help="a build directory written by 'mtdeploy compile'")
    s.add_argument("--input", required=True, help="X.npy (N, *input_shape) or a labelled .npz (x, y)")
    s.add_argument("--backend", default="reference", choices=["reference", "lava"])
    s.add_argument("--fixed-point", action="store_true", help="integer arithmetic (as on Loihi)")
    s.add_argument("--seed", type=int, help="TPP seed (default: the build's)")
    s.add_argument("-o", "--output", help="write the outputs (N, classes) to this .npy")

    la = sub.add_parser("ladder", help="layer by layer: QCFS ANN -> float SNN -> fixed-point "
                        "SNN -> Lava; names the first layer that diverges")
    la.add_argument("build", help="a build directory written by 'mtdeploy compile'")
    la.add_argument("--input", required=True, help="X.npy or a labelled .npz (a few samples: "
                    "Lava's CPU simulator is slow)")
    la.add_argument("-n", "--samples", type=int, default=8, help="use the first N samples (8)")

    sub.add_parser("targets", help="list the hardware profiles and their sources")

    se = sub.add_parser("search", help="per-layer timestep search under a budget")
    se.add_argument("model", help=model_help)
    se.add_argument("--data", required=True, help="labelled samples (.npz with x, y); split into "
                    "calibration and validation unless --val is given")
    se.add_argument("--val", help="separate validation data (.npz with x, y)")
    se.add_argument("--val-fraction", type=float, default=0.3,
                    help="share of --data held out for validation (default 0.3, stratified)")
    se.add_argument("--budget", help="mean-T=4 | sum-T=24 | max-T=8 | synops=N (per sample) | "
                    "cores=N; default: the most accurate configuration")
    se.add_argument("--input-shape", type=_shape,
                    help="one sample's shape without batch, e.g. 1,8,8 (not needed for models saved "
                    "with mtdeploy.nn.save_traced, which record it)")
    se.add_argument("-o", "--output", required=True,
                    help="the searched model as TorchScript .pt (ready for 'mtdeploy compile')")
    se.add_argument("--front", help="Pareto front JSON (default: OUTPUT with .front.json)")
    se.add_argument("--plot", help="Pareto front plot (.png)")
    se.add_argument("--seed", type=int, default=0, help="seed of the split and fine-tuning (0)")
    se.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    se.add_argument("--epochs", type=int, default=5,
                    help="threshold fine-tuning epochs per candidate (default 5; 0: none)")
    se.add_argument("--finetune-weights", action="store_true",
                    help="fine-tune the weights too (thresholds only by default)")
    se.add_argument("--target", default="loihi2", help="profile for core counts (cores= budget)")
    se.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is "
                    "fastest for small models on a busy machine)")
    se.add_argument("--trust-pickle", action="store_true")
    return p


def _cmd_compile(a) -> int:
    from mtdeploy.api import compile_model

    build = compile_model(a.model, input_shape=a.input_shape, target=a.target, out_dir=a.output,
                          timesteps=_timesteps(a.timesteps), alignment=a.alignment, neuron=a.neuron,
                          v_init=a.v_init, seed=a.seed, input_max=a.input_max,
                          weight_bits=a.weight_bits, trust_pickle=a.trust_pickle)
    lat = build.report["latency"]
    print(f"compiled {build.graph.name} for {a.target} -> {build.out_dir}/")
    for row in build.report["layers"]:
        print(f"  {row['layer']:<28} {row['neuron']:<4} T={row['T']:<3} neurons={row['neurons']:<6} "
              f"window={row['window']}")
    print(f"  mean T {lat['mean_T']:.2f}, sum T {lat['sum_T']}, sequential latency "
          f"{lat['sequential_steps']} steps, pipelined interval {lat['pipeline_interval_steps']} steps")
    print(f"  files: {', '.join(build.files)}")
    return 0


def _cmd_check(a) -> int:
    from mtdeploy.api import load_model
    from mtdeploy.passes import ConvertOptions, convert

    graph = convert(load_model(a.model, a.input_shape, a.trust_pickle),
                    ConvertOptions(timesteps=_timesteps(a.timesteps)))
    return run_check(graph, a.target, a.json, sys.stdout)


def run_check(graph, target: str, json_output: bool, stream) -> int:
    """Print the budget report of ``graph`` on ``target`` (Markdown, or JSON); 0 fits, 3 not."""
    from mtdeploy.errors import DoesNotFitError
    from mtdeploy.targets.checker import check

    report = check(graph, target)
    stream.write((json.dumps(report.to_json(), indent=1) if json_output else report.to_markdown())
                 + "\n")
    return 0 if report.fits else DoesNotFitError.exit_code


def _cmd_simulate(a) -> int:
    import numpy as np

    from mtdeploy.api import simulate_build
    from mtdeploy.io import load_samples, save_npy

    x, y = load_samples(a.input)
    out, result = simulate_build(a.build, x, backend=a.backend, fixed_point=a.fixed_point,
                                 seed=a.seed, progress=sys.stderr.isatty())
    mode = "fixed-point" if a.fixed_point else "float"
    print(f"simulated {len(x)} samples ({a.backend}, {mode})")
    if result is not None:
        print(f"  SynOps per sample: {result.total_synops / max(len(x), 1):.1f}")
        if result.input_clipped:
            print(f"  warning: {result.input_clipped} input values saturated the fixed-point range; "
                  "recompile with a larger --input-max", file=sys.stderr)
    if y is not None:
        print(f"  accuracy: {float(np.mean(out.argmax(1) == y)):.4f}")
    if a.output:
        save_npy(a.output, out)
        print(f"  outputs -> {a.output}")
    return 0


def _cmd_ladder(a) -> int:
    from mtdeploy.api import load_build
    from mtdeploy.io import load_samples
    from mtdeploy.targets.loihi2.lava import first_divergence, format_ladder, ladder

    x, _ = load_samples(a.input)
    graph = load_build(a.build)
    rows = ladder(graph, x[: a.samples])
    n = min(len(x), a.samples)
    # ANN -> float SNN and fixed-point SNN -> Lava must agree exactly (avg-repeat); float ->
    # fixed differs by the quantization error, which is information, not a fault.
    exact_ann = graph.meta.get("alignment") == "avg-repeat" and graph.meta.get("neuron") == "if"
    pairs = ("ann-float", "fixed-lava") if exact_ann else ("fixed-lava",)
    print(format_ladder(rows, pairs))
    if not exact_ann:
        print("(ttm/none alignment or TPP neurons approximate the ANN: ann-float is information)")
    broken = [(pair, first_divergence(rows, pair)) for pair in pairs]
    broken = [(pair, row) for pair, row in broken if row is not None]
    quant = first_divergence(rows, "float-fixed")
    if quant is not None:
        print(f"float -> fixed point: quantization first changes spikes at layer {quant['layer']}")
    if not broken:
        print(f"ANN = float SNN and fixed-point SNN = Lava on every layer ({n} samples)")
        return 0
    for pair, row in broken:
        print(f"first divergence {pair}: layer {row['layer']}")
    return 1


def _cmd_targets(a) -> int:
    from mtdeploy.targets.profiles import list_profiles

    for profile in list_profiles():
        print(profile.describe())
    return 0


def _cmd_search(a) -> int:
    from mtdeploy.search.files import search_files
    from mtdeploy.search.front import front_table

    result = search_files(a.model, a.data, a.output, val=a.val, budget=a.budget,
                          input_shape=a.input_shape, front=a.front, plot=a.plot, seed=a.seed,
                          device=a.device, epochs=a.epochs, finetune_weights=a.finetune_weights,
                          val_fraction=a.val_fraction, target=a.target,
                          trust_pickle=a.trust_pickle, threads=a.threads,
                          progress=sys.stderr.isatty())
    c = result.chosen
    given = result.input_model
    print(f"searched {len(result.candidates)} fine-tuned configurations "
          f"({result.settings['configurations_measured']} measured) under "
          f"{result.budget or 'no budget'}")
    print(f"  input model: levels {list(given['levels'].values())}, "
          f"validation accuracy {100 * given['val_acc']:.2f}%")
    print(f"  chosen: levels {list(c.levels.values())}, mean T {c.costs['mean_T']:.2f}, "
          f"sum T {c.costs['sum_T']}, SynOps/sample {c.costs['synops']:.1f}, "
          f"validation accuracy {100 * c.val_acc:.2f}%")
    print(front_table(result, result.budget.metric if result.budget and
                      result.budget.metric in ("mean_T", "sum_T", "max_T", "synops") else "mean_T"))
    print(f"  model -> {a.output}; front -> {a.front or Path(a.output).with_suffix('.front.json')}"
          + (f"; plot -> {a.plot}" if a.plot else ""))
    return 0


COMMANDS = {"compile": _cmd_compile, "check": _cmd_check, "simulate": _cmd_simulate,
            "ladder": _cmd_ladder,
            "targets": _cmd_targets, "search": _cmd_search}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.verb](args)
    except MtdeployError as exc:
        print(f"mtdeploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mtdeploy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # e.g. `mtdeploy targets | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in mtdeploy, not the user's fault: say so plainly
        if os.environ.get("MTDEPLOY_DEBUG"):
            raise
        print(f"mtdeploy: internal error: {type(exc).__name__}: {exc}\n"
              "(set MTDEPLOY_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
