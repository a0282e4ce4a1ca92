"""Fixed-point fidelity benchmark: how much of a network survives mtdeploy's quantization, with
one power-of-two unit per layer (``--per-layer-scaling``) and with one per output channel (the
default on targets with per-neuron thresholds).

Three workloads, each against its float ANN (the float SNN equals the ANN exactly with
avg-repeat, so every difference here is quantization):
* random QCFS CNNs with mixed levels in {1..16} (mtdeploy.testing.random_cnn): argmax agreement
  of the fixed-point SNN with the ANN;
* the trained digits model (examples/digits, levels 8,4,2,4): test accuracy of the float SNN
  and of the fixed-point SNN;
* the ImageNet-layout QCFS ResNet-18 at 32x32 (random weights, QCFS thresholds calibrated to
  the 99.9th percentile of their inputs), two ways of randomising BatchNorm: ``randomize_bn``
  (statistics drawn independently of the activations) and ``data_bn`` (statistics measured on
  calibration data, then perturbed, He-initialised weights, so the activations are not
  swamped by the BN offsets). Per layer the share of non-zero weights kept; on 200 random
  inputs the argmax agreement, how much the logits vary across samples (std, distinct ANN
  classes, median top-2 margin), and the float ANN's own agreement with itself under input
  noise of 1e-5 (a network whose argmax moves under that much noise cannot agree with any
  fixed-point version of itself).

    .venv/bin/python benchmarks/bench_quantization.py [--samples 200] [--cnns 20] [--skip-cnns|digits|resnet]

Prints a table and writes benchmarks/results/quantization.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from architectures import calibrate, randomize_bn, resnet18  # noqa: E402

from mtdeploy.frontends import graph_from_module  # noqa: E402
from mtdeploy.passes import ConvertOptions, convert, quantize  # noqa: E402
from mtdeploy.passes.quantize import quantization_report  # noqa: E402
from mtdeploy.sim.ann import ann_forward  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402
from mtdeploy.testing import random_cnn  # noqa: E402

SCALINGS = {"per-layer": False, "per-channel": True}


def agreement(snn, x: np.ndarray, ann: np.ndarray) -> dict:
    fixed = simulate(snn, x, mode="fixed", record=False).output
    return {"argmax_agreement": float(np.mean(ann.argmax(1) == fixed.argmax(1))),
            "mean_abs_error": float(np.abs(fixed - ann).mean())}


def logit_spread(ann: np.ndarray) -> dict:
    top = np.sort(ann, 1)
    return {"logit_std_over_samples": float(ann.std(0).mean()),
            "ann_classes": int(len(np.unique(ann.argmax(1)))),
            "median_top2_margin": float(np.median(top[:, -1] - top[:, -2]))}


# ---- random mixed-level CNNs ---------------------------------------------------------------
#: (scaling, per_channel, weight bits, input bits, calibration bias correction): the default
#: compile, then what --calib and --input-bits 12 each add, then 12-bit weights (not Loihi 2's
#: 8-bit mantissa) for the limit the mantissa sets
CNN_CONFIGS = [("per-layer", False, 8, 8, False), ("per-channel", True, 8, 8, False),
               ("per-channel +calib", True, 8, 8, True),
               ("per-channel +calib i12", True, 8, 12, True),
               ("per-channel w12/i12", True, 12, 12, False)]
CALIB_SAMPLES = 512


def random_cnn_rows(n: int, samples: int) -> list[dict]:
    rows = []
    for scaling, per_channel, weight_bits, input_bits, calibrated in CNN_CONFIGS:
        rng = np.random.default_rng(0)
        calib_rng = np.random.default_rng(1)      # never the evaluation inputs' stream
        scores = []
        for _ in tqdm(range(n), desc=scaling, leave=False):
            graph = random_cnn(rng, size=8, channels=(6, 8), classes=10,
                               levels=[int(v) for v in rng.integers(1, 17, 2)])
            calib = calib_rng.uniform(-0.2, 1.4, (CALIB_SAMPLES, *graph.input.shape))
            snn = quantize(convert(graph, ConvertOptions(input_max=1.5)),
                           weight_bits=weight_bits, input_bits=input_bits,
                           per_channel=per_channel, calib=calib if calibrated else None)
            x = rng.uniform(-0.2, 1.4, (samples, *graph.input.shape))
            scores.append(agreement(snn, x, ann_forward(snn, x).numpy())["argmax_agreement"])
        scores = np.asarray(scores)
        rows.append({"case": f"random mixed-level CNNs (n={n})", "scaling": scaling,
                     "argmax_agreement": float(scores.mean()),
                     "argmax_agreement_sem": float(scores.std(ddof=1) / np.sqrt(n)),
                     "argmax_agreement_min": float(scores.min())})
    return rows


# ---- trained models: digits and Fashion-MNIST ---------------------------------------------------
#: (scaling, per_channel, input bits, calibration bias correction)
TRAINED_CONFIGS = [("per-layer", False, 8, False), ("per-channel", True, 8, False),
                   ("per-channel +calib", True, 8, True),
                   ("per-channel +calib i12", True, 12, True)]


def trained_rows(case: str, graph, x, y, calib) -> list[dict]:
    """Float SNN vs fixed point (each configuration) on a trained model's test set."""
    float_acc = float((simulate(convert(graph, ConvertOptions()), x, mode="float",
                                record=False).output.argmax(1) == y).mean())
    rows = []
    for scaling, per_channel, input_bits, calibrated in TRAINED_CONFIGS:
        snn = quantize(convert(graph, ConvertOptions()), input_bits=input_bits,
                       per_channel=per_channel, calib=calib if calibrated else None)
        fixed_acc = float((simulate(snn, x, mode="fixed", record=False).output.argmax(1)
                           == y).mean())
        rows.append({"case": f"{case} ({len(y)} test samples)", "scaling": scaling,
                     "float_snn_accuracy": float_acc, "fixed_accuracy": fixed_acc,
                     "points_lost": 100 * (float_acc - fixed_acc)})
    return rows


