"""The Python API the CLI is a thin shell over: load, compile, simulate.

It takes Python values (and model or build paths, the documented ``mtdeploy.compile(path)``)
and raises :mod:`mtdeploy.errors` naming parameters, never command-line options: the CLI
translates those names into its flags.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from mtdeploy import frontends
from mtdeploy.frontends.netx import read_netx
from mtdeploy.errors import DoesNotFitError, InputError
from mtdeploy.frontends.torch_files import stored_input_max
from mtdeploy.io import (atomic_dir, check_output_dir, check_samples, load_samples, write_json,
                         write_text)
from mtdeploy.ir.graph import Graph
from mtdeploy.passes import ConvertOptions, convert, quantize, schedule
from mtdeploy.passes.convert import check_timestep_range
from mtdeploy.passes.input_range import choose_input_max, input_range_report
from mtdeploy.passes.quantize import DEFAULT_INPUT_BITS
from mtdeploy.report import build_report, report_markdown
from mtdeploy.sim.parallel import in_process_group, simulate_distributed, simulate_workers
from mtdeploy.sim.plan import DEFAULT_MEMORY_BUDGET
from mtdeploy.sim.reference import simulate
from mtdeploy.targets.checker import check as check_budget
from mtdeploy.targets.fanin import mark_fan_in_splits
from mtdeploy.targets.loihi2.forms import reuse_forms
from mtdeploy.targets.loihi2.netx.writer import MTSNN_FILE, NETX_FILE, write_build_network
from mtdeploy.targets.profiles import load_profile
from mtdeploy.validate import SEED_MAX, integer


@contextlib.contextmanager
def _one_thread():
    """Run torch on one intra-op thread, and numpy's BLAS on one thread. Compiling uses torch
    only for small checks (rebuilt modules on a crop, biases, kernel compositions): a second
    thread gains little, while on a busy machine OpenMP's spinning workers made the import of
    an ImageNet ResNet-34 six times slower (37 s against 6 s of wall time, measured under a
    load of 20 on 2 cores). The partitioner's many small matrix products fare the same:
    VGG-16-224's budget check took 14 s (15 s CPU) with two BLAS threads and 7.2 s (7.2 s CPU)
    with one, at a load of 4-5 on 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def _single_threaded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _one_thread():
            return fn(*args, **kwargs)
    return wrapper


@_single_threaded
def load_model(model, input_shape=None, trust_pickle: bool = False) -> Graph:
    """A Graph, an ``nn.Module``/ScriptModule, or a path (.pt, .mtir, .net, .mtsnn.h5) -> IR."""
    if isinstance(model, Graph):
        return model.copy()
    if isinstance(model, (str, Path)):
        return frontends.load_model_graph(model, input_shape, trust_pickle=trust_pickle)
    return frontends.graph_from_module(model, input_shape)


@_single_threaded
def check_network(graph: Graph, profile):
    """The budget report of a deployable network (what ``mtdeploy check`` prints), on one
    BLAS/torch thread as in compile."""
    return check_budget(graph, profile)


@dataclass
class Build:
    """A compiled network with its schedule and report; ``out_dir`` is None when not written."""

    out_dir: Path | None
    graph: Graph
    schedule: dict
    report: dict
    check: Any = None
    files: list[str] = field(default_factory=list)


@_single_threaded
def compile_model(model, input_shape=None, target: str = "loihi2", out_dir="build",
                  timesteps=None, alignment: str = "avg-repeat", neuron: str = "if",
                  v_init: float = 0.5, seed: int = 0, input_max: float | None = None,
                  weight_bits: int = 8, input_bits: int = DEFAULT_INPUT_BITS,
                  trust_pickle: bool = False,
                  write: bool = True, force: bool = False, calib=None,
                  per_layer_scaling: bool = False) -> Build:
    """Import, convert, quantize, schedule, check against ``target`` and write the build dir.

    Raises DoesNotFitError (exit 3) with every finding when the model does not fit; nothing is
    written then. Weights are scaled per output channel where the target has per-neuron
    thresholds (``per_layer_scaling``: one unit per layer anyway). The build directory appears
    whole or not at all, and replaces only what
    :func:`mtdeploy.io.check_output_dir` allows (``force``: also a directory mtdeploy did not
    write; never a file, nor the directory of ``model``); ``out_dir`` is checked before any work.
    ``calib``: samples (an array (N, *input_shape) or a samples file) that set ``input_max``
    when it is not given, whose saturation the report states (passes/input_range.py), and on
    which every neuron's bias absorbs the mean current its weights' rounding costs it
    (passes/bias_correction.py).
    """
    t0 = time.perf_counter()
    protect = [model] if isinstance(model, (str, Path)) else []
    if write:
        check_output_dir(out_dir, force, protect)
    profile = load_profile(target)
    graph = load_model(model, input_shape, trust_pickle)
    calib = _calibration_samples(calib, graph)
    input_max, source = _input_max(model, graph, input_max, calib)
    options = ConvertOptions(timesteps=timesteps, alignment=alignment, neuron=neuron,
                             v_init=v_init, seed=seed, input_max=input_max)
    snn, sched = deployable(graph, options, profile, weight_bits, input_bits, per_layer_scaling,
                            calib)
    check = check_budget(snn, profile)
    if check is not None and not check.fits:
        raise DoesNotFitError(_findings_text(check, target), check.findings)
    report = build_report(snn, sched, check, target, options, time.perf_counter() - t0)
    report["input"].update(input_range_report(snn.meta, source, calib))
    with reuse_forms():      # the Lava description and the NetX file share the edge forms
        report["lava"] = _lava_description(snn)
        build = Build(Path(out_dir) if write else None, snn, sched, report, check)
        if write:
            _write_build(build, force, protect)
    return build


