"""The command line's options, one function per verb, and the map from the API's parameter
names to those options (the API names parameters in its errors; users typed options)."""
from __future__ import annotations

import argparse
import re
import sys

from mtdeploy.version import __version__
from mtdeploy.cli.values import path, seed, shape

MODEL_HELP = ("a TorchScript .pt (safe), a torch.save'd nn.Module .pt (needs --trust-pickle: "
              "unpickling runs code from the file), an mtdeploy .mtir, a NetX .net, or a "
              "build's network.mtsnn.h5")
INPUT_SHAPE_HELP = ("one sample's shape without batch, e.g. 1,8,8 (not needed for models saved "
                    "with mtdeploy.nn.save_traced, which record it)")
BUILD_HELP = "a build directory written by 'mtdeploy compile'"

# Per verb: API parameter -> the option that sets it, for error messages that lead with the
# parameter's name (``budget 'x': ...`` is shown as ``--budget 'x': ...``).
OPTIONS = {
    "compile": {"timesteps": "--timesteps", "input_max": "--input-max", "calib": "--calib",
                "alignment": "--alignment", "neuron": "--neuron", "v_init": "--v-init",
                "seed": "--seed", "weight_bits": "--weight-bits", "input_bits": "--input-bits",
                "per_layer_scaling": "--per-layer-scaling"},
    "check": {"timesteps": "--timesteps"},
    "simulate": {"backend": "--backend", "seed": "--seed", "input": "--input",
                 "device": "--device", "workers": "--workers",
                 "memory_budget": "--memory-budget", "batch_size": "--batch-size",
                 "precision": "--float32"},
    "ladder": {"samples": "-n", "input": "--input", "device": "--device"},
    "search": {"budget": "--budget", "val_fraction": "--val-fraction", "device": "--device",
               "finetune_epochs": "--epochs", "threads": "--threads", "seed": "--seed",
               "level_choices": "--level-choices", "screen_samples": "--screen-samples"},
}
_LEADING_NAMES = re.compile(r"[a-z_]+(?:, [a-z_]+)*(?![\w-])")


def in_options(verb: str, message: str) -> str:
    """``message`` with the parameter names it starts with spelled as ``verb``'s options;
    unchanged unless every leading name is one of them."""
    options = OPTIONS.get(verb, {})
    lead = _LEADING_NAMES.match(message)
    if not lead or not all(name in options for name in lead.group().split(", ")):
        return message
    return ", ".join(options[n] for n in lead.group().split(", ")) + message[lead.end():]


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
    _add_compile(sub)
    _add_check(sub)
    _add_simulate(sub)
    _add_ladder(sub)
    sub.add_parser("targets", help="list the hardware profiles and their sources")
    _add_search(sub)
    return p


def _add_model(p, target_help: str | None) -> None:
    """The model and what reading it needs: every verb that imports a model takes these."""
    p.add_argument("model", type=path, help=MODEL_HELP)
    p.add_argument("--target", type=path, default="loihi2", help=target_help)
    p.add_argument("--input-shape", type=shape, help=INPUT_SHAPE_HELP)


def _add_trust_pickle(p) -> None:
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled nn.Module (runs code from the file)")


def _add_compile(sub) -> None:
    c = sub.add_parser("compile", help="convert, check and build a model for a target")
    _add_model(c, "profile name (see 'mtdeploy targets') or YAML path")
    c.add_argument("-o", "--output", type=path, default="build",
                   help="build directory (default: build/); replaced only if it is empty or a "
                   "build mtdeploy wrote")
    c.add_argument("--force", action="store_true",
                   help="replace -o even if it holds other files (never a file, the current "
                   "directory or the input model's directory)")
    c.add_argument("--timesteps", help="T for all layers (int), or per layer as JSON / a JSON "
                   "file; default: each layer's QCFS levels")
    c.add_argument("--alignment", default="avg-repeat", choices=["avg-repeat", "ttm", "none"])
    c.add_argument("--neuron", default="if", choices=["if", "tpp"])
    c.add_argument("--v-init", type=float, default=0.5,
                   help="initial membrane potential as a fraction of the threshold (0.5; 0 to "
                   "compare)")
    c.add_argument("--input-max", type=float, help="largest |input| (sets the input's fixed-point "
                   "scale; default: from --calib, else the range save_traced recorded, else 1.0)")
    c.add_argument("--calib", type=path, help="sample inputs (.npy, .npz with x, or IDX): their "
                   "largest |x| sets --input-max when it is not given, compile reports how many "
                   "saturate the input's fixed-point range, and each neuron's bias absorbs the "
                   "mean current its weights' rounding costs on them (at most 512 samples)")
    c.add_argument("--weight-bits", type=int, default=8)
    c.add_argument("--input-bits", type=int, help="width of the first layer's graded input "
                   "values (default: 8, which stock netx's 13-bit bias holds; Loihi 2 "
                   "carries up to 24/32, and 12 is more faithful)")
    c.add_argument("--per-layer-scaling", action="store_true",
                   help="one fixed-point unit per layer, not per output channel (for targets "
                   "without per-neuron thresholds; the profile's neuron.per_neuron_threshold)")
    c.add_argument("--seed", type=seed, default=0, help="seed of the TPP neurons' random stream")
    _add_trust_pickle(c)


