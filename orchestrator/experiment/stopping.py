"""Stopping a running experiment so that ``aavs resume`` continues it: ``aavs stop RESULTS/<name>`` or
Ctrl-C (a second Ctrl-C quits at once).

A stop is a request in the results folder (``stop.json``), so it works from another terminal or host
that sees the folder. What it stops:

- ``--local``: the running trial finishes its current training step and ends ``interrupted``
  (``recipe.train.TrialStopped``; its status says so), and the driver ends with :class:`ExperimentStopped`.
- Ray: the stage's Tune run is interrupted the way Tune's own Ctrl-C does it (SIGUSR1 to the driver,
  with Tune's SIGINT handler left to ours): Tune saves its experiment state, ends the running trials
  and leaves them resumable; the driver ends with :class:`ExperimentStopped`.

Either way the state a trial resumes from is that of its last finished epoch (``checkpoints/last``):
the epoch in progress is trained again, exactly, by ``aavs resume``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from aavs.datasets.errors import InputError
from aavs.orchestrator import results
from aavs.orchestrator.experiment import lock

log = logging.getLogger(__name__)


class ExperimentStopped(Exception):
    """The experiment stopped on request; ``aavs resume`` continues it."""

    def __init__(self, results_dir: Path) -> None:
        super().__init__(f"stopped; `aavs resume {results_dir}` continues where it stopped")
        self.results_dir = results_dir


@contextlib.contextmanager
def stop_on_ctrl_c(results_dir: Path) -> Iterator[None]:
    """While the experiment runs: the first Ctrl-C asks it to stop (trials finish their step), the
    second raises KeyboardInterrupt at once. Only where signals can be handled (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def request(signum: int, frame: object) -> None:
        results.write_stop(results_dir, "Ctrl-C")
        log.warning("stopping: running trials finish their current step (Ctrl-C again to quit at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, request)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interrupting_tune_on_request(results_dir: Path, poll_s: float = 0.25) -> Iterator[None]:
    """Around a stage's ``Tuner.fit()``: a stop request interrupts Tune as its own signal handler does
    (SIGUSR1: experiment state saved, running trials resumable). Tune's SIGINT handler is switched off
    (``TUNE_DISABLE_SIGINT_HANDLER``) so that Ctrl-C reaches :func:`stop_on_ctrl_c` and becomes a request."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if results.read_stop(results_dir) is not None:
                os.kill(os.getpid(), signal.SIGUSR1)
                return

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    watcher = threading.Thread(target=watch, name="aavs-stop-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def request_stop(results_dir: Path) -> str:
    """``aavs stop``: the request, and what it reached (raises InputError when nothing runs there)."""
    holder = lock.read_holder(results_dir)
    if holder is None:
        raise InputError(f"{results_dir}: no run or resume is at work there (no lock.json)")
    results.write_stop(results_dir, "aavs stop")
    return f"asked {holder.describe()} to stop; running trials finish their current step"
