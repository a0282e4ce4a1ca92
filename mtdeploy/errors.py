"""Error types that the CLI maps to exit codes (2: bad input, 3: does not fit the target)."""
from __future__ import annotations


class MtdeployError(Exception):
    """Base error: a clear message for the user, never a traceback."""

    exit_code = 2


class InputError(MtdeployError):
    """The user's input (model, file, option) is unusable."""


class UnsupportedOpsError(InputError):
    """A model uses ops mtdeploy cannot map; lists every offender at once."""

    def __init__(self, offenders: list[tuple[str, str, str]]):
        # offenders: (module path, op description, hint)
        self.offenders = offenders
        lines = [f"the model uses {len(offenders)} unsupported op(s):"]
        for path, op, hint in offenders:
            lines.append(f"  - {path}: {op}" + (f" (hint: {hint})" if hint else ""))
        super().__init__("\n".join(lines))


class DoesNotFitError(MtdeployError):
    """The network does not fit the hardware target; carries every finding."""

    exit_code = 3

    def __init__(self, message: str, findings=()):
        self.findings = list(findings)
        super().__init__(message)
