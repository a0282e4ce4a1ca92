"""``mtdeploy check``: the hardware budget report of a model on a target, nothing written."""
from __future__ import annotations

import json
import sys

from mtdeploy.api import as_snn, load_model
from mtdeploy.cli.values import timesteps
from mtdeploy.errors import DoesNotFitError
from mtdeploy.passes import ConvertOptions
from mtdeploy.targets.checker import check


def run(a) -> int:
    # as compile does: a .net file's network is already converted, so it is checked as it is
    graph = as_snn(load_model(a.model, a.input_shape, a.trust_pickle),
                   ConvertOptions(timesteps=timesteps(a.timesteps)))
    return run_check(graph, a.target, a.json, sys.stdout)


def run_check(graph, target: str, json_output: bool, stream) -> int:
    """Print the budget report of ``graph`` on ``target`` (Markdown, or JSON); 0 fits, 3 not."""
    report = check(graph, target)
    stream.write((json.dumps(report.to_json(), indent=1) if json_output else report.to_markdown())
                 + "\n")
    return 0 if report.fits else DoesNotFitError.exit_code
