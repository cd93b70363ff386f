"""A terminal a person can read during ``aavs run``: trial output in log files, plain event lines on a pipe.

The tests here cover the capture of a trial's output, the plain-line renderer and ``aavs logs``; a
shortened two-stage demo run under Ray as a subprocess whose output goes to a pipe is in
test_experiment.py (test_local_and_ray_give_the_same_numbers_and_ray_is_quiet_on_a_pipe).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import pytest
from conftest import tiny_spec
from rich.console import Console

from aavs.orchestrator.cli import _PlainHandler, main
from aavs.orchestrator.recipe import output_capture
from aavs.orchestrator.views.live import Event, LiveView, event_lines, plain_line

ANSI = re.compile(r"\x1b\[")
SPEC = tiny_spec(name="quiet-demo")


# ------------------------------------------------------------------------------------ capturing
def test_captured_sends_fds_streams_and_logging_to_the_file(tmp_path, capfd):
    other = logging.getLogger("aavs.test.driver")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep = Keep()
    logging.getLogger("aavs").addHandler(keep)
    try:
        with output_capture.captured(tmp_path / "log.txt"):
            print("from print")
            os.write(1, b"from fd 1\n")
            os.write(2, b"from fd 2\n")
            other.warning("from logging")
        other.warning("after the trial")
    finally:
        logging.getLogger("aavs").removeHandler(keep)
    text = (tmp_path / "log.txt").read_text()
    assert all(s in text for s in ("from print", "from fd 1", "from fd 2", "from logging"))
    assert "after the trial" not in text
    out, err = capfd.readouterr()
    assert "from" not in out + err  # nothing reached the driver's descriptors
    assert seen == ["after the trial"]  # the driver's handlers did not see the trial's records


def test_a_failure_is_in_the_log_and_in_status_json(tmp_path):
    from aavs.orchestrator.experiment.runners.base import logged_trial

    def boom(config):
        print("working on it")
        raise RuntimeError("out of cheese")

    trial = tmp_path / "trials" / "t000"
    with pytest.raises(RuntimeError):
        logged_trial(str(trial), True, boom, {})
    status = json.loads((trial / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == "RuntimeError: out of cheese"
    assert status["log"] == str(trial / "log.txt")
    assert "working on it" in output_capture.tail(trial / "log.txt", 20)
    assert "RuntimeError: out of cheese" in output_capture.tail(trial / "log.txt")[-1]


# ------------------------------------------------------------------------------- plain lines
def _board(trials: list[dict]) -> dict:
    stage = {"name": "localize", "status": "running", "metric": "val/miou", "best": None, "trials": trials}
    return {"progress": {"trials_done": 0, "trials": 2, "epochs_done": 1, "epochs": 4}, "stages": [stage]}


def _trial(status: str, epochs: list[int], **extra) -> dict:
    return {
        "trial_id": "t000",
        "status": status,
        "epochs": 2,
        "epochs_done": len(epochs),
        "best": 0.5,
        "rank": 1,
        "error": None,
        "log": None,
        "history": {"epoch": epochs, "val/miou": [0.5] * len(epochs), "val/fscore": [0.25] * len(epochs)},
        **extra,
    }


def test_plain_lines_have_no_colour_and_never_wrap(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("epoch 1: fine\n\nTraceback (most recent call last):\nRuntimeError: " + "x" * 150 + "\n")
    old = _board([_trial("running", [])])
    new = _board([_trial("failed", [0], error="RuntimeError: " + "x" * 150, log=str(log))])
    events = event_lines(old, new)
    assert [e.level for e in events][:2] == [logging.INFO, logging.ERROR]
    out = io.StringIO()
    console = Console(file=out, width=100)
    assert not console.is_terminal
    for event in events:
        plain_line(console, event.text)
    lines = out.getvalue().splitlines()
    assert lines == [e.text for e in events]  # one line each, however long: nothing wrapped at 100
    assert max(map(len, lines)) > 100 and not ANSI.search(out.getvalue()) and "" not in lines
    assert any("RuntimeError: xxx" in line and line.startswith("    | ") for line in lines)
    assert lines[-1].startswith(f"    log: {log}")


def test_plain_log_handler_writes_one_line(capsys):
    record = logging.LogRecord("aavs.x", logging.INFO, __file__, 1, "stage %s: " + "y" * 120, ("localize",), None)
    _PlainHandler().handle(record)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "INFO stage localize: yyy" in err and not ANSI.search(err)


def test_live_view_on_a_pipe_prints_events_as_lines(tmp_path):
    view = LiveView(tmp_path, Console(file=io.StringIO(), width=100))
    view.event(Event("a warning", logging.WARNING))
    assert view.console.file.getvalue() == "a warning\n"


# --------------------------------------------------------------------------------- aavs logs
def _fake_results(tmp_path: Path) -> Path:
    results = tmp_path / "quiet-demo"
    (results / "localize" / "trials" / "t000").mkdir(parents=True)
    (results / "spec.json").write_text(json.dumps({"hash": "x", "spec": SPEC}))
    (results / "localize" / "trials" / "t000" / "log.txt").write_text("epoch 1: val/miou=0.5\n")
    (results / "localize" / "trials" / "t000" / "status.json").write_text(json.dumps({"status": "done"}))
    (results / "localize" / "test.log.txt").write_text("evaluated\n")
    return results


def test_aavs_logs_lists_and_prints(tmp_path, capsys):
    results = _fake_results(tmp_path)
    assert main(["logs", str(results)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listing] == [["localize/t000", "done"], ["localize/test", "-"]]
    assert main(["logs", str(results), "localize/t000", "--follow"]) == 0  # a finished trial: prints, returns
    assert capsys.readouterr().out == "epoch 1: val/miou=0.5\n"
    assert main(["logs", str(results), "localize/t009"]) == 2
    assert "localize/t000" in capsys.readouterr().err