def _calibration_samples(calib, graph: Graph):
    """``calib`` as checked samples of the model's input shape (None stays None)."""
    if calib is None:
        return None
    if isinstance(calib, (str, Path)):
        calib, _ = load_samples(calib)
    x, _ = check_samples(calib, input_shape=graph.input.shape, what="calib")
    return x


def _input_max(model, graph: Graph, given, calib) -> tuple[float | None, str]:
    """The input range and its source; a converted graph (a .net file) keeps its own."""
    if graph.meta.get("converted"):
        return given, "the network file"
    stored = None
    if isinstance(model, (str, Path)) and Path(model).suffix.lower() in frontends.TORCH_SUFFIXES:
        stored = stored_input_max(model)
    return choose_input_max(given, calib, stored)


@_single_threaded
def deployable(graph: Graph, options: ConvertOptions, profile, weight_bits: int = 8,
               input_bits: int = DEFAULT_INPUT_BITS, per_layer_scaling: bool = False,
               calib=None) -> tuple[Graph, dict]:
    """The network a build holds: converted, bounded by the profile, quantized and scheduled
    for it, and the schedule. ``compile`` builds it, and ``check`` costs exactly it, so the two
    report the same cores (``calib`` only moves biases, never a resource)."""
    snn = as_snn(graph, options, weight_bits=weight_bits, input_bits=input_bits,
                 per_layer_scaling=per_layer_scaling)
    check_timestep_range(snn, profile)
    if not snn.meta.get("quantized"):
        quantize(snn, weight_bits=weight_bits, input_bits=input_bits,
                 per_channel=profile.per_neuron_threshold and not per_layer_scaling, calib=calib)
    mark_fan_in_splits(snn, profile)     # before the schedule: a split edge takes one more hop
    return snn, schedule(snn, hop_steps=profile.hop_steps)


def as_snn(graph: Graph, options: ConvertOptions, **quantization) -> Graph:
    """``graph`` converted with ``options``; a graph read from a .net file (mtdeploy's or
    lava-dl's) is already converted and quantized and is returned as it is, after refusing
    every option (and ``quantization`` setting) that differs from its default: none of them
    could apply to it."""
    if not graph.meta.get("converted"):
        return convert(graph, options)
    defaults = {**asdict(ConvertOptions()), "weight_bits": 8, "input_bits": DEFAULT_INPUT_BITS,
                "per_layer_scaling": False}
    changed = [name for name, value in {**asdict(options), **quantization}.items()
               if not (value is defaults[name] or value == defaults[name])]
    if changed:
        raise InputError(f"{', '.join(changed)}: the model is already converted and quantized "
                         "(a .net file); these options apply to PyTorch models only")
    return graph


def _lava_description(graph: Graph) -> dict:
    """The Lava process graph this build lowers to (processes per kind, per layer), described
    from the graph's structure: no process and no synapse matrix is built."""
    try:
        from mtdeploy.targets.loihi2.lava import describe_lava
    except ImportError as exc:   # Lava is optional for compiling: say why the section is missing
        return {"available": False, "reason": f"Lava is not installed ({exc})"}
    try:
        return {"available": True, **describe_lava(graph)}
    except InputError as exc:    # a kind without a Lava lowering (max pooling): say which
        return {"available": False, "reason": str(exc)}