def digits_rows(work: Path) -> list[dict]:
    from bench_conversion_digits import _train_example

    from mtdeploy.api import load_model

    model_dir = _train_example(work / "digits", "8,4,2,4", None)
    data = np.load(model_dir / "digits_test.npz")
    calib = np.load(model_dir / "digits_calib.npz")["x"].astype(np.float64)
    graph = load_model(model_dir / "model.pt", input_shape=(1, 8, 8))
    return trained_rows("digits (trained, levels 8,4,2,4)", graph,
                        data["x"].astype(np.float64), data["y"], calib)


FASHION_DATA = Path("/usr/share/datasets/fashion-mnist")


def fashion_rows() -> list[dict]:
    """The Fashion-MNIST example model (levels 8,8,8,8, 2 epochs, seed 0: bench_fashion.py's
    base model, cached under build/fashion/) on all 10,000 test images; calibration data is
    the example's calibration split (training images)."""
    from bench_fashion import EXAMPLE

    from mtdeploy.api import load_model

    split = EXAMPLE.load_split()
    model = EXAMPLE.trained_model(split, [8, 8, 8, 8], 2, 0)
    x, y = split["test"]
    return trained_rows("fashion-mnist (trained, levels 8,8,8,8)", load_model(model),
                        x.astype(np.float64), y, split["calib"][0][:CALIB_SAMPLES])


# ---- ResNet-18, ImageNet layout, 32 px ------------------------------------------------------
def he_init(model: nn.Module, seed: int) -> nn.Module:
    """He-normal weights for every conv and linear layer (PyTorch's default init is 2.45x
    smaller, which lets BatchNorm offsets swamp the activations in a random network)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
    return model


def data_bn(model: nn.Module, x: torch.Tensor, seed: int) -> nn.Module:
    """BatchNorm as in a trained network but randomised: random affine parameters, running
    statistics measured on ``x`` (layer by layer, each seeing the ones before it set) and then
    perturbed (mean by N(0, 0.2) standard deviations, variance by a factor in [0.5, 2])."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.8 + 0.6)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
        for m in bns:
            seen: list[torch.Tensor] = []
            hook = m.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
            model.eval()(x)
            hook.remove()
            mean, var = seen[0].mean((0, 2, 3)), seen[0].var((0, 2, 3))
            noise = torch.randn(m.num_features, generator=gen) * 0.2
            m.running_mean.copy_(mean + noise * var.sqrt())
            m.running_var.copy_(var * (torch.rand(m.num_features, generator=gen) * 1.5 + 0.5))
    return model.eval()


