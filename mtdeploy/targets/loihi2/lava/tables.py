"""Per-kind builder tables (nengo-loihi's ``Builder.register`` style) and what builders read.

The lowering never switches on kind names: a population kind, neuron model, alignment method or
synapse kind maps to its Lava builder here, and a key missing from a table is an
:class:`InputError` naming the layer, so an unsupported graph fails before Lava starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node

B = TypeVar("B", bound=Callable)


@dataclass(frozen=True)
class Build:
    """The scheduled graph being lowered and the run's settings, as every builder reads them."""

    graph: Graph
    fixed_point: bool
    n_samples: int
    period: int             # steps between two samples' starts (see :func:`sample_period`)
    hop: int                # the stored schedule's hop_steps
    seed: int               # TPP's Bernoulli seed
    record_counts: bool
    reset: bool
    sparse_below: float
    latency: int = 0        # steps of one sample: the stored schedule's total_steps

    @property
    def total_steps(self) -> int:
        """Steps to run every sample: the last one enters ``(N - 1) * period`` steps in."""
        return self.period * (self.n_samples - 1) + self.latency

    @property
    def select_tag(self) -> str:
        """The Lava process models this mode runs (procs/models.py tags)."""
        return "fixed_pt" if self.fixed_point else "floating_pt"

    @staticmethod
    def window(pop: Node) -> tuple[int, int]:
        """``pop``'s stored window [start, end): lowering reads the schedule, never redoes it."""
        start, end = (int(w) for w in pop.attrs["window"])
        return start, end


class BuilderTable(Generic[B]):
    """Builders keyed by name; ``what`` names the key in errors ("neuron model", ...)."""

    def __init__(self, what: str):
        self.what = what
        self.builders: dict[str, B] = {}

    def register(self, key: str) -> Callable[[B], B]:
        def add(builder: B) -> B:
            if key in self.builders:
                raise ValueError(f"{self.what} {key!r} registered twice")
            self.builders[key] = builder
            return builder
        return add

    def __contains__(self, key: str) -> bool:
        return key in self.builders

    def of(self, key: str, node: Node) -> B:
        """The builder for ``key``, or an InputError naming ``node`` (the layer being lowered)."""
        try:
            return self.builders[key]
        except KeyError:
            raise InputError(f"{node.label()}: {self.what} {key!r} has no Lava process; "
                             f"known: {', '.join(sorted(self.builders))}") from None
