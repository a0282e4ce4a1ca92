"""``mtdeploy check``: the hardware budget report of a model on a target, nothing written."""
from __future__ import annotations

import json
import sys

from mtdeploy.api import check_network, deployable, load_model
from mtdeploy.cli.values import timesteps
from mtdeploy.errors import DoesNotFitError
from mtdeploy.passes import ConvertOptions
from mtdeploy.targets.profiles import load_profile


def run(a) -> int:
    # The network compile would build (a .net file's as it is), so both count the same cores.
    profile = load_profile(a.target)
    graph, _ = deployable(load_model(a.model, a.input_shape, a.trust_pickle),
                          ConvertOptions(timesteps=timesteps(a.timesteps)), profile)
    return run_check(graph, profile, a.json, sys.stdout)


def run_check(graph, target, json_output: bool, stream) -> int:
    """Print the budget report of ``graph`` on ``target`` (Markdown, or JSON); 0 fits, 3 not."""
    report = check_network(graph, target)
    stream.write((json.dumps(report.to_json(), indent=1) if json_output else report.to_markdown())
                 + "\n")
    return 0 if report.fits else DoesNotFitError.exit_code
