"""Where a training run's per-epoch results go.

``train_func`` always writes the same files into its trial folder (``metrics.jsonl``, ``status.json``,
checkpoint folders), so a results directory looks the same however the function ran. Under Ray the
:class:`RayReporter` additionally hands every report to ``ray.train.report`` so Ray Tune can schedule
and rank trials; in local mode the :class:`LocalReporter` alone is used.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

from aavs.datasets import atomic

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None: ...

    def status(self, status: str, **extra: Any) -> None: ...


class LocalReporter:
    """Appends one JSON line per report to ``metrics.jsonl`` and keeps ``status.json`` current.

    Only the main process (rank 0) writes, so several workers never interleave lines.
    """

    def __init__(self, trial_dir: str | os.PathLike, is_main: bool = True):
        self.trial_dir = Path(trial_dir)
        self.is_main = is_main
        if is_main:
            self.trial_dir.mkdir(parents=True, exist_ok=True)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        if not self.is_main:
            return
        line = dict(metrics, time=time.time())
        if checkpoint is not None:
            line["checkpoint"] = str(checkpoint)
        with open(self.trial_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(metrics_line(line))
        log.info("%s", epoch_line(metrics))

    def status(self, status: str, **extra: Any) -> None:
        if self.is_main:
            atomic.write_json(self.trial_dir / STATUS_FILE, dict(extra, status=status, time=time.time()))


class RayReporter(LocalReporter):
    """The local files, plus a report to Ray so that Tune can schedule and rank trials.

    Inside a Ray Train worker it calls ``ray.train.report`` (every worker must; the trial's
    ``TuneReportCallback`` forwards rank 0's metrics to Tune); inside a plain Tune function trial it
    calls ``ray.tune.report``. No checkpoint travels through Ray: the trial folder on the results
    storage is the single source of checkpoints, and a restarted trial resumes from it.
    """

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        super().report(metrics, checkpoint)
        metrics = _ray_safe(metrics)
        if _in_train_worker():
            import ray.train

            ray.train.report(metrics)
        else:
            import ray.tune

            ray.tune.report(metrics)


def _ray_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def _in_train_worker() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_rank()
        return True
    except Exception:  # noqa: BLE001 - not a Ray Train worker
        return False


def _in_tune_trial() -> bool:
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        return bool(_in_tune_session())
    except Exception:  # noqa: BLE001 - no Ray
        return False


def make_reporter(trial_dir: str | os.PathLike, is_main: bool) -> Reporter:
    in_ray = _in_train_worker() or _in_tune_trial()
    return RayReporter(trial_dir, is_main) if in_ray else LocalReporter(trial_dir, is_main)


def epoch_line(metrics: dict[str, Any]) -> str:
    """A report as one line of the trial's log: ``epoch 2 (phase B): train/loss=0.412 val/miou=0.537 ...``."""
    epoch, phase = metrics.get("epoch"), metrics.get("phase")
    head = f"epoch {epoch + 1}" if isinstance(epoch, int) else "report"
    values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items())
                      if k not in ("epoch", "phase") and isinstance(v, (int, float, str)))
    return f"{head}{f' (phase {phase})' if phase else ''}: {values}"


def metrics_line(row: dict[str, Any]) -> str:
    """One report as a line of ``metrics.jsonl``."""
    return json.dumps(row, sort_keys=True) + "\n"


def keep_metrics_through(trial_dir: str | os.PathLike, last_epoch: int) -> None:
    """Drop report lines of epochs after ``last_epoch`` (an epoch reported, then killed before its
    checkpoint, is redone and reported again)."""
    rows = [r for r in read_metrics(trial_dir) if r.get("epoch", -1) <= last_epoch]
    atomic.write_text(Path(trial_dir) / METRICS_FILE, "".join(metrics_line(r) for r in rows))


def read_metrics(trial_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All reports of a trial, in order; a torn last line (a killed writer) is ignored."""
    path = Path(trial_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: ignoring a truncated line", path)
    return rows
