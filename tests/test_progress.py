"""A long `mtdeploy search` shows progress in a log too (issue 12): status lines on stderr when
a stage starts and periodically while it runs; bars only on a terminal; other verbs quiet."""
import threading

import pytest

from mtdeploy.cli import main
from mtdeploy.errors import InputError
from mtdeploy.search.progress import Progress, progress_mode
from test_search import _cli_model


class _Log:
    """A stream that keeps lines and says when the timer (not a stage start) wrote one."""

    def __init__(self):
        self.lines, self.periodic = [], threading.Event()

    def write(self, text):
        for line in filter(None, text.splitlines()):   # print writes the newline apart
            self.lines.append(line)
            if len(self.lines) > 1:
                self.periodic.set()

    def flush(self):
        pass


def test_status_lines_come_while_a_long_step_runs():
    log = _Log()
    with Progress("lines", every_s=0.01, stream=log) as progress:
        for item in progress.track(["first", "second"], "search: step"):
            if item == "first":   # a step that takes until the timer has spoken
                assert log.periodic.wait(60), "no periodic status line"
    assert "mtdeploy-progress" not in [t.name for t in threading.enumerate()]   # timer stopped
    assert log.lines[0] == "mtdeploy search: step: 0/2 done, 0 s"
    assert all(line.startswith("mtdeploy search: step: ") for line in log.lines)


def test_progress_modes():
    assert progress_mode(True) == "bars" and progress_mode(False) is None
    assert progress_mode("lines") == "lines"
    assert progress_mode(None) is None   # pytest's stderr is no terminal
    with pytest.raises(InputError, match="progress must be"):
        progress_mode("loud")
    assert Progress(False).track([1, 2], "x") == [1, 2]


def test_search_in_a_log_prints_status_lines_and_compile_does_not(capsys, tmp_path):
    model, data = _cli_model(tmp_path)
    assert main(["search", str(model), "--data", str(data), "--input-shape", "12", "-o",
                 str(tmp_path / "s.pt"), "--epochs", "0", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    for stage in ("sensitivity", "calibration front", "fine-tune thresholds"):
        assert f"mtdeploy search: {stage}: 0/" in err, err
    assert "\r" not in err   # no bars
    assert main(["compile", str(tmp_path / "s.pt"), "--input-shape", "12",
                 "-o", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""
