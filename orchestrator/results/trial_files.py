"""A trial's files (under ``<stage>/trials/<id>/``): ``params.json``, ``schedule.json``, ``config.json``,
``node.json``, ``status.json``, and its reports, ``metrics.jsonl`` and ``best/metrics.json``."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from aavs.datasets import atomic
from aavs.datasets.errors import InputError
from aavs.orchestrator.results.names import (
    CHECKPOINT_METRICS_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    NODE_FILE,
    PARAMS_FILE,
    SCHEDULE_FILE,
    STATUS_FILE,
)
from aavs.orchestrator.results.records import OpenRecord, Record, TrialStatus, load_json, read_record, write_record

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- what the trial ran with
def write_params(trial_dir: str | os.PathLike[str], params: dict[str, Any]) -> None:
    """``params.json``: the trial's sampled parameters (keys are the stage's ``params``)."""
    atomic.write_json(Path(trial_dir) / PARAMS_FILE, params)


def read_params(trial_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    params = load_json(Path(trial_dir) / PARAMS_FILE)
    return params if isinstance(params, dict) else None


class ScheduleEntry(Record):
    """One span of a trial's parameters: from which epoch they held, and, after a population-based
    training exploit, which trial's state (taken after its epoch ``from_epoch - 1``) it continued from."""

    from_epoch: int
    params: dict[str, Any]
    exploited: str | None = None


class Schedule(Record):
    """``schedule.json``: what a trial really trained with, in order (format 2; absent: params.json
    held for the whole run)."""

    spans: list[ScheduleEntry] = Field(default_factory=list)


def read_schedule(trial_dir: str | os.PathLike[str]) -> Schedule | None:
    return read_record(Path(trial_dir) / SCHEDULE_FILE, Schedule)


def write_schedule(trial_dir: str | os.PathLike[str], schedule: Schedule) -> None:
    write_record(Path(trial_dir) / SCHEDULE_FILE, schedule)


