"""Fixed-point fidelity benchmark: how much of a network survives mtdeploy's quantization, with
one power-of-two unit per layer (``--per-layer-scaling``), with one per output channel (the
default on targets with per-neuron thresholds), with calibration bias correction (``--calib``)
and with 12-bit inputs (``--input-bits 12``).

Workloads, each against its float ANN (the float SNN equals the ANN exactly with avg-repeat,
so every difference here is quantization):
* random QCFS CNNs with mixed levels in {1..16} (mtdeploy.testing.random_cnn): argmax agreement
  of the fixed-point SNN with the ANN (mean, s.e.m. and worst over the networks; calibration
  samples are a stream of their own, never the evaluation inputs);
* the trained digits model (examples/digits, levels 8,4,2,4; calibration: its calib split) and
  the Fashion-MNIST example model (levels 8,8,8,8, 2 epochs; all 10,000 test images; skipped
  when the dataset is not installed): test accuracy of the float SNN and of the fixed-point SNN;
* the same ResNet-18 as below trained one epoch on 12,000 Fashion-MNIST images padded to
  3x32x32 (cached under --work): agreement on the first test images;
* the ImageNet-layout QCFS ResNet-18 at 32x32 (random weights, QCFS thresholds calibrated to
  the 99.9th percentile of their inputs on 64 inputs of the case's kind), four constructions
  (:data:`RESNET_CASES`): ``randomize_bn`` (BatchNorm statistics drawn independently of the
  activations; uniform i.i.d. pixels); ``data_bn`` (He-initialised weights, statistics measured
  on the calibration inputs, then perturbed; uniform pixels); and issue 16's must-show row,
  ``data_bn`` with each residual block's last BatchNorm gamma in U(0.1, 0.3) (torchvision's
  ``zero_init_residual`` generalised) on smooth random images (:func:`smooth_images`), also
  with 16 QCFS levels. Each with per-layer units, per-channel units, and per-channel units with
  12-bit inputs. Per layer the share of non-zero weights kept; on 200 random inputs
  the argmax agreement, how much the logits vary across samples (std, distinct ANN classes,
  median top-2 margin), the float ANN's own agreement with itself under input noise of 1e-5
  and 1e-3, and (per-channel rows) the agreement when only the input or only one block's
  weights are rounded, in the float ANN. A random deep QCFS network is chaotic: the share of
  activations that 1e-5 of input noise moves grows several-fold per layer (printed for the
  first populations and the last), so any perturbation (input noise, a rounded input, one
  block's rounded weights) reaches a tenth of the last block's activations and moves the
  argmax of many samples whose logits vary; no fixed-point version can agree beyond that.

    .venv/bin/python benchmarks/bench_quantization.py [--samples 200] [--cnns 50] \
        [--skip-cnns|digits|fashion|resnet]

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

from architectures import BasicBlock, calibrate, randomize_bn, resnet18  # noqa: E402

from mtdeploy.frontends import graph_from_module  # noqa: E402
from mtdeploy.ir.snn import populations  # noqa: E402
from mtdeploy.passes import ConvertOptions, convert, quantize  # noqa: E402
from mtdeploy.passes.quantize import quantization_report  # noqa: E402
from mtdeploy.sim.ann import ann_forward  # noqa: E402
from mtdeploy.sim.reference import quantize_input, simulate  # noqa: E402
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


def data_bn(model: nn.Module, x: torch.Tensor, seed: int,
            residual_gamma: tuple[float, float] | None = None) -> nn.Module:
    """BatchNorm as in a trained network but randomised: random affine parameters (gamma
    U(0.6, 1.4), beta N(0, 0.2)), running statistics measured on ``x`` (layer by layer, each
    seeing the ones before it set) and then perturbed (mean by N(0, 0.2) standard deviations,
    variance by a factor in [0.5, 2]). ``residual_gamma``: each residual block's last gamma
    drawn from U(lo, hi) instead (torchvision's ``zero_init_residual`` generalised: blocks
    start near their shortcut)."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    last = {id(b.residual_function[-1]) for b in model.modules() if isinstance(b, BasicBlock)}
    with torch.no_grad():
        for m in bns:
            lo, hi = residual_gamma if residual_gamma and id(m) in last else (0.6, 1.4)
            m.weight.copy_(torch.rand(m.num_features, generator=gen) * (hi - lo) + lo)
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


