"""Lava backend: lowers a converted MT-SNN graph to Lava processes and runs Loihi2SimCfg.

Everything that imports Lava stays inside this package, and importing the package itself does
not import Lava (the names below load on first use), so the rest of mtdeploy works without it.

Modules: network (lower_to_lava, LavaNetwork, run_lava), lowering (wiring the processes),
neurons / timing / synapses (per-kind builder tables), projection and layout (the edge matrices
and array layouts), runtime (running and stopping Lava's OS processes), agreement (the ladder).
"""
from __future__ import annotations

import importlib
import multiprocessing

_EXPORTS = {
    "lower_to_lava": "network", "run_lava": "network", "LavaNetwork": "network",
    "describe_lava": "network",
    "SYNAPSE_HOP": "synapses", "child_pids": "runtime", "ladder": "agreement",
    "first_divergence": "agreement", "format_ladder": "agreement",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _same_start_method_is_fine() -> None:
    """Lava calls ``multiprocessing.set_start_method('fork')`` when imported, which raises once
    anything in the process has fixed the start method, even to 'fork' itself (a tqdm
    progress bar does, through its multiprocessing lock). Setting the method already in use
    is made a no-op here, before any module of this package can import Lava; any other change
    still goes to multiprocessing and raises as before."""
    original = multiprocessing.set_start_method
    if getattr(original, "_mtdeploy_tolerant", False):
        return

    def set_start_method(method, force=False):
        if not force and multiprocessing.get_start_method(allow_none=True) == method:
            return None
        return original(method, force=force)

    set_start_method._mtdeploy_tolerant = True
    multiprocessing.set_start_method = set_start_method


_same_start_method_is_fine()
