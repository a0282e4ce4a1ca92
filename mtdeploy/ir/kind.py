"""The node-kind interface and its registry: what the IR asks of a kind, and nothing more.

The IR is a leaf: it defines this interface, and the concrete kinds (:mod:`mtdeploy.kinds`, one
file per family) implement and register it. Everything about a kind lives in its own class
there: torch and TorchScript import, the trainable torch form, float and integer semantics,
population dynamics, the quantization divisor and the budget box. Backends keep their per-kind
code in tables of their own, keyed by ``NodeKind.name``; nothing switches on kind names.

``role`` says what a kind is in the SNN: ``source`` (the input), ``linear`` (a synaptic op),
``activation`` (a population of spiking neurons), ``readout`` (the output population, which
accumulates current and never spikes) or ``timing`` (a temporal alignment).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mtdeploy.errors import InputError

if TYPE_CHECKING:   # the IR never imports torch at run time
    import torch
    from torch import nn

    from mtdeploy.ir.graph import Node

KINDS: dict[str, "NodeKind"] = {}


def register(cls: type["NodeKind"]) -> type["NodeKind"]:
    """Class decorator: add one instance of ``cls`` to :data:`KINDS` under ``cls.name``."""
    if cls.name in KINDS:
        raise ValueError(f"node kind {cls.name!r} registered twice")
    KINDS[cls.name] = cls()
    return cls


def kind_of(node: "Node") -> "NodeKind":
    try:
        return KINDS[node.kind]
    except KeyError:
        raise InputError(f"node {node.name}: unknown kind {node.kind!r}") from None


def kind_for_module(module: "nn.Module") -> "NodeKind | None":
    for kind in KINDS.values():
        if kind.torch_types and isinstance(module, kind.torch_types):
            return kind
    return None


def dims3(shape) -> tuple[int, int, int]:
    """A shape as (C, H, W) for the budget model: a 1-D signal (C, L) is (C, 1, L), a vector
    (N,) is (N, 1, 1)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        return (shape[0], 1, shape[1])
    return (int(np.prod(shape)), 1, 1)


class NodeKind:
    """One node kind. Subclasses override what applies to them; the defaults are an
    element-wise identity with no torch form, no dynamics and no weights."""

    name: ClassVar[str]
    role: ClassVar[str] = "linear"        # source | linear | activation | readout | timing
    weighted: ClassVar[bool] = False      # has a weight tensor scaled by quantization
    #: a population whose output per step is an integer payload (graded spike), not 0/1:
    #: synapses reading it need message bits (sigma-delta neurons)
    graded: ClassVar[bool] = False
    #: a linear op across time steps (a synaptic delay): the reference applies
    #: ``forward_steps`` to the whole window instead of ``forward_int`` to each step
    temporal: ClassVar[bool] = False
    #: eager module types this kind is imported from (front ends match on them)
    torch_types: ClassVar[tuple[type, ...]] = ()
    description: ClassVar[str] = ""
    #: one kernel per output channel serves every position, so a core stores it once
    #: (conv, pooling, element-wise ops); False for dense matrices
    shift_invariant: ClassVar[bool] = True
    #: its integer forward is a linear map (backends may hold it as a matrix or kernel); False
    #: for max pooling, which is exact only on whole-window spike counts (avg-repeat alignment)
    linear_map: ClassVar[bool] = True

    # ---- import ---------------------------------------------------------------------------
    def from_torch(self, module: "nn.Module") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(attrs, params) of a node built from an eager module of ``torch_types``."""
        raise InputError(f"{self.name} nodes are not built from torch modules")

    def from_script(self, module: Any) -> "nn.Module":
        """The eager module a TorchScript submodule of this kind stands for (its configuration
        read from the scripted attributes, or from a traced forward's constant arguments)."""
        raise InputError("mtdeploy cannot read this layer from TorchScript yet; pass the eager "
                         "model instead")

    # ---- trainable form (the timestep search) ----------------------------------------------
    def to_module(self, node: "Node") -> "nn.Module | None":
        """A torch module computing this node (None: ``forward`` runs inline)."""
        return None

    def write_back(self, module: "nn.Module", node: "Node") -> None:
        """Copy what training changed in ``module`` back into ``node``."""

    # ---- semantics --------------------------------------------------------------------------
    def infer_shape(self, node: "Node", in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        return in_shapes[0]

    def forward(self, node: "Node", *xs: "torch.Tensor") -> "torch.Tensor":
        """Float semantics on batch-first tensors (the ANN view)."""
        return xs[0]

    def forward_int(self, node: "Node", *xs: "torch.Tensor") -> "torch.Tensor":
        """Fixed-point semantics (integer-valued float64 tensors, no bias: semantics §3)."""
        return self.forward(node, *xs)

    def forward_at_zero(self, node: "Node", *zeros: "torch.Tensor") -> "torch.Tensor":
        """``forward`` where every input is zero (``zeros``): a population's current when its
        producers are silent (its bias, for quantization). Weighted kinds return their bias
        without running their product (a 224x224 convolution, a 100M-weight matrix)."""
        return self.forward(node, *zeros)

    def forward_steps(self, node: "Node", x: "torch.Tensor") -> "torch.Tensor":
        """A ``temporal`` kind's op on a time-major window (T, N, ...), both modes."""
        raise InputError(f"{node.label()}: {self.name} is not a temporal kind")

    def simulate(self, node: "Node", current: "torch.Tensor", fixed_point: bool,
                 ctx: dict) -> "torch.Tensor":
        """Population dynamics over time-major current (T, N, ...) -> output (T_out, N, ...)."""
        raise InputError(f"{node.label()}: {self.name} is not a population kind")

    def closed_form(self, node: "Node", current_int: "torch.Tensor") -> "torch.Tensor":
        """Output under a constant integer current over the window (the quantized ANN)."""
        raise InputError(f"{node.label()}: a {self.name} population has no closed form")

    def window_length(self, node: "Node") -> int:
        """Steps a population is busy in one sample (its T unless its neuron says otherwise)."""
        return int(node.T)

    # ---- fixed point --------------------------------------------------------------------------
    def divisor(self, node: "Node") -> float:
        """The scale this op's integer form leaves to the downstream weights (a sum pool's 1/k)."""
        return 1.0

    # ---- budget model (mtdeploy.targets.resources) ---------------------------------------
    def input_box(self, node: "Node", in_shapes: list[tuple[int, ...]], index: int, box):
        """Bounding boxes of input ``index`` read by boxes of this node's output.

        ``box`` holds one ``(key, lo, hi)`` per output dim (C, H, W, see :func:`dims3`):
        element i of ``lo``/``hi`` bounds this dim for index i along dim ``key`` of the consuming
        population. Returns the same structure over the input. Default: element-wise.
        """
        return box

    def int_gain(self, node: "Node", index: int = 0) -> float | None:
        """Largest sum of |integer weights| one output draws from input ``index`` (the row
        infinity-norm): bounds an accumulator's range. None where not known (unquantized)."""
        return 1.0