def smooth_images(n: int, seed: int, side: int = 32) -> torch.Tensor:
    """Random images with natural images' coarse structure: a colour per image (channel means
    U(0.2, 0.8)) plus Gaussian noise filtered to a 1/f^2 amplitude spectrum (std 0.1 per
    image), clipped to [0, 1]. Uniform i.i.d. pixels are all high frequency, which a deep
    network's pooled features average away."""
    gen = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, generator=gen) * 0.6 + 0.2
    f = torch.fft.fftfreq(side)
    gain = 1.0 / ((f[:, None] ** 2 + f[None, :] ** 2) * side ** 2).clamp(min=1.0)
    texture = torch.fft.ifft2(torch.fft.fft2(torch.randn(n, 3, side, side, generator=gen))
                              * gain).real
    texture = texture - texture.mean((1, 2, 3), keepdim=True)
    texture = texture / texture.std((1, 2, 3), keepdim=True) * 0.1
    return (colour + texture).clamp(0, 1)


def random_inputs(kind: str, n: int, seed: int) -> torch.Tensor:
    if kind == "smooth":
        return smooth_images(n, seed)
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


#: name: (BatchNorm construction, inputs, QCFS levels, residual gamma range); the last is the
#: must-show row of issue 16
RESNET_CASES = {
    "randomize_bn": ("randomize_bn", "uniform", 8, None),
    "data_bn": ("data_bn", "uniform", 8, None),
    "data_bn small-residual smooth L16": ("data_bn", "smooth", 16, (0.1, 0.3)),
    "data_bn small-residual smooth": ("data_bn", "smooth", 8, (0.1, 0.3)),
}


def resnet18_model(case: str) -> nn.Module:
    """The case's model, its thresholds calibrated on 64 inputs of its kind."""
    bn, inputs, levels, residual_gamma = RESNET_CASES[case]
    torch.manual_seed(0)
    model = resnet18(imagenet=True, levels=levels)
    calib = random_inputs(inputs, 64, 7)
    if bn == "randomize_bn":
        randomize_bn(model, seed=1)
    else:
        data_bn(he_init(model, 3), calib, seed=1, residual_gamma=residual_gamma)
    return calibrate(model, calib)


#: the ResNet's fixed-point variants: (name, per_channel, input bits); the rows with
#: per-channel units also attribute the disagreement
RESNET_SCALINGS = [("per-layer", False, 8), ("per-channel", True, 8), ("per-channel i12", True, 12)]


def dequantized(node) -> np.ndarray:
    """A quantized node's weights as the fixed-point network applies them (float64)."""
    scale = np.asarray(node.params.get("weight_scale", node.attrs["weight_scale"]), np.float64)
    return node.params["weight_int"] / scale.reshape(-1, *[1] * (node.params["weight"].ndim - 1))


def attribution(snn, x: np.ndarray, ann: np.ndarray) -> dict:
    """Argmax agreement with the ANN of the float ANN with one thing rounded as the fixed-point
    network rounds it: the input (to its integer unit), one block's weights (stem, each
    residual block, classifier), all weights, or all weights and the input: which rounding
    moves the argmax."""
    def block(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] == "stages" else parts[0]

    weighted = [n.name for n in snn if "weight_int" in n.params]
    groups = {"input": []}
    for name in weighted:
        groups.setdefault(block(name), []).append(name)
    groups["all weights"] = groups["input+weights"] = weighted
    x_int, _ = quantize_input(snn, torch.as_tensor(x, dtype=torch.float64))
    x_rounded = (x_int * 2.0 ** -snn.meta["input_exp"]).numpy()
    out = {}
    for group, names in groups.items():
        g = snn.copy()
        for name in names:
            g[name].params["weight"] = dequantized(g[name])
        xi = x_rounded if group.startswith("input") else x
        out[group] = float(np.mean(ann_forward(g, xi).numpy().argmax(1) == ann.argmax(1)))
    return out