def _add_check(sub) -> None:
    k = sub.add_parser("check", help="hardware budget findings only")
    _add_model(k, None)
    k.add_argument("--timesteps")
    k.add_argument("--json", action="store_true", help="findings as JSON on stdout")
    _add_trust_pickle(k)


def _add_simulate(sub) -> None:
    s = sub.add_parser("simulate", help="run a build on inputs")
    s.add_argument("build", type=path, help=BUILD_HELP)
    s.add_argument("--input", type=path, required=True,
                   help="X.npy (N, *input_shape; memory-mapped, read a batch at a time), a "
                   "labelled .npz (x, y), or IDX data (an images file with its labels file "
                   "beside it, or a directory holding one pair; .gz or plain)")
    s.add_argument("--backend", default="reference", choices=["reference", "lava"])
    s.add_argument("--fixed-point", action="store_true", help="integer arithmetic (as on Loihi)")
    s.add_argument("--float32", dest="precision", action="store_const", const="float32",
                   default="float64", help="reference float mode in float32: faster, rounded "
                   "as a float32 network (default float64: the ANN's values)")
    s.add_argument("--seed", type=seed, help="TPP seed (default: the build's)")
    s.add_argument("-o", "--output", type=path, help="write the outputs (N, classes) to this .npy (written "
                   "as the batches finish, renamed into place at the end)")
    _add_device(s)
    s.add_argument("--workers", type=_positive, default=1,
                   help="reference backend: simulate on N processes of this machine (gloo); the "
                   "outputs equal one process's (or start under torchrun --nproc-per-node N)")
    s.add_argument("--memory-budget", type=_byte_size, default="1G",
                   help="reference backend: bytes of tensors one batch may hold, which sizes the "
                   "batches (e.g. 512M, 2G; default 1G)")
    s.add_argument("--batch-size", type=_positive, help="samples per batch (default: what fits "
                   "--memory-budget)")
    s.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                   help="Lava backend: one sample per full latency instead of one per pipelined "
                   "interval")


def _add_device(p) -> None:
    p.add_argument("--device", default="cpu", help="torch device of the reference simulator: "
                   "cpu (default) or cuda")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _levels_list(text: str) -> list[int]:
    """``--level-choices``: comma-separated positive integers."""
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got "
                                         f"{text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got "
                                         f"{text!r}")
    return levels


def _byte_size(text: str) -> int:
    """``--memory-budget``: bytes, or a number with K, M, G (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if not match or float(match.group(1)) * units[match.group(2).upper()] < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 2G, got {text!r}")
    return int(float(match.group(1)) * units[match.group(2).upper()])


def _add_ladder(sub) -> None:
    la = sub.add_parser("ladder", help="layer by layer: QCFS ANN -> float SNN -> fixed-point "
                        "SNN -> Lava; names the first layer that diverges")
    la.add_argument("build", type=path, help=BUILD_HELP)
    la.add_argument("--input", type=path, required=True, help="X.npy, a labelled .npz or IDX data (a few samples: "
                    "Lava's CPU simulator is slow)")
    la.add_argument("-n", "--samples", type=int, default=8, help="use the first N samples (8)")
    _add_device(la)


def _add_search(sub) -> None:
    se = sub.add_parser("search", help="per-layer timestep search under a budget")
    _add_model(se, "profile for core counts (cores= budget)")
    se.add_argument("--data", type=path, required=True, help="labelled samples (.npz with x, y, or IDX "
                    "images with labels beside them, or a directory of one pair); split into "
                    "calibration and validation unless --val is given")
    se.add_argument("--val", type=path, help="separate validation data (.npz with x, y, or IDX)")
    se.add_argument("--val-fraction", type=float, default=0.3,
                    help="share of --data held out for validation (default 0.3, stratified)")
    se.add_argument("--budget", help="mean-T=4 | sum-T=24 | max-T=8 | synops=N (per sample) | "
                    "cores=N; default: the most accurate configuration")
    se.add_argument("-o", "--output", type=path, required=True,
                    help="the searched model as TorchScript .pt (ready for 'mtdeploy compile')")
    se.add_argument("--front", type=path, help="Pareto front JSON (default: OUTPUT with .front.json)")
    se.add_argument("--plot", type=path, help="Pareto front plot (.png)")
    se.add_argument("--seed", type=seed, default=0, help="seed of the split and fine-tuning (0)")
    se.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    se.add_argument("--epochs", type=int, default=5,
                    help="threshold fine-tuning epochs per candidate (default 5; 0: none)")
    se.add_argument("--finetune-weights", action="store_true",
                    help="fine-tune the weights too (thresholds only by default)")
    se.add_argument("--level-choices", type=_levels_list, default="1,2,4,8,16",
                    help="the levels (= time steps) each layer may get, comma-separated "
                    "(default 1,2,4,8,16; e.g. 1,2,3,4,6,8 for finer choices)")
    se.add_argument("--screen-samples", type=_positive, help="rank configurations on a seeded "
                    "subset of this many calibration samples (faster; fine-tuning and scoring "
                    "use all of them)")
    se.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is "
                    "fastest for small models on a busy machine)")
    _add_trust_pickle(se)
