"""The experiment's own files, at the top of its results folder: where the folder is
(:func:`results_path`), ``spec.json``, ``run.json``, ``stop.json`` and ``leaderboard.json``."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

from aavs.datasets.errors import InputError
from aavs.orchestrator.results.names import LEADERBOARD_FILE, RUN_FILE, SPEC_FILE, STOP_FILE
from aavs.orchestrator.results.records import Record, StageStatus, read_record, write_record
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


class SpecRecord(Record):
    """``spec.json``: the resolved experiment (ExperimentSpec.to_dict()) and its hash."""

    hash: str
    spec: dict[str, Any]

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
