"""The results folder: one typed record, reader and writer per file, and the folder's format version.

A results folder is the contract between the driver (``aavs run``/``resume``), the trials (wherever
they run), the leaderboard and live view, the report, ``aavs predict`` and remote watchers. Every one of
them reads and writes it through this module, so its layout is stated once, here::

    file (under results/<name>/)          written by                      read by                          record
    format.json                           run/resume (open_results)       every reader (check_format)      FormatRecord
    provenance.json                       run/resume (open_results)       people (what wrote the folder)   ProvenanceLog
    spec.json                             run (stages._save_spec)         leaderboard, report, predict,    SpecRecord
                                                                           logs
    run.json                              run                             resume (started_mode)            RunRecord
    stop.json                             aavs stop, Ctrl-C               the driver, --local trials       StopRequest
    leaderboard.json                      the driver's live view          leaderboard, --watch, report     Leaderboard
    <stage>/inputs.json                   the driver, at a stage's start  the driver (supersede)           InputsRecord
    <stage>/best.json                     the driver, at a stage's end    driver, leaderboard, predict     BestTrial
    <stage>/done.json                     the driver, last of a stage     driver (skip), leaderboard, logs DoneRecord
    <stage>/masks/_SUCCESS.json           the mask export task            driver, leaderboard              MasksRecord
    <stage>/trials/<id>/params.json       the trial, as it starts         driver, leaderboard              dict (the search space's keys)
    <stage>/tune/                         Ray Tune (experiment state)     aavs resume (Tuner.restore)      Tune's own
    <stage>/trials/<id>/schedule.json     the trial, when PBT exploits    leaderboard                      Schedule
    <stage>/trials/<id>/config.json       train_func                      leaderboard                      dict (TrainConfig.to_dict())
    <stage>/trials/<id>/node.json         the trial (rank 0, Ray)         people, tests                    NodeRecord
    <stage>/trials/<id>/status.json       train_func, output_capture,     driver, leaderboard, logs        StatusRecord
                                          the Ray runner (stopped)
    <stage>/trials/<id>/metrics.jsonl     train_func (one line a report)  leaderboard, train_func (resume) MetricsRow
    <stage>/trials/<id>/best/metrics.json train_func (_save_best)         driver (pick_best), leaderboard  CheckpointMetrics
    report/<stage>/predictions.json       the report                      the report (is it current?)      Predictions

Checkpoint internals (``checkpoints/last/``, a checkpoint's ``aavs.json``) belong to
:mod:`aavs.orchestrator.recipe.checkpointing` and :mod:`aavs.models`, not to this module.

Format version. ``format.json`` records the version of this layout the folder was written in
(:data:`FORMAT_VERSION`); a folder without it predates versioning and is version 1, whose files have
the layouts read here today. A folder of a newer version than this aavs knows is refused with an
:class:`InputError` that names the folder and both versions, by every reader (they all read
``spec.json`` first, through :func:`read_spec`) and before ``aavs run``/``resume`` write anything.
A change of any file's layout bumps :data:`FORMAT_VERSION` and keeps reading the previous layouts: a
search must survive an upgrade of aavs mid-run, so a folder a newer aavs resumed holds files of both.
The record of a changed file gets a ``model_validator(mode="before")`` that turns its older layout
into the new one (if the shapes are not told apart by their keys, the file gains a ``format_version``
key from then on), and tests/test_results.py keeps a hand-built folder of every earlier version.
Records keep keys they do not know (``extra="allow"``), so rewriting a file (a status update) never
drops what a newer writer of the same version added.
"""

from __future__ import annotations

import enum
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aavs.datasets import atomic
from aavs.datasets.errors import InputError

log = logging.getLogger(__name__)

# The layout this module writes; every earlier one is still read.
#   1  the first versioned layout
#   2  trials are named by the stage's searcher as it proposes them (params.json written when a trial
#      starts, Tune's experiment state under <stage>/tune/); best.json gains repeats and the
#      configuration's mean and std. A version-1 stage's inputs differ from version 2's (the stage's
#      search settings are new keys), so `aavs resume` re-runs it and keeps the old one superseded.
FORMAT_VERSION = 2

