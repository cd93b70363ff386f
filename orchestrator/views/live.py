"""The live view of an experiment, drawn from its results folder alone.

One implementation serves ``aavs run`` (in-process ``--local`` trials and Ray Tune trials alike) and
``aavs leaderboard --watch`` (another terminal, another machine with the shared storage mounted): a
background thread polls the files every trial writes wherever it runs (``metrics.jsonl``,
``status.json``, ``best/``), rebuilds the leaderboard when they changed, keeps ``leaderboard.json``
current when it is the run's driver (a watcher only reads), and shows it:

- on a terminal, a rich ``Live`` display that owns the screen: progress bars of trials and epochs, the
  leaderboard tables, and the last few events (epochs reported, trials ended, the driver's log
  messages, each cropped to one line). Warnings and failed trials (with the last lines of their log
  and its path) are also printed above the display, where they stay. Ray's own console tables stay
  off (Tune runs with ``verbose=0``) and the trials' output is in their log files
  (:mod:`aavs.orchestrator.recipe.output_capture`);
- anywhere else (CI logs, a file), one plain line per event, never wrapped, without colour codes.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, cast

from rich.console import Console, Group, RenderableType
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from aavs.orchestrator.recipe.output_capture import tail
from aavs.orchestrator.results import StageStatus, TrialStatus, progress_line
from aavs.orchestrator.views.board import build_leaderboard, pct, sources_digest, write_leaderboard
from aavs.orchestrator.views.leaderboard import render_leaderboard, status_label

log = logging.getLogger(__name__)

RECENT = 6  # events shown under the tables on a terminal
TAIL = 5  # last lines of a failed trial's log shown with it
LEVEL_STYLE = {logging.WARNING: "yellow", logging.ERROR: "bold red"}


class Event(NamedTuple):
    """One line of what happened; WARNING and above stay on screen (printed above the live display)."""

    text: str
    level: int = logging.INFO


def plain_line(console: Console, text: str) -> None:
    """``text`` as one line, whatever the console's width: no wrapping, no markup, no highlighting."""
    console.print(text, markup=False, highlight=False, soft_wrap=True, crop=False)


class _ViewHandler(logging.Handler):
    """The driver's log records while the live display owns the terminal: each becomes an event."""

    def __init__(self, view: LiveView) -> None:
        super().__init__()
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.levelno >= logging.ERROR:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.view.event(Event(text, record.levelno))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _NonInteractiveProxy(FileProxy):
    """``sys.stderr`` while the live display runs: writes land above the display, also those of
    other rich consoles on stderr (the log handler's), which see no terminal here, so a data set's
    decoding bar in a ``--local`` trial draws no second live display into ours."""

    @property
    def rich_proxied_file(self) -> IO[str]:
        # rich consoles write around a FileProxy, to the file it wraps; these must go through it.
        return cast(IO[str], self)

    def isatty(self) -> bool:
        return False