def resnet18_rows(samples: int, case: str) -> list[dict]:
    model = resnet18_model(case)
    inputs = RESNET_CASES[case][1]
    x = random_inputs(inputs, samples, 5).numpy().astype(np.float64)
    graph = convert(graph_from_module(model, (3, 32, 32)), ConvertOptions(input_max=1.0))
    clean = ann_forward(graph, x, return_all=True)
    ann = clean[graph.output].numpy()
    self_agreement = {}
    for noise in (1e-5, 1e-3):
        noisy = ann_forward(graph, x + np.random.default_rng(9).uniform(-noise, noise, x.shape),
                            return_all=True)
        self_agreement[f"ann_self_agreement_noise_{noise:g}"] = float(
            np.mean(noisy[graph.output].numpy().argmax(1) == ann.argmax(1)))
        if noise == 1e-5:     # how the perturbation spreads: the share of activations it moves
            self_agreement["changed_activations_noise_1e-05"] = {
                p.name: float((clean[p.name] != noisy[p.name]).double().mean())
                for p in populations(graph) if p.inputs and p.name != graph.output}
    rows = []
    for scaling, per_channel, input_bits in RESNET_SCALINGS:
        t0 = time.perf_counter()
        snn = quantize(graph.copy(), per_channel=per_channel, input_bits=input_bits)
        seconds = time.perf_counter() - t0
        report = quantization_report(snn)
        worst = min(report, key=lambda r: r["nonzero_kept"])
        row = {"case": f"resnet18-imagenet-32px {case}", "scaling": scaling, "inputs": inputs,
               "levels": RESNET_CASES[case][2], "input_bits": input_bits,
               "quantize_seconds": seconds, "layers": len(report),
               "min_nonzero_kept": worst["nonzero_kept"], "worst_layer": worst["layer"],
               "layers_below_95pct": sum(r["nonzero_kept"] < 0.95 for r in report),
               "per_channel_layers": sum(r["units"] == "per channel" for r in report),
               **self_agreement, **logit_spread(ann), **agreement(snn, x, ann)}
        if per_channel:
            row["agreement_rounding_only"] = attribution(snn, x, ann)
        rows.append(row)
    return rows


#: (scaling, per_channel, input bits, calibration bias correction) for the trained ResNet-18
TRAINED_RESNET_CONFIGS = TRAINED_CONFIGS


def fashion_32px(x: np.ndarray) -> np.ndarray:
    """Fashion-MNIST (N, 1, 28, 28) as the 3x32x32 images a CIFAR-sized ResNet takes: padded
    by 2 pixels and repeated over the colour channels."""
    return np.repeat(np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), 3, axis=1)