FORMAT_FILE = "format.json"
PROVENANCE_FILE = "provenance.json"
SCHEDULE_FILE = "schedule.json"
SPEC_FILE = "spec.json"
RUN_FILE = "run.json"
STOP_FILE = "stop.json"
LEADERBOARD_FILE = "leaderboard.json"
INPUTS_FILE = "inputs.json"
BEST_FILE = "best.json"
DONE_FILE = "done.json"
MASKS_SUCCESS_FILE = "_SUCCESS.json"
PARAMS_FILE = "params.json"
CONFIG_FILE = "config.json"
NODE_FILE = "node.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.json"

# Versions recorded in provenance.json; read from the installed metadata, never imported.
PROVENANCE_PACKAGES = ("torch", "transformers", "ray", "accelerate", "deepspeed")

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, enum.Enum):
        """``enum.StrEnum`` before 3.11: members are their values, also in f-strings."""

        def __str__(self) -> str:
            return str(self.value)

        __format__ = str.__format__  # type: ignore[assignment]


class TrialStatus(StrEnum):
    """A trial's ``status.json`` status (a missing file: PENDING)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"  # a scheduler (ASHA) ended it early
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # (format 2) by its surroundings (a full disk): `aavs resume` continues it

    @property
    def ended(self) -> bool:
        """Nothing more will happen to the trial: done, stopped early or failed."""
        return self in (TrialStatus.DONE, TrialStatus.STOPPED, TrialStatus.FAILED)


class StageStatus(StrEnum):
    """A stage's status on the leaderboard (and the whole experiment's: the stages' together)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # every trial ended without a checkpoint

    @property
    def ended(self) -> bool:
        return self in (StageStatus.DONE, StageStatus.FAILED)


class Record(BaseModel):
    """A JSON file of the results folder. Unknown keys are kept (see the module docstring)."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object (Python mode: a NaN metric stays NaN, as ``json`` writes it)."""
        return self.model_dump()


class OpenRecord(Record):
    """A record whose keys are open-ended (metric names such as ``val/miou``), read by key; it is
    written with the keys it was given, no others."""

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: str) -> bool:
        return key in self.model_fields_set or key in (self.model_extra or {})


R = TypeVar("R", bound=Record)


# ------------------------------------------------------------------------------------ plumbing
def _load(path: Path) -> Any:
    """The JSON of ``path``; None when it is missing or torn (a writer killed before atomic files)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _read(path: Path, record: type[R]) -> R | None:
    """``path`` as ``record``; None when missing or torn. A file that is not such a record is an
    InputError naming it (it was not written by aavs, or by an aavs of an unknown format)."""
    data = _load(path)
    if data is None:
        return None
    try:
        return record.model_validate(data)
    except ValidationError as err:
        raise InputError(
            f"{path}: not a {record.__name__} record ({err.error_count()} problem(s): "
            f"{err.errors()[0]['loc']} {err.errors()[0]['msg']})"
        ) from None


def _write(path: Path, record: Record) -> None:
    atomic.write_json(path, record.to_json())


# ------------------------------------------------------------------------- format and provenance
class FormatRecord(Record):
    """``format.json``: the layout version the folder was written in."""

    format_version: int


def folder_version(results_dir: str | os.PathLike) -> int:
    """The folder's format version; 1 for a folder written before versioning (no format.json)."""
    record = _read(Path(results_dir) / FORMAT_FILE, FormatRecord)
    return record.format_version if record else 1


def check_format(results_dir: str | os.PathLike) -> int:
    """The folder's format version, if this aavs reads it; an InputError naming both versions if not."""
    found = folder_version(results_dir)
    if found > FORMAT_VERSION:
        raise InputError(
            f"{results_dir}: results format version {found} is newer than this aavs "
            f"({aavs_version()}) reads (format version {FORMAT_VERSION}); upgrade aavs to read it"
        )
    return found


class Provenance(Record):
    """What wrote into a results folder at one ``aavs run`` or ``aavs resume``."""

    command: Literal["run", "resume"]
    time: float
    format_version: int
    aavs_version: str | None
    git_commit: str | None  # the checkout aavs was imported from; None if it is not a git checkout
    python: str
    hostname: str
    packages: dict[str, str | None]  # PROVENANCE_PACKAGES' installed versions (None: not installed)
    accelerators: list[str]  # one name per device; [] without any


class ProvenanceLog(Record):
    """``provenance.json``: every run and resume of the folder, oldest first (an upgrade shows)."""

    runs: list[Provenance] = Field(default_factory=list)


