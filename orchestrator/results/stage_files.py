"""A stage's own files (under ``<stage>/``): ``inputs.json``, ``best.json``, ``done.json`` and the masks
folder's ``_SUCCESS.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from aavs.orchestrator.results.names import BEST_FILE, DONE_FILE, INPUTS_FILE, MASKS_SUCCESS_FILE
from aavs.orchestrator.results.records import Record, read_record, write_record


class InputsRecord(Record):
    """``<stage>/inputs.json``: what the stage was run from; its hash decides "unchanged"."""

    inputs_hash: str
    inputs: dict[str, Any]


def write_inputs(stage_dir: str | os.PathLike[str], inputs_hash: str, inputs: dict[str, Any]) -> None:
    write_record(Path(stage_dir) / INPUTS_FILE, InputsRecord(inputs_hash=inputs_hash, inputs=inputs))


def read_inputs(stage_dir: str | os.PathLike[str]) -> InputsRecord | None:
    return read_record(Path(stage_dir) / INPUTS_FILE, InputsRecord)


class DoneRecord(Record):
    """``<stage>/done.json``, written last: the stage is complete for these inputs."""

    inputs_hash: str


def write_done(stage_dir: str | os.PathLike[str], inputs_hash: str) -> None:
    write_record(Path(stage_dir) / DONE_FILE, DoneRecord(inputs_hash=inputs_hash))


def read_done(stage_dir: str | os.PathLike[str]) -> DoneRecord | None:
    return read_record(Path(stage_dir) / DONE_FILE, DoneRecord)


class BestTrial(Record):
    """``<stage>/best.json``: the stage's best trial by its metric (aavs.orchestrator.results.ranking),
    that checkpoint's masks (when a later stage takes them as its prior) and test metrics."""

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


def write_best(stage_dir: str | os.PathLike[str], best: BestTrial) -> None:
    write_record(Path(stage_dir) / BEST_FILE, best)


def read_best(stage_dir: str | os.PathLike[str]) -> BestTrial | None:
    return read_record(Path(stage_dir) / BEST_FILE, BestTrial)


class MasksRecord(Record):
    """``<stage>/masks/_SUCCESS.json``: the checkpoint the masks were exported from, its scores per split."""

    checkpoint: str
    checkpoint_sha256: str
    scores: dict[str, dict[str, float]]
    node_id: str | None = None
    files: dict[str, int] | None = None  # format 2: every mask file (relative path) and its size


def folder_files(folder: str | os.PathLike[str]) -> dict[str, int]:
    """Every file under ``folder`` (relative paths) with its size: what a complete copy holds."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def write_masks_success(masks_dir: str | os.PathLike[str], record: MasksRecord) -> None:
    write_record(Path(masks_dir) / MASKS_SUCCESS_FILE, record)


def read_masks_success(masks_dir: str | os.PathLike[str]) -> MasksRecord | None:
    return read_record(Path(masks_dir) / MASKS_SUCCESS_FILE, MasksRecord)
