"""Budget strings (``mean-T=4``, ``sum-T=24``, ``max-T=8``, ``synops=2e4``, ``cores=12``).

A budget bounds one cost of the searched network from above; the search returns the most
accurate configuration whose measured cost is within it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mtdeploy.errors import InputError

# spelling in a budget string -> (metric key in the search's cost dict, integer-valued?)
_METRICS = {
    "mean-t": ("mean_T", False),
    "sum-t": ("sum_T", True),
    "max-t": ("max_T", True),
    "synops": ("synops", False),
    "cores": ("cores", True),
}
_LABELS = {"mean_T": "mean-T", "sum_T": "sum-T", "max_T": "max-T", "synops": "synops",
           "cores": "cores"}
_FORMS = "mean-T=4, sum-T=24, max-T=8, synops=20000 (per sample) or cores=12"


@dataclass(frozen=True)
class Budget:
    metric: str     # mean_T | sum_T | max_T | synops (per sample) | cores
    value: float

    def __str__(self) -> str:
        value = int(self.value) if float(self.value).is_integer() else self.value
        return f"{_LABELS[self.metric]}={value}"

    def allows(self, costs: dict) -> bool:
        """Whether a configuration's measured costs are within the budget."""
        cost = costs.get(self.metric)
        return cost is not None and cost <= self.value * (1 + 1e-9)


def parse_budget(text: str | None) -> Budget | None:
    """``None``/empty -> no budget (the most accurate configuration); else a ``Budget``."""
    if text is None or not str(text).strip():
        return None
    raw = str(text).strip()
    key, sep, value_text = raw.partition("=")
    if not sep:
        raise InputError(f"budget {raw!r}: expected METRIC=VALUE, e.g. {_FORMS}")
    key = key.strip().lower().replace("_", "-")
    if key not in _METRICS:
        raise InputError(f"budget {raw!r}: unknown metric {key!r}; use {_FORMS}")
    metric, integral = _METRICS[key]
    try:
        value = float(value_text.strip())
    except ValueError:
        raise InputError(f"budget {raw!r}: {value_text.strip()!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"budget {raw!r}: the value must be a positive number")
    if integral and not value.is_integer():
        raise InputError(f"budget {raw!r}: {_LABELS[metric]} is a whole number")
    return Budget(metric, value)
