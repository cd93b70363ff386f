"""The experiment's own files, at the top of its results folder: where the folder is
(:func:`results_path`), ``spec.json``, ``run.json``, ``stop.json`` and ``leaderboard.json``."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import task_names
from aavs.orchestrator.results.names import LEADERBOARD_FILE, RUN_FILE, SPEC_FILE, STOP_FILE
from aavs.orchestrator.results.records import Record, StageStatus, read_record, write_record
from aavs.orchestrator.results.stage_plan import is_distribution
from aavs.orchestrator.results.versioning import check_format


def results_path(value: str | Path) -> Path:
    """A results location as an absolute local path: a path, or a ``file://`` URI.

    Other URI schemes are refused with the value named: checkpoints, masks and the leaderboard are
    plain files, so an object store has to be mounted as a filesystem to hold them.
    """
    text = str(value)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme and scheme.group(1).lower() != "file":
        raise InputError(
            f"results storage {text!r}: {scheme.group(1)}:// URIs are not supported (checkpoints, "
            "masks and leaderboard.json are written as files); mount the storage as a shared "
            "filesystem at the same path on every node (NFS, EFS, gcsfuse, s3fs ...) and give that path"
        )
    if scheme:
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise InputError(f"results storage {text!r}: a file:// URI names a local path (file:///path), not a host")
        text = url2pathname(parsed.path)
    return Path(text).expanduser().resolve()


# A stage's name, as the experiment file's schema takes it: the name of a folder in the results folder.
PlainName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)]


class _Shape(BaseModel):
    """What the readers index in ``spec.json``'s ``spec``, checked strictly (a value is taken as it is
    written, no conversion: the readers use the raw dict); other keys are the writer's business."""

    model_config = ConfigDict(extra="allow", strict=True)


class _TuneShape(_Shape):
    metric: str
    mode: Literal["max", "min"]
    num_samples: int = Field(1, ge=1)
    repeats: int = Field(1, ge=1)
    search: str = "random"


class _StageShape(_Shape):
    name: PlainName
    task: str
    epochs: int | None = Field(None, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)
    tune: _TuneShape | None = None
    prior: PlainName | None = None
    init_from: PlainName | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in task_names():
            raise ValueError(f"unknown task {task!r}")
        return task

    @field_validator("params")
    @classmethod
    def _distributions_list_values(cls, params: dict[str, Any]) -> dict[str, Any]:
        for key, value in params.items():
            if is_distribution(value) and not isinstance(next(iter(value.values())), list):
                raise ValueError(f"params.{key}: a distribution's values are a list")
        return params


class _ModelShape(_Shape):
    type: str = "aavs"
    vggish: str | None = None
    vggish_pca: str | None = None


class _SpecShape(_Shape):
    name: str | None = None
    stages: list[_StageShape] = Field(min_length=1)
    model: _ModelShape | None = None


class SpecRecord(Record):
    """``spec.json``: the resolved experiment (ExperimentSpec.to_dict()) and its hash. What the readers
    index in ``spec`` is checked (its stages' names, tasks, tune and upstream stages), the rest kept."""

    hash: str
    spec: dict[str, Any]

    @model_validator(mode="after")
    def _readable_spec(self) -> SpecRecord:
        shape = _SpecShape.model_validate(self.spec)
        earlier: list[str] = []
        for stage in shape.stages:
            if stage.name in earlier:
                raise ValueError(f"stage {stage.name} twice")
            for upstream in (stage.prior, stage.init_from):
                if upstream is not None and upstream not in earlier:
                    raise ValueError(f"stage {stage.name}: {upstream!r} is not an earlier stage")
            earlier.append(stage.name)
        return self

    @property
    def stages(self) -> list[dict[str, Any]]:
        stages: list[dict[str, Any]] = self.spec["stages"]
        return stages

    @property
    def stage_names(self) -> list[str]:
        return [s["name"] for s in self.stages]


def write_spec(results_dir: str | os.PathLike[str], spec: dict[str, Any], digest: str) -> None:
    write_record(Path(results_dir) / SPEC_FILE, SpecRecord(hash=digest, spec=spec))


def read_spec(results_dir: str | os.PathLike[str]) -> SpecRecord | None:
    """``spec.json`` of a folder this aavs reads (check_format); None when the folder has none."""
    check_format(results_dir)
    return read_record(Path(results_dir) / SPEC_FILE, SpecRecord)


def require_spec(results_dir: str | os.PathLike[str]) -> SpecRecord:
    """``spec.json``, or the InputError that the folder is not an experiment's."""
    spec = read_spec(results_dir)
    if spec is None:
        raise InputError(f"{results_dir}: not an experiment results folder (no {SPEC_FILE})")
    return spec


class RunRecord(Record):
    """``run.json``: how ``aavs run`` started the experiment; ``aavs resume`` continues so."""

    mode: Literal["local", "ray"]


def write_run(results_dir: str | os.PathLike[str], mode: Literal["local", "ray"]) -> None:
    write_record(Path(results_dir) / RUN_FILE, RunRecord(mode=mode))


def read_run(results_dir: str | os.PathLike[str]) -> RunRecord | None:
    return read_record(Path(results_dir) / RUN_FILE, RunRecord)


class StopRequest(Record):
    """``stop.json`` (format 2): ``aavs stop`` or Ctrl-C asked the running experiment to stop; the
    run or resume that starts next removes it."""

    time: float
    host: str
    pid: int
    reason: str


def write_stop(results_dir: str | os.PathLike[str], reason: str) -> None:
    request = StopRequest(time=time.time(), host=socket.gethostname(), pid=os.getpid(), reason=reason)
    write_record(Path(results_dir) / STOP_FILE, request)


def read_stop(results_dir: str | os.PathLike[str]) -> StopRequest | None:
    return read_record(Path(results_dir) / STOP_FILE, StopRequest)


def clear_stop(results_dir: str | os.PathLike[str]) -> None:
    (Path(results_dir) / STOP_FILE).unlink(missing_ok=True)


class Progress(Record):
    trials_done: int
    trials: int
    epochs_done: int
    epochs: int


class Leaderboard(Record):
    """``leaderboard.json``: built by aavs.orchestrator.views.board (its stage and trial rows are
    described there), with the fingerprint of the files it was built from."""

    name: str
    results_dir: str
    updated: float
    sources_digest: str
    status: StageStatus
    progress: Progress
    stages: list[dict[str, Any]]
    summary: str


def write_leaderboard(results_dir: str | os.PathLike[str], board: dict[str, Any]) -> None:
    write_record(Path(results_dir) / LEADERBOARD_FILE, Leaderboard.model_validate(board))


def read_leaderboard(results_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``leaderboard.json`` as the board dict the views draw; None when missing or torn."""
    board = read_record(Path(results_dir) / LEADERBOARD_FILE, Leaderboard)
    return board.to_json() if board else None