class LiveView:
    """Follow ``results_dir`` while a run (here or elsewhere) writes it; see the module docstring.

    ``console``: where to show it (None: only keep ``leaderboard.json`` current). ``write``: whether
    this process owns ``leaderboard.json`` (the run's driver) or only reads (a watcher).
    """

    def __init__(
        self,
        results_dir: str | Path,
        console: Console | None = None,
        *,
        write: bool = True,
        interval: float = 1.0,
        stage: str | None = None,
        top: int | None = None,
        transient: bool = True,
    ) -> None:
        self.results_dir = Path(results_dir)
        self.console, self.write, self.interval = console, write, interval
        self.stage, self.top, self.transient = stage, top, transient
        self.board: dict[str, Any] | None = None
        self._digest: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._stderr: IO[str] | None = None
        self._recent: deque[Event] = deque(maxlen=RECENT)
        self._driver_handlers: list[logging.Handler] | None = None
        self._progress = Progress(
            TextColumn("{task.description:>6}"),
            BarColumn(bar_width=36),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            auto_refresh=False,
        )
        self._tasks = {name: self._progress.add_task(name, total=None) for name in ("trials", "epochs")}

    # ------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> LiveView:
        self.poll()  # synchronously: a bad folder or --stage is an error here, not in the thread
        if self.console is not None:
            render_leaderboard(self.current(), self.stage, self.top)
            if self.console.is_terminal:
                self._stderr, sys.stderr = sys.stderr, _NonInteractiveProxy(self.console, sys.stderr)
                self._live = Live(
                    get_renderable=self._renderable,
                    console=self.console,
                    refresh_per_second=2,
                    transient=self.transient,
                    redirect_stdout=True,
                    redirect_stderr=False,
                )
                self._live.start()
                self._take_driver_log()
            else:
                board = self.current()
                self._line(f"experiment {board['name']}: {board['summary']}")
        self._thread = threading.Thread(target=self._run, name="aavs-live-view", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.poll()  # the final state: the last epochs and statuses, leaderboard.json current
        except Exception:  # noqa: BLE001 - never hide the run's own outcome behind the view's
            log.debug("live view: final refresh failed", exc_info=True)
        finally:
            if self._live is not None:
                self._give_back_driver_log()
                self._live.stop()
                if self._stderr is not None:
                    sys.stderr = self._stderr

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a half-moved stage folder; the next poll sees it whole
                log.debug("live view: refresh failed", exc_info=True)

    def poll(self) -> bool:
        """Rebuild the leaderboard if the folder changed since the last poll; True if it did."""
        digest = sources_digest(self.results_dir)
        if digest == self._digest and self.board is not None:
            return False
        board = write_leaderboard(self.results_dir) if self.write else build_leaderboard(self.results_dir)
        old, self.board, self._digest = self.board, board, digest
        progress = board["progress"]
        self._progress.update(self._tasks["trials"], total=progress["trials"], completed=progress["trials_done"])
        self._progress.update(self._tasks["epochs"], total=progress["epochs"], completed=progress["epochs_done"])
        if self.console is not None and old is not None:
            for event in event_lines(old, board):
                self.event(event)
        return True

    def current(self) -> dict[str, Any]:
        """The leaderboard of the last poll (the first runs as the view starts)."""
        if self.board is None:
            raise RuntimeError("the live view has not read its results folder yet (poll)")
        return self.board

    # ---------------------------------------------------------------------------------- output
    def event(self, event: Event) -> None:
        """Show an event: a plain line, or on the live display (kept above it from WARNING on)."""
        if self.console is None:
            return
        if self._live is None:
            self._line(event.text)
            return
        self._recent.append(event)
        if event.level >= logging.WARNING:
            self.console.print(Text(event.text, style=LEVEL_STYLE.get(min(event.level, logging.ERROR), "")))

    def _renderable(self) -> RenderableType:
        recent = [
            Text(
                e.text.splitlines()[0] if e.text else "",
                no_wrap=True,
                overflow="ellipsis",
                style=LEVEL_STYLE.get(min(e.level, logging.ERROR), "dim"),
            )
            for e in self._recent
        ]
        return Group(self._progress, render_leaderboard(self.current(), self.stage, self.top), *recent)

    def _line(self, text: str) -> None:
        if self.console is not None:
            plain_line(self.console, text)

    def _take_driver_log(self) -> None:
        """The ``aavs`` logger's records become events while the display runs (no line of theirs is
        drawn over it or wrapped); its handlers come back in :meth:`_give_back_driver_log`."""
        logger = logging.getLogger("aavs")
        self._driver_handlers = list(logger.handlers)
        for h in self._driver_handlers:
            logger.removeHandler(h)
        logger.addHandler(_ViewHandler(self))

    def _give_back_driver_log(self) -> None:
        logger = logging.getLogger("aavs")
        for h in list(logger.handlers):
            if isinstance(h, _ViewHandler) and h.view is self:
                logger.removeHandler(h)
        for h in self._driver_handlers or []:
            logger.addHandler(h)


def event_lines(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    """What changed between two leaderboards, a line each: where a running epoch stands, epochs
    reported, trials ended (a failed one with the last lines of its log and the log's path), stages done."""
    p = new["progress"]
    prefix = f"[{p['trials_done']}/{p['trials']} trials {p['epochs_done']}/{p['epochs']} epochs]"
    before = {(s["name"], t["trial_id"]): t for s in old["stages"] for t in s["trials"]}
    old_status = {s["name"]: s["status"] for s in old["stages"]}
    lines = []
    for stage in new["stages"]:
        for trial in stage["trials"]:
            was = before.get((stage["name"], trial["trial_id"]))
            seen = set(was["history"]["epoch"]) if was else set()
            history = trial["history"]
            for i, epoch in enumerate(history["epoch"]):
                if epoch in seen:
                    continue
                lines.append(
                    Event(
                        f"{prefix} {stage['name']} {trial['trial_id']} epoch {epoch + 1}/{trial['epochs']}: "
                        f"val mIoU {pct(history['val/miou'][i])} F {pct(history['val/fscore'][i])}"
                        f" (best {pct(trial['best'])}, rank {trial['rank'] or '-'})"
                    )
                )
            moved = trial.get("progress")
            if moved and moved != (was or {}).get("progress"):  # the trial writes it at most every interval
                lines.append(Event(f"{prefix} {stage['name']} {trial['trial_id']} {progress_line(moved)}"))
            if (
                trial["status"] != (was["status"] if was else TrialStatus.PENDING)
                and trial["status"] != TrialStatus.RUNNING
            ):
                lines.extend(_trial_ended(prefix, stage["name"], trial))
        if stage["status"] != old_status.get(stage["name"]) and StageStatus(stage["status"]).ended:
            best = stage["best"] or {}
            test = best.get("test") or {}
            lines.append(
                Event(
                    f"{prefix} stage {stage['name']} {stage['status']}"
                    + (
                        f": best {best['trial_id']} {stage['metric']} {pct(best['value'])},"
                        f" test mIoU {pct(test.get('miou'))} F {pct(test.get('fscore'))}"
                        if best
                        else ""
                    ),
                    logging.INFO if stage["status"] == StageStatus.DONE else logging.ERROR,
                )
            )
    return lines


def _trial_ended(prefix: str, stage: str, trial: dict[str, Any]) -> list[Event]:
    """A trial's end; a failure comes with its error, its log's last lines and the log's path."""
    head = (
        f"{prefix} {stage} {trial['trial_id']} {status_label(trial['status'])}"
        f" after {trial['epochs_done']}/{trial['epochs']} epochs"
    )
    if trial["status"] not in (TrialStatus.FAILED, TrialStatus.INTERRUPTED):
        return [Event(head)]
    events = [Event(f"{head}: {trial['error'] or 'see its log'}", logging.ERROR)]
    if trial.get("log"):
        events.extend(Event(f"    | {line}", logging.ERROR) for line in tail(trial["log"], TAIL))
        results = Path(trial["log"]).parents[3]  # <results>/<stage>/trials/<id>/log.txt
        events.append(
            Event(f"    log: {trial['log']} (aavs logs {results} {stage}/{trial['trial_id']})", logging.ERROR)
        )
    return events


def watch(
    results_dir: str | Path, console: Console, stage: str | None = None, top: int | None = None, interval: float = 2.0
) -> None:
    """``aavs leaderboard --watch``: follow the folder (reading only) until every stage ended or Ctrl-C."""
    try:
        with LiveView(
            results_dir, console, write=False, interval=interval, stage=stage, top=top, transient=False
        ) as view:
            while not StageStatus(view.current()["status"]).ended:
                time.sleep(interval / 2)
    except KeyboardInterrupt:
        log.debug("watch interrupted")
