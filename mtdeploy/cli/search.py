"""``mtdeploy search``: the files around :func:`mtdeploy.search.search`.

A model and labelled data (.npz with x, y) in; the searched model (TorchScript, ready for
``mtdeploy compile``), its front (JSON, default ``<output>.front.json``) and, when asked, a plot
out. The outputs are checked before the search starts (a long search must not end in an
unwritable path), written to temp files beside their targets and renamed together at the end:
all of them or none, also on a full disk or an interrupt. Progress goes to stderr: bars on a
terminal, a status line every few seconds in a log.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mtdeploy.api import load_model
from mtdeploy.errors import InputError
from mtdeploy.frontends import TORCH_SUFFIXES, stored_input_shape
from mtdeploy.io import atomic_paths, check_output_files, load_samples, write_json
from mtdeploy.search import SearchResult, SearchSettings, parse_budget, search, split_calibration
from mtdeploy.search.front import front_table, plot_front

_TABLE_METRICS = ("mean_T", "sum_T", "max_T", "synops")


def run(a) -> int:
    budget = parse_budget(a.budget)   # a bad budget string fails before any work is done
    output = _model_path(a.output)
    front = a.front or output.with_suffix(".front.json")
    outputs = [output, front] + ([a.plot] if a.plot else [])
    check_output_files(outputs, protect=[a.model, a.data] + ([a.val] if a.val else []))
    calib_x, calib_y, val_x, val_y = _data(a)
    graph = load_model(a.model, _input_shape(a, calib_x), a.trust_pickle)
    if graph.meta.get("converted"):
        raise InputError(f"{a.model}: already converted to a spiking network (a .net or build "
                         "file) and has no QCFS levels left to search; search the PyTorch model")
    settings = SearchSettings(budget=budget, seed=a.seed, device=a.device, finetune_epochs=a.epochs,
                              finetune_weights=a.finetune_weights, target=a.target,
                              threads=a.threads, level_choices=a.level_choices,
                              screen_samples=a.screen_samples,
                              progress="bars" if sys.stderr.isatty() else "lines")
    result = search(graph, calib_x, calib_y, val_x, val_y, settings)
    result.settings.update({"model": str(a.model), "data": str(a.data),
                            "val": str(a.val) if a.val is not None else None,
                            "val_fraction": None if a.val is not None else a.val_fraction})
    with atomic_paths(*outputs) as files:
        result.module().save_torchscript(files[0])
        write_json(files[1], result.to_json())
        if a.plot:
            plot_front(result, files[2], title=f"{Path(a.model).name}: per-layer timestep search")
    _print_summary(result)
    print(f"  model -> {a.output}; front -> {front}" + (f"; plot -> {a.plot}" if a.plot else ""))
    return 0


def _model_path(output: str) -> Path:
    """``-o``, checked before any work: the searched model is written as TorchScript."""
    path = Path(output)
    if path.suffix.lower() not in (".pt", ".ts", ".pth"):
        raise InputError(f"-o {path}: the searched model is written as TorchScript; give a "
                         ".pt path")
    return path


def _input_shape(a, x: np.ndarray):
    """``--input-shape``, else the shape the model file records, else one sample of the data
    (a PyTorch file that records none: the data says what the model takes)."""
    path = Path(a.model)
    if a.input_shape is not None or path.suffix.lower() not in TORCH_SUFFIXES \
            or not path.is_file() or stored_input_shape(path) is not None:
        return a.input_shape
    return tuple(x.shape[1:])


def _data(a) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(calib_x, calib_y, val_x, val_y): ``--data`` and ``--val`` as given, or a seeded,
    stratified split of ``--data``."""
    x, y = _labelled(a.data, "search")
    if a.val is not None:
        return (x, y, *_labelled(a.val, "validation"))
    return split_calibration(x, y, a.val_fraction, a.seed)


def _labelled(path, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_samples(path)
    if y is None:
        raise InputError(f"{path}: the {what} data needs labels: an .npz with arrays 'x' and "
                         "'y', or IDX images with their labels file beside them")
    return x, y


def _print_summary(result: SearchResult) -> None:
    c, given, budget = result.chosen, result.input_model, result.budget
    print(f"searched {len(result.candidates)} fine-tuned configurations "
          f"({result.settings['configurations_measured']} measured) under "
          f"{budget or 'no budget'}")
    print(f"  input model: levels {list(given['levels'].values())}, "
          f"validation accuracy {100 * given['val_acc']:.2f}%")
    print(f"  chosen: levels {list(c.levels.values())}, mean T {c.costs['mean_T']:.2f}, "
          f"sum T {c.costs['sum_T']}, SynOps/sample {c.costs['synops']:.1f}, "
          f"validation accuracy {100 * c.val_acc:.2f}%")
    metric = budget.metric if budget and budget.metric in _TABLE_METRICS else "mean_T"
    print(front_table(result, metric))
