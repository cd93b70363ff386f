"""Where a training run's per-epoch results go.

``train_func`` always writes the same files into its trial folder (``metrics.jsonl``, ``status.json``,
checkpoint folders; their records are in :mod:`aavs.orchestrator.results`), so a results directory
looks the same however the function ran. Under Ray the :class:`RayReporter` additionally hands every
report to ``ray.train.report`` so Ray Tune can schedule and rank trials; in local mode the
:class:`LocalReporter` alone is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from aavs.orchestrator import results
from aavs.orchestrator.recipe import checkpointing
from aavs.orchestrator.results import TrialStatus

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None, append: bool = True) -> None: ...

    def status(self, status: TrialStatus, **extra: Any) -> None: ...

    def progress(self, progress: dict[str, float]) -> None: ...


class LocalReporter:
    """Appends one JSON line per report to ``metrics.jsonl`` and keeps ``status.json`` current.

    Only the main process (rank 0) writes, so several workers never interleave lines.
    """

    def __init__(self, trial_dir: str | os.PathLike, is_main: bool = True, exchange: int = 0):
        self.trial_dir = Path(trial_dir)
        self.is_main, self.exchange = is_main, exchange
        self._last: tuple[TrialStatus, dict[str, Any]] = (TrialStatus.RUNNING, {})  # what progress() keeps
        if is_main:
            self.trial_dir.mkdir(parents=True, exist_ok=True)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None, append: bool = True) -> None:
        """``append`` False: a report already in ``metrics.jsonl`` (a finished trial started again tells
        Tune its last result; its file stays as the run wrote it)."""
        if not self.is_main or not append:
            return
        line = dict(metrics, time=time.time())
        if checkpoint is not None:
            line["checkpoint"] = str(checkpoint)
        results.append_metrics(self.trial_dir, line)
        log.info("%s", epoch_line(metrics))

    def status(self, status: TrialStatus, **extra: Any) -> None:
        """``status.json`` now: ``extra`` are StatusRecord's fields (epoch, epochs, best, error)."""
        self._last = (status, extra)
        if self.is_main:
            results.write_status(self.trial_dir, results.StatusRecord(status=status, time=time.time(), **extra))

    def progress(self, progress: dict[str, float]) -> None:
        """Where the running epoch stands: into ``status.json`` (the live view's in-epoch line) beside
        the last status, and a line of the trial's log."""
        if not self.is_main:
            return
        status, extra = self._last
        record = results.StatusRecord(status=status, time=progress["time"], **{**extra, "progress": progress})
        results.write_status(self.trial_dir, record)
        log.info("%s", results.progress_line(progress))


class RayReporter(LocalReporter):
    """The local files, plus a report to Ray so that Tune can schedule and rank trials.

    Inside a Ray Train worker it calls ``ray.train.report`` (every worker must; the trial's
    ``TuneReportCallback`` forwards rank 0's metrics to Tune); inside a plain Tune function trial it
    calls ``ray.tune.report``. No checkpoint travels through Ray: the trial folder on the results
    storage is the single source of checkpoints, and a restarted trial resumes from it.
    """

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None, append: bool = True) -> None:
        super().report(metrics, checkpoint, append)
        metrics = _ray_safe(metrics)
        # ray here, not at the top: a --local trial never imports it (seconds of start-up).
        if _in_train_worker():
            import ray.train

            ray.train.report(metrics)
        elif self.exchange and append and (metrics.get("epoch", -1) + 1) % self.exchange == 0:
            import ray.tune

            with exchange_folder(self.trial_dir) as folder:
                ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(folder)))
        else:
            import ray.tune

            ray.tune.report(metrics)


@contextlib.contextmanager
def exchange_folder(trial_dir: Path) -> Iterator[Path]:
    """The trial's whole training state as one folder for Tune to keep (a copy: Tune persists it
    during the report): ``last/`` (weights, optimizer, RNG, trainer state), ``best/`` (the checkpoint
    phase B starts from) and ``origin.json`` (which trial, which epoch). See adopt_exchanged_state."""
    state = checkpointing.read_trainer_state(trial_dir)
    with tempfile.TemporaryDirectory(dir=trial_dir, prefix=".exchange-") as tmp:
        folder = Path(tmp)
        shutil.copytree(checkpointing.last_dir(trial_dir), folder / "last")
        if (trial_dir / checkpointing.BEST).is_dir():
            shutil.copytree(trial_dir / checkpointing.BEST, folder / "best")
        origin = {"trial": trial_dir.name, "epoch": state.epoch if state else -1}
        (folder / "origin.json").write_text(json.dumps(origin), encoding="utf-8")
        yield folder


def _ray_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def _in_train_worker() -> bool:
    try:
        import ray.train  # here, not at the top: ray (see RayReporter.report)

        ray.train.get_context().get_world_rank()
        return True
    except Exception:  # noqa: BLE001 - not a Ray Train worker
        return False


def _in_tune_trial() -> bool:
    """Inside a Tune trial: Tune's public context knows the trial's id (outside one it warns and says None)."""
    try:
        import ray.tune  # here, not at the top: ray (see RayReporter.report)
    except ImportError:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ray.tune.get_context().get_trial_id() is not None


def make_reporter(trial_dir: str | os.PathLike, is_main: bool, exchange: int = 0) -> Reporter:
    """``exchange``: every this many epochs a report to Tune carries the training state (population-based
    training; 0: never)."""
    in_ray = _in_train_worker() or _in_tune_trial()
    return RayReporter(trial_dir, is_main, exchange) if in_ray else LocalReporter(trial_dir, is_main)


def epoch_line(metrics: dict[str, Any]) -> str:
    """A report as one line of the trial's log: ``epoch 2 (phase B): train/loss=0.412 val/miou=0.537 ...``."""
    epoch, phase = metrics.get("epoch"), metrics.get("phase")
    head = f"epoch {epoch + 1}" if isinstance(epoch, int) else "report"
    values = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(metrics.items())
        if k not in ("epoch", "phase") and isinstance(v, (int, float, str))
    )
    return f"{head}{f' (phase {phase})' if phase else ''}: {values}"


class EpochProgress:
    """Tells ``reporter`` where an epoch stands, at most every ``interval`` seconds: its step, the
    training frames per second so far, when the epoch's training steps end and when the trial ends (the
    epochs left at this epoch's pace, validation included as the last epoch took it)."""

    def __init__(
        self, reporter: Reporter, epoch: int, epochs: int, interval: float, last_epoch_s: float | None
    ) -> None:
        self.reporter, self.epoch, self.epochs, self.interval = reporter, epoch, epochs, interval
        self.last_epoch_s = last_epoch_s  # the previous epoch's whole time (training and validation)
        self.start = self.shown = time.monotonic()

    def step(self, step: int, steps: int, frames: int) -> None:
        """After ``step`` of the epoch's ``steps`` steps and ``frames`` training frames."""
        now = time.monotonic()
        if now - self.shown < self.interval or step >= steps:
            return
        self.shown = now
        elapsed = now - self.start
        epoch_eta = elapsed / step * (steps - step)
        this_epoch = self.last_epoch_s or elapsed + epoch_eta
        self.reporter.progress(
            {
                "epoch": self.epoch,
                "epochs": self.epochs,
                "step": step,
                "steps": steps,
                "frames_per_s": frames / max(elapsed, 1e-9),
                "epoch_eta_s": epoch_eta,
                "trial_eta_s": epoch_eta + (self.epochs - self.epoch - 1) * this_epoch,
                "time": time.time(),
            }
        )