def _findings_text(check, target) -> str:
    lines = [f"the network does not fit {target}: {len(check.findings)} finding(s)"]
    lines += [f"  - {f.message}" for f in check.findings]
    smallest = getattr(check, "smallest_fitting_profile", None)
    if smallest:
        lines.append(f"it would fit on: {smallest}")
    return "\n".join(lines)


def _write_build(build: Build, force: bool, protect: list) -> None:
    with atomic_dir(build.out_dir, force, protect) as tmp:
        name, notes = write_build_network(build.graph, tmp)
        stock = {"loadable": name == NETX_FILE, "file": name,
                 "findings": [str(f) for f in notes]}
        build.report["netx"] = stock
        write_json(tmp / "schedule.json", build.schedule)
        write_json(tmp / "report.json", build.report)
        write_text(tmp / "report.md", report_markdown(build.report))
        build.files = sorted(p.name for p in tmp.iterdir())


def load_build(build_dir) -> Graph:
    """The converted, quantized graph of a build directory."""
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise InputError(f"{build_dir}: not a build directory (compile a model into it first)")
    # network.net when stock netx loads the network, else network.mtsnn.h5: either holds the
    # whole MT-SNN in its /mtdeploy extension.
    path = next((build_dir / n for n in (NETX_FILE, MTSNN_FILE) if (build_dir / n).is_file()), None)
    if path is None:
        raise InputError(f"{build_dir}: no {NETX_FILE} or {MTSNN_FILE}; is this a build "
                         "directory?")

    return read_netx(path)


def _checked_samples(graph: Graph, x, labels):
    """``x`` once its values and ``labels`` are usable for ``graph`` (InputError otherwise). A
    memory-mapped ``x`` is checked a block at a time and stays a memory map, so a large file
    never sits in memory whole."""
    check = {"input_shape": graph.input.shape, "what": "input",
             "classes": int(np.prod(graph[graph.output].shape))}
    if not isinstance(x, np.memmap):
        return check_samples(x, labels, **check)[0]
    if labels is not None and len(labels) != len(x):
        raise InputError(f"input: x has {len(x)} samples but y has {len(labels)}")
    for start in range(0, max(len(x), 1), 8192):
        check_samples(x[start:start + 8192],
                      None if labels is None else labels[start:start + 8192], **check)
    return x


def simulate_build(build_dir_or_graph, x, backend: str = "reference",
                   fixed_point: bool = False, seed: int | None = None, progress=None, *,
                   device: str = "cpu", workers: int = 1, batch_size: int | None = None,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET, keep_counts: bool = True,
                   out=None, pipeline: bool = True, precision: str = "float64",
                   labels: np.ndarray | None = None):
    """Outputs (N, classes) in ANN units, plus the SimResult for the reference backend.

    ``x`` may be a memory map (read a batch at a time); ``out`` an array to fill (a memory-mapped
    file). ``workers`` > 1 runs the reference on that many processes; inside a torch.distributed
    group (torchrun) every rank takes part and only rank 0 gets results: the others get
    ``(None, None)``. ``progress(done, total)`` is called after every batch. ``precision``:
    the reference's float mode in float64 (the ANN's values) or float32 (faster). ``pipeline``
    lets a Lava run start a sample every pipelined interval. ``labels`` (N,), when the caller
    will score the outputs, are checked to be class indices of this network before anything
    runs.
    """
    graph = build_dir_or_graph if isinstance(build_dir_or_graph, Graph) \
        else load_build(build_dir_or_graph)
    x = _checked_samples(graph, x, labels)
    if seed is not None:
        integer("seed", seed, 0, SEED_MAX)
    if backend == "reference":
        mode = "fixed" if fixed_point else "float"
        options = {"batch_size": batch_size, "progress": progress, "device": device,
                   "memory_budget": memory_budget, "keep_counts": keep_counts, "out": out,
                   "precision": precision}
        if workers > 1:
            result = simulate_workers(graph, x, workers, mode, seed, **options)
        elif in_process_group():
            result = simulate_distributed(graph, x, mode, seed, **options)
        else:
            result = simulate(graph, x, mode, seed, **options)
        return (None, None) if result is None else (result.output, result)
    if backend == "lava":
        if str(device) != "cpu" or workers > 1:
            raise InputError("device, workers: the Lava backend runs Lava's CPU simulator in one "
                             "process")
        from mtdeploy.targets.loihi2.lava import run_lava   # Lava is optional: load it on use

        return run_lava(graph, x, fixed_point=fixed_point, seed=seed, pipeline=pipeline), None
    raise InputError(f"backend must be 'reference' or 'lava', got {backend!r}")