def aavs_version() -> str | None:
    return _package_version("aavs")


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """HEAD of the checkout aavs runs from (its folders' parent holds ``.git``), else None."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _accelerators() -> list[str]:
    """The machine's GPUs by name. torch is asked only if this process already set CUDA up (asking
    otherwise would create a CUDA context in the driver); else nvidia-smi, and [] without it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def provenance(command: Literal["run", "resume"]) -> Provenance:
    """This process's provenance (imports none of the packages it names)."""
    return Provenance(
        command=command,
        time=time.time(),
        format_version=FORMAT_VERSION,
        aavs_version=aavs_version(),
        git_commit=_git_commit(),
        python=platform.python_version(),
        hostname=socket.gethostname(),
        packages={name: _package_version(name) for name in PROVENANCE_PACKAGES},
        accelerators=_accelerators(),
    )


def read_provenance(results_dir: str | os.PathLike) -> ProvenanceLog:
    return _read(Path(results_dir) / PROVENANCE_FILE, ProvenanceLog) or ProvenanceLog()


def open_results(results_dir: str | os.PathLike, command: Literal["run", "resume"]) -> None:
    """Before ``aavs run``/``resume`` writes anything: refuse a newer folder, then record this format
    version and this run's provenance."""
    results_dir = Path(results_dir)
    check_format(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    _write(results_dir / FORMAT_FILE, FormatRecord(format_version=FORMAT_VERSION))
    runs = read_provenance(results_dir)
    runs.runs.append(provenance(command))
    _write(results_dir / PROVENANCE_FILE, runs)


# ---------------------------------------------------------------------------- experiment files
class SpecRecord(Record):
    """``spec.json``: the resolved experiment (ExperimentSpec.to_dict()) and its hash."""

    hash: str
    spec: dict[str, Any]

    @property
    def stages(self) -> list[dict[str, Any]]:
        return self.spec["stages"]

    @property
    def stage_names(self) -> list[str]:
        return [s["name"] for s in self.stages]


def write_spec(results_dir: str | os.PathLike, spec: dict[str, Any], digest: str) -> None:
    _write(Path(results_dir) / SPEC_FILE, SpecRecord(hash=digest, spec=spec))


def read_spec(results_dir: str | os.PathLike) -> SpecRecord | None:
    """``spec.json`` of a folder this aavs reads (check_format); None when the folder has none."""
    check_format(results_dir)
    return _read(Path(results_dir) / SPEC_FILE, SpecRecord)


def require_spec(results_dir: str | os.PathLike) -> SpecRecord:
    """``spec.json``, or the InputError that the folder is not an experiment's."""
    spec = read_spec(results_dir)
    if spec is None:
        raise InputError(f"{results_dir}: not an experiment results folder (no {SPEC_FILE})")
    return spec


class RunRecord(Record):
    """``run.json``: how ``aavs run`` started the experiment; ``aavs resume`` continues so."""

    mode: Literal["local", "ray"]


def write_run(results_dir: str | os.PathLike, mode: Literal["local", "ray"]) -> None:
    _write(Path(results_dir) / RUN_FILE, RunRecord(mode=mode))


def read_run(results_dir: str | os.PathLike) -> RunRecord | None:
    return _read(Path(results_dir) / RUN_FILE, RunRecord)


class StopRequest(Record):
    """``stop.json`` (format 2): ``aavs stop`` or Ctrl-C asked the running experiment to stop; the
    run or resume that starts next removes it."""

    time: float
    host: str
    pid: int
    reason: str


def write_stop(results_dir: str | os.PathLike, reason: str) -> None:
    request = StopRequest(time=time.time(), host=socket.gethostname(), pid=os.getpid(), reason=reason)
    _write(Path(results_dir) / STOP_FILE, request)


def read_stop(results_dir: str | os.PathLike) -> StopRequest | None:
    return _read(Path(results_dir) / STOP_FILE, StopRequest)


def clear_stop(results_dir: str | os.PathLike) -> None:
    (Path(results_dir) / STOP_FILE).unlink(missing_ok=True)


class Progress(Record):
    trials_done: int
    trials: int
    epochs_done: int
    epochs: int


class Leaderboard(Record):
    """``leaderboard.json``: built by aavs.orchestrator.views.leaderboard (its stage and trial rows are
    described there), with the fingerprint of the files it was built from."""

    name: str
    results_dir: str
    updated: float
    sources_digest: str
    status: StageStatus
    progress: Progress
    stages: list[dict[str, Any]]
    summary: str


def write_leaderboard(results_dir: str | os.PathLike, board: dict[str, Any]) -> None:
    _write(Path(results_dir) / LEADERBOARD_FILE, Leaderboard.model_validate(board))


def read_leaderboard(results_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``leaderboard.json`` as the board dict the views draw; None when missing or torn."""
    board = _read(Path(results_dir) / LEADERBOARD_FILE, Leaderboard)
    return board.to_json() if board else None


# ---------------------------------------------------------------------------------- stage files
class InputsRecord(Record):
    """``<stage>/inputs.json``: what the stage was run from; its hash decides "unchanged"."""

    inputs_hash: str
    inputs: dict[str, Any]


def write_inputs(stage_dir: str | os.PathLike, inputs_hash: str, inputs: dict[str, Any]) -> None:
    _write(Path(stage_dir) / INPUTS_FILE, InputsRecord(inputs_hash=inputs_hash, inputs=inputs))


def read_inputs(stage_dir: str | os.PathLike) -> InputsRecord | None:
    return _read(Path(stage_dir) / INPUTS_FILE, InputsRecord)


class DoneRecord(Record):
    """``<stage>/done.json``, written last: the stage is complete for these inputs."""

    inputs_hash: str


def write_done(stage_dir: str | os.PathLike, inputs_hash: str) -> None:
    _write(Path(stage_dir) / DONE_FILE, DoneRecord(inputs_hash=inputs_hash))


def read_done(stage_dir: str | os.PathLike) -> DoneRecord | None:
    return _read(Path(stage_dir) / DONE_FILE, DoneRecord)


class BestTrial(Record):
    """``<stage>/best.json``: the stage's best trial by its metric, that checkpoint's masks (when a later
    stage takes them as its prior) and test metrics."""

    stage: str
    trial_id: str
    metric: str
    mode: Literal["max", "min"]
    value: float
    checkpoint: str
    checkpoint_sha256: str
    params: dict[str, Any]
    data_root: str
    masks: str | None = None
    test: dict[str, float] | None = None
    # With a stage's ``repeats`` (format 2): the trial is the best seed of the configuration whose
    # mean value is best; the mean and standard deviation over its seeds.
    repeats: int = 1
    configuration_mean: float | None = None
    configuration_std: float | None = None


def write_best(stage_dir: str | os.PathLike, best: BestTrial) -> None:
    _write(Path(stage_dir) / BEST_FILE, best)


def read_best(stage_dir: str | os.PathLike) -> BestTrial | None:
    return _read(Path(stage_dir) / BEST_FILE, BestTrial)


class MasksRecord(Record):
    """``<stage>/masks/_SUCCESS.json``: the checkpoint the masks were exported from, its scores per split."""

    checkpoint: str
    checkpoint_sha256: str
    scores: dict[str, dict[str, float]]
    node_id: str | None = None
    files: dict[str, int] | None = None  # format 2: every mask file (relative path) and its size


def folder_files(folder: str | os.PathLike) -> dict[str, int]:
    """Every file under ``folder`` (relative paths) with its size: what a complete copy holds."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def write_masks_success(masks_dir: str | os.PathLike, record: MasksRecord) -> None:
    _write(Path(masks_dir) / MASKS_SUCCESS_FILE, record)


def read_masks_success(masks_dir: str | os.PathLike) -> MasksRecord | None:
    return _read(Path(masks_dir) / MASKS_SUCCESS_FILE, MasksRecord)


# ---------------------------------------------------------------------------------- trial files
def write_params(trial_dir: str | os.PathLike, params: dict[str, Any]) -> None:
    """``params.json``: the trial's sampled parameters (keys are the stage's ``params``)."""
    atomic.write_json(Path(trial_dir) / PARAMS_FILE, params)


def read_params(trial_dir: str | os.PathLike) -> dict[str, Any] | None:
    params = _load(Path(trial_dir) / PARAMS_FILE)
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


def read_schedule(trial_dir: str | os.PathLike) -> Schedule | None:
    return _read(Path(trial_dir) / SCHEDULE_FILE, Schedule)


def write_schedule(trial_dir: str | os.PathLike, schedule: Schedule) -> None:
    _write(Path(trial_dir) / SCHEDULE_FILE, schedule)


def write_trial_config(trial_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """``config.json``: the trial's TrainConfig.to_dict() (aavs.orchestrator.recipe.config)."""
    atomic.write_json(Path(trial_dir) / CONFIG_FILE, config)


def read_trial_config(trial_dir: str | os.PathLike) -> dict[str, Any] | None:
    config = _load(Path(trial_dir) / CONFIG_FILE)
    return config if isinstance(config, dict) else None


class NodeRecord(Record):
    """``node.json``: the Ray node the trial last ran on (its rank 0); None outside Ray. Format 2:
    also the host and process id of that rank (to find it, e.g. to see what the out-of-memory killer took)."""

    node_id: str | None
    host: str | None = None
    pid: int | None = None


def write_node(trial_dir: str | os.PathLike, node_id: str | None) -> None:
    _write(Path(trial_dir) / NODE_FILE, NodeRecord(node_id=node_id, host=socket.gethostname(), pid=os.getpid()))


def read_node(trial_dir: str | os.PathLike) -> NodeRecord | None:
    return _read(Path(trial_dir) / NODE_FILE, NodeRecord)


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


def write_status(trial_dir: str | os.PathLike, record: StatusRecord) -> None:
    _write(Path(trial_dir) / STATUS_FILE, record)


def read_status(trial_dir: str | os.PathLike) -> StatusRecord | None:
    return _read(Path(trial_dir) / STATUS_FILE, StatusRecord)


def trial_status(trial_dir: str | os.PathLike) -> TrialStatus:
    """The trial's status; PENDING before its first ``status.json``."""
    record = read_status(trial_dir)
    return record.status if record else TrialStatus.PENDING


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


def append_metrics(trial_dir: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one report (a line is one ``write``, so a killed writer tears at most the last line)."""
    with open(Path(trial_dir) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(metrics_line(row))


def read_metrics(trial_dir: str | os.PathLike) -> list[MetricsRow]:
    """All reports of a trial, in order; a torn last line (a killed writer) is ignored."""
    path = Path(trial_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(MetricsRow.model_validate_json(line))
        except ValidationError:
            log.warning("%s: ignoring a truncated line", path)
    return rows


def write_metrics(trial_dir: str | os.PathLike, rows: Iterable[MetricsRow]) -> None:
    """Replace ``metrics.jsonl`` with ``rows`` (atomically)."""
    atomic.write_text(Path(trial_dir) / METRICS_FILE, "".join(metrics_line(r) for r in rows))


def keep_metrics_through(trial_dir: str | os.PathLike, last_epoch: int) -> None:
    """Drop report lines of epochs after ``last_epoch`` (an epoch reported, then killed before its
    checkpoint, is redone and reported again)."""
    write_metrics(
        trial_dir, [r for r in read_metrics(trial_dir) if (r.epoch if r.epoch is not None else -1) <= last_epoch]
    )


def clear_metrics(trial_dir: str | os.PathLike) -> None:
    """A fresh start: nothing reported earlier in this trial folder counts."""
    (Path(trial_dir) / METRICS_FILE).unlink(missing_ok=True)


class CheckpointMetrics(OpenRecord):
    """``best/metrics.json`` of a trial: the val metrics of the epoch its best checkpoint is from."""

    epoch: int | None = None


def write_checkpoint_metrics(checkpoint_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    _write(Path(checkpoint_dir) / CHECKPOINT_METRICS_FILE, CheckpointMetrics.model_validate(metrics))


def read_checkpoint_metrics(checkpoint_dir: str | os.PathLike) -> CheckpointMetrics | None:
    return _read(Path(checkpoint_dir) / CHECKPOINT_METRICS_FILE, CheckpointMetrics)


# --------------------------------------------------------------------------------- report files
class PerClass(Record):
    """The best checkpoint's test IoU and F of every class (index order), with its name."""

    classes: list[str]
    iou: list[float]
    fscore: list[float]
    present: list[bool]  # in the test split's ground truth or prediction


class Sample(Record):
    uid: str
    subset: str
    frame: int


class Predictions(Record):
    """``report/<stage>/predictions.json``: what the report's pictures were drawn from."""

    checkpoint: str
    checkpoint_sha256: str
    videos: int
    per_class: PerClass | None  # binary stages: None
    samples: list[Sample]


def write_predictions(folder: str | os.PathLike, record: Predictions) -> None:
    _write(Path(folder) / PREDICTIONS_FILE, record)


def read_predictions(folder: str | os.PathLike) -> Predictions | None:
    return _read(Path(folder) / PREDICTIONS_FILE, Predictions)