def write_trial_config(trial_dir: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """``config.json``: the trial's TrainConfig.to_dict() (aavs.orchestrator.recipe.config)."""
    atomic.write_json(Path(trial_dir) / CONFIG_FILE, config)


def read_trial_config(trial_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    config = load_json(Path(trial_dir) / CONFIG_FILE)
    return config if isinstance(config, dict) else None


# ------------------------------------------------------------------------------ where it stands
class NodeRecord(Record):
    """``node.json``: where the trial last ran (its rank 0; rank N > 0 of a multi-worker trial writes
    ``node.rankN.json``); ``node_id`` None outside Ray. Format 2: also the host and process id of that
    rank (to find it, e.g. to see what the out-of-memory killer took). Then, in the same layout (the keys
    are optional: an older record reads with them None, unknown): the rank's placement, what Ray gave it
    and what it saw, written as it starts and again, with ``end`` and where accelerate computed, as it
    ends. A rank ended from outside (Ray Tune stopping its trial, a killed process) cannot write its
    end: the driver writes when Tune ended the trial (:func:`end_node`); a rank no one saw end keeps
    ``end`` None."""

    node_id: str | None
    host: str | None = None
    pid: int | None = None
    rank: int = 0
    gpu_ids: list[str] | None = None  # ray.get_gpu_ids() of the rank's process ([] without GPUs)
    cuda_visible_devices: str | None = None  # as the rank's process saw it (None: unset)
    backend: str | None = None  # its torch.distributed process group's (gloo, nccl); None: one process
    device: str | None = None  # where accelerate computed (cpu, cuda:0)
    distributed: str | None = None  # accelerate's distributed type (NO, MULTI_CPU, MULTI_GPU, DEEPSPEED)
    start: float | None = None
    end: float | None = None


def node_file(trial_dir: str | os.PathLike[str], rank: int = 0) -> Path:
    """A rank's ``node.json`` (rank 0) or ``node.rankN.json``."""
    return Path(trial_dir) / (NODE_FILE if rank == 0 else f"node.rank{rank}.json")


def write_node(trial_dir: str | os.PathLike[str], node_id: str | None, **placement: Any) -> None:
    """This process's node record (of ``placement["rank"]``, 0 by default): its node, host and pid,
    and ``placement``, NodeRecord's other keys."""
    record = NodeRecord(node_id=node_id, host=socket.gethostname(), pid=os.getpid(), **placement)
    write_record(node_file(trial_dir, record.rank), record)


def read_node(trial_dir: str | os.PathLike[str], rank: int = 0) -> NodeRecord | None:
    return read_record(node_file(trial_dir, rank), NodeRecord)


def end_node(trial_dir: str | os.PathLike[str], rank: int, end: float) -> bool:
    """A rank's record that has a start and no end (ended from outside) gets ``end``, the rest as it
    was; False where there is none such."""
    record = read_node(trial_dir, rank)
    if record is None or record.start is None or record.end is not None:
        return False
    record.end = end
    write_record(node_file(trial_dir, rank), record)
    return True


class StatusRecord(Record):
    """``status.json``: where the trial stands, kept current by ``train_func`` (and marked failed with
    the error and log by aavs.orchestrator.recipe.output_capture, stopped by the Ray runner)."""

    status: TrialStatus
    time: float | None = None
    epoch: int | None = None  # epochs finished
    epochs: int | None = None
    best: dict[str, Any] | None = None  # the best epoch's val metrics
    error: str | None = None
    log: str | None = None  # the trial's log file, once it failed
    # Within the running epoch, at most every progress_interval_s: epoch, step, steps, frames_per_s,
    # epoch_eta_s, trial_eta_s and time (aavs.orchestrator.recipe.reporter.EpochProgress).
    progress: dict[str, float] | None = None


def progress_line(progress: dict[str, float]) -> str:
    """``epoch 3/60 step 120/480: 12.3 frames/s, epoch ends in 4m10s, trial in 3h02m``."""
    return (
        f"epoch {int(progress['epoch']) + 1}/{int(progress['epochs'])} "
        f"step {int(progress['step'])}/{int(progress['steps'])}: {progress['frames_per_s']:.1f} frames/s, "
        f"epoch ends in {duration(progress['epoch_eta_s'])}, trial in {duration(progress['trial_eta_s'])}"
    )


def duration(seconds: float) -> str:
    """``42s``, ``4m10s``, ``3h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def write_status(trial_dir: str | os.PathLike[str], record: StatusRecord) -> None:
    write_record(Path(trial_dir) / STATUS_FILE, record)


def read_status(trial_dir: str | os.PathLike[str]) -> StatusRecord | None:
    return read_record(Path(trial_dir) / STATUS_FILE, StatusRecord)


def trial_status(trial_dir: str | os.PathLike[str]) -> TrialStatus:
    """The trial's status; PENDING before its first ``status.json``."""
    record = read_status(trial_dir)
    return record.status if record else TrialStatus.PENDING


# ---------------------------------------------------------------------------------- its reports
class MetricsRow(OpenRecord):
    """One line of ``metrics.jsonl``: a report of ``train_func`` (``epoch``, ``phase``, ``train/*``,
    ``val/*``, ``best/<metric>``), when it was written and the best checkpoint then."""

    epoch: int | None = None
    phase: str | None = None
    time: float | None = None
    checkpoint: str | None = None


def metrics_line(row: dict[str, Any] | MetricsRow) -> str:
    """One report as a line of ``metrics.jsonl``: the keys it has, no others."""
    record = row if isinstance(row, MetricsRow) else MetricsRow.model_validate(row)
    return json.dumps(record.to_json(), sort_keys=True) + "\n"


def append_metrics(trial_dir: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one report (a line is one ``write``, so a killed writer tears at most the last line)."""
    atomic.append_line(Path(trial_dir) / METRICS_FILE, metrics_line(row))


def read_metrics(trial_dir: str | os.PathLike[str]) -> list[MetricsRow]:
    """All reports of a trial, in order; a torn last line (a killed writer), or any line that is not a
    report, is ignored. Something there that cannot be read as a file is an InputError naming it."""
    path = Path(trial_dir) / METRICS_FILE
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")  # bytes that are not UTF-8: not a report
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None
    rows = []
    for line in text.splitlines():
        try:
            rows.append(MetricsRow.model_validate_json(line))
        except ValidationError:
            log.warning("%s: ignoring a truncated line", path)
    return rows


def write_metrics(trial_dir: str | os.PathLike[str], rows: Iterable[MetricsRow]) -> None:
    """Replace ``metrics.jsonl`` with ``rows`` (atomically)."""
    atomic.write_text(Path(trial_dir) / METRICS_FILE, "".join(metrics_line(r) for r in rows))


def keep_metrics_through(trial_dir: str | os.PathLike[str], last_epoch: int) -> None:
    """Drop report lines of epochs after ``last_epoch`` (an epoch reported, then killed before its
    checkpoint, is redone and reported again)."""
    write_metrics(
        trial_dir, [r for r in read_metrics(trial_dir) if (r.epoch if r.epoch is not None else -1) <= last_epoch]
    )


def clear_metrics(trial_dir: str | os.PathLike[str]) -> None:
    """A fresh start: nothing reported earlier in this trial folder counts."""
    (Path(trial_dir) / METRICS_FILE).unlink(missing_ok=True)


class CheckpointMetrics(OpenRecord):
    """``best/metrics.json`` of a trial: the val metrics of the epoch its best checkpoint is from."""

    epoch: int | None = None


def write_checkpoint_metrics(checkpoint_dir: str | os.PathLike[str], metrics: dict[str, Any]) -> None:
    write_record(Path(checkpoint_dir) / CHECKPOINT_METRICS_FILE, CheckpointMetrics.model_validate(metrics))


def read_checkpoint_metrics(checkpoint_dir: str | os.PathLike[str]) -> CheckpointMetrics | None:
    return read_record(Path(checkpoint_dir) / CHECKPOINT_METRICS_FILE, CheckpointMetrics)