def resnet18_model(bn: str) -> nn.Module:
    torch.manual_seed(0)
    model = resnet18(imagenet=True)
    calib = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    if bn == "randomize_bn":
        randomize_bn(model, seed=1)
    else:
        data_bn(he_init(model, 3), calib, seed=1)
    return calibrate(model, calib)


def resnet18_rows(samples: int, bn: str) -> list[dict]:
    model = resnet18_model(bn)
    x = torch.rand(samples, 3, 32, 32, generator=torch.Generator().manual_seed(5)).numpy()
    graph = convert(graph_from_module(model, (3, 32, 32)), ConvertOptions(input_max=1.0))
    ann = ann_forward(graph, x).numpy()
    noisy = x + np.random.default_rng(9).uniform(-1e-5, 1e-5, x.shape)
    self_agreement = float(np.mean(ann_forward(graph, noisy).numpy().argmax(1) == ann.argmax(1)))
    rows = []
    for scaling, per_channel in SCALINGS.items():
        t0 = time.perf_counter()
        snn = quantize(graph.copy(), per_channel=per_channel)
        seconds = time.perf_counter() - t0
        report = quantization_report(snn)
        worst = min(report, key=lambda r: r["nonzero_kept"])
        rows.append({"case": f"resnet18-imagenet-32px {bn}", "scaling": scaling,
                     "quantize_seconds": seconds, "layers": len(report),
                     "min_nonzero_kept": worst["nonzero_kept"], "worst_layer": worst["layer"],
                     "layers_below_95pct": sum(r["nonzero_kept"] < 0.95 for r in report),
                     "per_channel_layers": sum(r["units"] == "per channel" for r in report),
                     "ann_self_agreement_noise_1e-5": self_agreement,
                     **logit_spread(ann), **agreement(snn, x, ann)})
    return rows


def _print(rows: list[dict]) -> None:
    for r in rows:
        head = f"{r['case']:<40} {r['scaling']:<23}"
        if "fixed_accuracy" in r:
            print(f"{head} float SNN {100 * r['float_snn_accuracy']:.2f}%  fixed "
                  f"{100 * r['fixed_accuracy']:.2f}%  ({r['points_lost']:+.2f} points lost)")
        elif "min_nonzero_kept" in r:
            print(f"{head} agreement {r['argmax_agreement']:.3f}  min kept "
                  f"{100 * r['min_nonzero_kept']:.1f}% ({r['worst_layer']}), "
                  f"{r['layers_below_95pct']} layers < 95%; logit std "
                  f"{r['logit_std_over_samples']:.3g}, {r['ann_classes']} ANN classes, top-2 margin "
                  f"{r['median_top2_margin']:.3g}; ANN vs ANN(x+1e-5 noise) "
                  f"{r['ann_self_agreement_noise_1e-5']:.3f}")
        else:
            print(f"{head} agreement {r['argmax_agreement']:.4f} +- "
                  f"{r['argmax_agreement_sem']:.4f} (s.e.m.; worst network "
                  f"{r['argmax_agreement_min']:.3f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--cnns", type=int, default=50)
    ap.add_argument("--skip-cnns", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--skip-fashion", action="store_true",
                    help="(skipped anyway when Fashion-MNIST is not installed)")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--work", default=str(HERE.parent / "build" / "bench-quantization"))
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "quantization.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    stages = [] if a.skip_cnns else [("random CNNs", lambda: random_cnn_rows(a.cnns, a.samples))]
    if not a.skip_digits:
        stages.append(("digits", lambda: digits_rows(Path(a.work))))
    if not a.skip_fashion:
        if FASHION_DATA.is_dir():
            stages.append(("fashion-mnist", fashion_rows))
        else:
            print(f"fashion-mnist: skipped ({FASHION_DATA} is missing; apt-get install "
                  "dataset-fashion-mnist)", file=sys.stderr)
    if not a.skip_resnet:
        stages += [(f"resnet18 {bn}", lambda bn=bn: resnet18_rows(a.samples, bn))
                   for bn in ("randomize_bn", "data_bn")]
    rows: list[dict] = []
    for k, (name, stage) in enumerate(stages, 1):
        t0 = time.perf_counter()
        print(f"[{k}/{len(stages)}] {name} ...", file=sys.stderr, flush=True)
        new = stage()
        print(f"[{k}/{len(stages)}] {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        _print(new)
        rows += new
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
