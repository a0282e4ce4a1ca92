"""Training-side modules. ``QCFS`` marks each activation layer's number of quantization levels.

QCFS (Bu et al., ICLR 2022): h(z) = (lam/L) * clip(floor(z*L/lam + 1/2), 0, L), with a trainable
clip value ``lam`` (the SNN threshold) and a straight-through gradient for ``floor``.
"""
from __future__ import annotations

import io
import json

import torch
from torch import nn

from mtdeploy.io import atomic_path


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """floor(x) in the forward pass, identity gradient in the backward pass.

    Written as ``x + (floor(x) - x).detach()`` rather than a custom autograd Function so that
    models stay traceable and scriptable (a TorchScript file is the safe way to ship a model).
    """
    return x + (torch.floor(x) - x).detach()


class QCFS(nn.Module):
    """Quantized clip-floor-shift activation with ``levels`` steps and trainable ``threshold``.

    After conversion the layer becomes integrate-and-fire neurons with T = ``levels`` time steps,
    firing threshold ``threshold`` and initial membrane potential ``threshold / 2``.
    """

    def __init__(self, levels: int, threshold: float = 4.0):
        super().__init__()
        levels = int(levels)
        if levels < 1:
            raise ValueError(f"QCFS levels must be >= 1, got {levels}")
        if not threshold > 0:
            raise ValueError(f"QCFS threshold must be > 0, got {threshold}")
        self.levels = levels
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.threshold
        scaled = floor_ste(x * (self.levels / lam) + 0.5) / self.levels
        return torch.clamp(scaled, 0.0, 1.0) * lam

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={float(self.threshold):.4g}"


# TorchScript archives carry this extra file so that `mtdeploy compile model.pt` needs no
# --input-shape: a traced model does not otherwise record the shape of its input.
MODEL_META_FILE = "mtdeploy.json"


def save_traced(model: nn.Module, example_input: torch.Tensor, path,
                check_trace: bool = True, input_max: float | None = None) -> None:
    """Trace ``model`` on ``example_input`` (a batch) and save it as TorchScript for mtdeploy.

    TorchScript, not ``torch.save``: loading it runs no Python code from the file. The input
    shape (one sample, no batch axis) goes into the archive's ``mtdeploy.json``, so compile
    finds it, with ``input_max`` (the largest |input| the model will see, e.g. after the data's
    normalisation) when given: compile takes the input's fixed-point range from it unless
    told otherwise. The file is written atomically (temp file, then rename). The archive is built in
    memory and written with Python's I/O: torch's own file writer aborts the whole process on a
    full disk, where Python raises an error that the writer turns into a clean message.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, example_input, check_trace=check_trace)
    finally:
        model.train(was_training)
    meta = {"format": 1, "input_shape": [int(d) for d in example_input.shape[1:]]}
    if input_max is not None:
        if not (isinstance(input_max, (int, float)) and 0 < float(input_max) < 1e30):
            raise ValueError(f"input_max must be a positive finite number, got {input_max!r}")
        meta["input_max"] = float(input_max)
    archive = io.BytesIO()
    torch.jit.save(traced, archive, _extra_files={MODEL_META_FILE: json.dumps(meta)})
    with atomic_path(path, suffix=".pt") as tmp:
        tmp.write_bytes(archive.getvalue())
