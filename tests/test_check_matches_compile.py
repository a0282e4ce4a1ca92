"""`check` and `compile` cost one network: the same cores, chips and synapses (issue 16)."""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from mtdeploy.cli import main
from mtdeploy.nn import save_traced


@pytest.mark.parametrize("fixture", ["qcfs_cnn", "qcfs_residual"])
def test_check_reports_the_budget_compile_builds(request, tmp_path, fixture):
    case = request.getfixturevalue(fixture)
    path = tmp_path / "model.pt"
    save_traced(case.model, case.batch(2), path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["check", str(path), "--target", "loihi2", "--json"]) == 0
    checked = json.loads(out.getvalue())["totals"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["compile", str(path), "--target", "loihi2", "-o", str(tmp_path / "b")]) == 0
    built = json.loads((tmp_path / "b" / "report.json").read_text())["budget"]["totals"]
    for key in ("cores", "chips", "synapses", "synaptic_memory_bytes", "neurons"):
        assert checked[key] == built[key], key
    # and compile prints the core count check prints
    assert f"  {checked['cores']} cores on {checked['chips']} chip(s) of loihi2\n" in printed.getvalue()