def trained_resnet18_rows(samples: int, work: Path, train_images: int = 12000) -> list[dict]:
    """The same ImageNet-layout QCFS ResNet-18 at 32 px (levels 8), trained for one epoch on
    ``train_images`` Fashion-MNIST images (cached under ``work``): a network whose argmax
    follows its input, unlike the random ones above. Agreement on the first ``samples`` test
    images; calibration data (bias correction) is 256 other training images."""
    from bench_fashion import EXAMPLE

    split = EXAMPLE.load_split()
    common = EXAMPLE._load_common()
    cached = work / f"resnet18_fashion32_n{train_images}.pt"
    common.seed_everything(0, 2)
    model = resnet18(imagenet=True)
    x_train, y_train = split["train"]
    x_test, y_test = split["test"]
    if cached.is_file():
        model.load_state_dict(torch.load(cached, weights_only=True))
    else:
        data = common.DigitsSplit(fashion_32px(x_train[:train_images]), y_train[:train_images],
                                  fashion_32px(x_test[:1000]), y_test[:1000])
        common.train(model, data, 1, 0, batch_size=128, log=lambda *a: print(*a, file=sys.stderr),
                     progress=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cached)
    model.eval()
    x = fashion_32px(x_test[:samples]).astype(np.float64)
    calib = fashion_32px(x_train[train_images:train_images + 256])
    graph = convert(graph_from_module(model, (3, 32, 32)), ConvertOptions(input_max=1.0))
    ann = ann_forward(graph, x).numpy()
    noisy = ann_forward(graph, x + np.random.default_rng(9).uniform(-1e-5, 1e-5, x.shape)).numpy()
    shared = {"ann_test_accuracy": float((ann.argmax(1) == y_test[:samples]).mean()),
              "ann_self_agreement_noise_1e-05": float(np.mean(noisy.argmax(1) == ann.argmax(1))),
              **logit_spread(ann)}
    rows = []
    for scaling, per_channel, input_bits, calibrated in TRAINED_RESNET_CONFIGS:
        snn = quantize(graph.copy(), per_channel=per_channel, input_bits=input_bits,
                       calib=calib if calibrated else None)
        report = quantization_report(snn)
        worst = min(report, key=lambda r: r["nonzero_kept"])
        rows.append({"case": f"resnet18-imagenet-32px trained (fashion, {train_images} images, "
                             "1 epoch)", "scaling": scaling, "input_bits": input_bits,
                     "min_nonzero_kept": worst["nonzero_kept"], "worst_layer": worst["layer"],
                     "layers_below_95pct": sum(r["nonzero_kept"] < 0.95 for r in report),
                     "per_channel_layers": sum(r["units"] == "per channel" for r in report),
                     "layers": len(report), **shared, **agreement(snn, x, ann)})
    return rows


def _print(rows: list[dict]) -> None:
    for r in rows:
        head = f"{r['case']:<56} {r['scaling']:<23}"
        if "fixed_accuracy" in r:
            print(f"{head} float SNN {100 * r['float_snn_accuracy']:.2f}%  fixed "
                  f"{100 * r['fixed_accuracy']:.2f}%  ({r['points_lost']:+.2f} points lost)")
        elif "min_nonzero_kept" in r:
            print(f"{head} agreement {r['argmax_agreement']:.3f}  min kept "
                  f"{100 * r['min_nonzero_kept']:.1f}% ({r['worst_layer']}), "
                  f"{r['layers_below_95pct']} layers < 95%; logit std "
                  f"{r['logit_std_over_samples']:.3g}, {r['ann_classes']} ANN classes, "
                  f"top-2 margin {r['median_top2_margin']:.3g}; ANN vs ANN(x+noise) "
                  f"{r['ann_self_agreement_noise_1e-05']:.3f} (1e-5)"
                  + (f", {r['ann_self_agreement_noise_0.001']:.3f} (1e-3)"
                     if "ann_self_agreement_noise_0.001" in r else "")
                  + (f"; ANN test accuracy {r['ann_test_accuracy']:.3f}"
                     if "ann_test_accuracy" in r else ""))
            if "changed_activations_noise_1e-05" in r and r["scaling"] == "per-layer":
                changed = list(r["changed_activations_noise_1e-05"].items())
                print("    activations moved by 1e-5 input noise: " + ", ".join(
                    f"{k} {v:.1e}" for k, v in changed[:4] + changed[-1:]))
            if "agreement_rounding_only" in r:
                print("    rounding only: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in r["agreement_rounding_only"].items()))
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
        stages += [(f"resnet18 {case}", lambda case=case: resnet18_rows(a.samples, case))
                   for case in RESNET_CASES]
        if FASHION_DATA.is_dir():
            stages.append(("resnet18 trained on fashion-mnist",
                           lambda: trained_resnet18_rows(a.samples, Path(a.work))))
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
