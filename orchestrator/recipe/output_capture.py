"""Each trial's and each task's output in its own log file, not on the driver's terminal.

A search that runs for a week prints thousands of lines from its trials; on the driver's terminal they
bury what changed. So a trial (a Ray Tune function trial, the ranks of a multi-worker trial, or a
``--local`` trial in the driver's own process) and each task of a stage run inside :func:`captured`,
which for their duration sends to the log file

- everything written to file descriptors 1 and 2: prints, tracebacks, C extensions, and the
  libraries' own messages (DeepSpeed's accelerator detection, Ray's worker output, warnings);
- ``sys.stdout`` and ``sys.stderr`` (in ``--local`` mode they are otherwise the live view's);
- this thread's Python logging records (``aavs`` at INFO, others at their level), which the handlers
  that were there before no longer see (in ``--local`` mode: the driver's terminal).

With ``quiet=False`` (``aavs run -v``) only the logging records are copied into the file and the
output goes where it went before (Ray forwards it to the driver's terminal). The files, under
``results/<name>/``::

    <stage>/trials/<id>/log.txt           the trial (a multi-worker trial: its Tune controller and rank 0)
    <stage>/trials/<id>/log.rank<N>.txt   rank N > 0 of a multi-worker trial
    <stage>/masks.log.txt                 exporting the best checkpoint's masks (the next stage's prior)
    <stage>/test.log.txt                  evaluating the best checkpoint on the test split
    <stage>/report.log.txt                the report's prediction pass

``aavs logs`` reads them (:func:`log_files`, :func:`resolve`, :func:`follow`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, TextIO

from aavs.datasets import atomic
from aavs.datasets.errors import InputError
from aavs.orchestrator import results
from aavs.orchestrator.results import TRIAL_LOG, TrialStatus

log = logging.getLogger(__name__)

TASK_LOGS = ("masks", "test", "report")  # <stage>/<task>.log.txt
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def trial_log(trial_dir: str | os.PathLike, rank: int = 0) -> Path:
    return Path(trial_dir) / (TRIAL_LOG if rank == 0 else f"log.rank{rank}.txt")


def task_log(stage_dir: str | os.PathLike, task: str) -> Path:
    return Path(stage_dir) / f"{task}.log.txt"


# ------------------------------------------------------------------------------------ capturing
class _NotThread(logging.Filter):
    """Keeps a handler from the records of one thread (the captured one)."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


class _OnlyThread(_NotThread):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


@contextmanager
def captured(path: str | os.PathLike, quiet: bool = True) -> Iterator[Path]:
    """Run the body with its output in ``path`` (appended); see the module docstring.

    An exception leaving the body is written to the file with its traceback before it propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    thread = threading.get_ident()
    with open(path, "a", encoding="utf-8", buffering=1) as file:
        handler = logging.StreamHandler(file)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(_OnlyThread(thread))
        with _fds_to(file, quiet), _records_to(handler, thread, quiet):
            try:
                yield path
            except Exception:
                log.exception("%s failed", path.parent.name if path.name == TRIAL_LOG else path.name)
                raise


@contextmanager
def _fds_to(file: TextIO, quiet: bool) -> Iterator[None]:
    """Descriptors 1 and 2 (and ``sys.stdout``/``sys.stderr`` on them) into ``file``; restored after."""
    if not quiet:
        yield
        return
    streams = sys.stdout, sys.stderr
    for stream in streams:
        _flush(stream)
    saved = os.dup(1), os.dup(2)
    os.dup2(file.fileno(), 1)
    os.dup2(file.fileno(), 2)
    # New objects, never closed: a library that keeps the one it found (DeepSpeed's logger does)
    # writes to the descriptors, wherever they point afterwards.
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)
    try:
        yield
    finally:
        _flush(sys.stdout)
        _flush(sys.stderr)
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextmanager
def _records_to(handler: logging.Handler, thread: int, quiet: bool) -> Iterator[None]:
    """``handler`` on the root logger; with ``quiet``, the earlier handlers skip this thread's records."""
    root, ours = logging.getLogger(), logging.getLogger("aavs")
    level = ours.level
    if level == logging.NOTSET or level > logging.INFO:  # a Ray worker's `aavs` logger: root's WARNING
        ours.setLevel(logging.INFO)
    muted = [h for h in {*root.handlers, *ours.handlers}] if quiet else []
    skip = _NotThread(thread)
    for h in muted:
        h.addFilter(skip)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for h in muted:
            h.removeFilter(skip)
        ours.setLevel(level)


