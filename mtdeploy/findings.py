"""The one finding type: a problem (or a warning) about one layer, reported, never raised.

The budget checker's rules and the NetX validator both return lists of findings so that a user
sees every problem at once, each naming its layer.
"""
from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    rule: str                 # checker rule (weight_bits, fan_in, ...) or NetX check (structure, range, risk)
    node: str | None          # the layer it is about (node label, or "layer <i>"); None: the network
    message: str
    used: float | None = None
    limit: float | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.node}: " if self.node and self.node not in self.message else ""
        return f"[{self.severity}] {self.rule}: {where}{self.message}"


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]