def _flush(stream: TextIO | None) -> None:
    try:
        if stream is not None:
            stream.flush()
    except (OSError, ValueError):  # a closed or broken stream: nothing left to keep
        pass


def mark_failed(trial_dir: str | os.PathLike, err: BaseException) -> None:
    """``status.json`` says failed (interrupted, for a full disk), with the error and the log's path
    (the leaderboard shows both)."""
    status = results.read_status(trial_dir) or results.StatusRecord(status=TrialStatus.PENDING)
    if status.status not in (TrialStatus.FAILED, TrialStatus.INTERRUPTED):  # train_func's own words win
        # A full disk is not the trial's fault: interrupted, so that `aavs resume` continues it.
        interrupted = isinstance(err, atomic.NoSpaceLeft)
        status.status = TrialStatus.INTERRUPTED if interrupted else TrialStatus.FAILED
        status.time = time.time()
        status.error = f"{type(err).__name__}: {err}".splitlines()[0]
    status.log = str(trial_log(trial_dir))
    results.write_status(trial_dir, status)


def tail(path: str | os.PathLike, lines: int = 5) -> list[str]:
    """The last ``lines`` non-empty lines of a log file (none if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


# ----------------------------------------------------------------------------------- aavs logs
class LogFile(NamedTuple):
    label: str  # "<stage>/<trial>" or "<stage>/<task>"
    path: Path
    status: str  # the trial's TrialStatus; "-" for a task


def log_files(results_dir: str | os.PathLike) -> list[LogFile]:
    """Every log file of an experiment, stage by stage: trials in order, then the stage's tasks."""
    results_dir = Path(results_dir)
    files = []
    for stage in _stage_names(results_dir):
        stage_dir = results_dir / stage
        for path in sorted(stage_dir.glob("trials/*/log*.txt")):
            status = results.trial_status(path.parent)
            suffix = "" if path.name == TRIAL_LOG else "." + path.name[len("log.") : -len(".txt")]
            files.append(LogFile(f"{stage}/{path.parent.name}{suffix}", path, status))
        files.extend(
            LogFile(f"{stage}/{task}", task_log(stage_dir, task), "-")
            for task in TASK_LOGS
            if task_log(stage_dir, task).is_file()
        )
    return files


def resolve(results_dir: str | os.PathLike, target: str) -> LogFile:
    """``STAGE/TRIAL`` (or ``STAGE/masks``, ``STAGE/test``, ``STAGE/report``) as its log file."""
    known = {f.label: f for f in log_files(results_dir)}
    if target.strip("/") in known:
        return known[target.strip("/")]
    stage, _, name = target.strip("/").partition("/")
    trial_dir = Path(results_dir) / stage / "trials" / name
    if stage in _stage_names(Path(results_dir)) and name and trial_dir.is_dir():  # started, nothing logged yet
        return LogFile(target, trial_log(trial_dir), results.trial_status(trial_dir))
    raise InputError(
        f"{target}: no such log in {results_dir}; expected STAGE/TRIAL or STAGE/TASK, one of "
        f"{sorted(known) or 'none yet'}"
    )


def follow(
    files: Callable[[], list[LogFile]],
    write: Callable[[str], None],
    done: Callable[[], bool],
    prefix: bool,
    interval: float = 0.5,
) -> None:
    """Write the files' lines, then their new lines as they come, until ``done()`` and nothing is new.

    ``files`` is asked again at every poll (trials start during a run); with ``prefix`` each line is
    labelled with its file's label.
    """
    offsets: dict[Path, int] = {}
    while True:
        finished = done()  # before reading: lines written before the end are still shown
        new = False
        for f in files():
            lines, offsets[f.path] = _new_lines(f.path, offsets.get(f.path, 0))
            for line in lines:
                write(f"{f.label} | {line}\n" if prefix else line + "\n")
            new = new or bool(lines)
        if finished and not new:
            return
        time.sleep(interval)


def _new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """Complete lines after ``offset`` and the offset after them (a partial last line waits)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8", errors="replace").splitlines(), offset + end


def experiment_done(results_dir: str | os.PathLike) -> bool:
    """Every stage of the experiment has completed (its ``done.json``)."""
    return all(results.read_done(Path(results_dir) / s) is not None for s in _stage_names(Path(results_dir)))


def trial_done(target: LogFile) -> bool:
    """The trial behind a log has ended (a task's log: at once, it is complete when shown)."""
    return target.status == "-" or results.trial_status(target.path.parent).ended


def _stage_names(results_dir: Path) -> list[str]:
    return results.require_spec(results_dir).stage_names
