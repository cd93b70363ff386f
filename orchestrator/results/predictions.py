"""What the report draws besides the curves, and where it comes from: the stage's test evaluation
(aavs.orchestrator.recipe.test_outputs) leaves ``<stage>/test/predictions.json`` (the best checkpoint's
per-class test scores and the frames it shows) and ``<stage>/test/samples.npz`` (those frames with
their ground truth, prediction and prior), and the report records what it drew in
``report/<stage>/predictions.json``. So the report runs no network: it draws these files."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import model_validator

from aavs.datasets import atomic
from aavs.datasets.palette import MAX_CLASSES
from aavs.orchestrator.results.names import PREDICTIONS_FILE, SAMPLES_FILE, TEST_DIR
from aavs.orchestrator.results.records import Record, read_record, write_record


class PerClass(Record):
    """The best checkpoint's test IoU and F of every class (index order), with its name."""

    classes: list[str]
    iou: list[float]
    fscore: list[float]
    present: list[bool]  # in the test split's ground truth or prediction

    @model_validator(mode="after")
    def _one_entry_per_class(self) -> PerClass:
        lengths = {len(self.classes), len(self.iou), len(self.fscore), len(self.present)}
        if len(lengths) != 1 or not 1 <= len(self.classes) <= MAX_CLASSES:
            raise ValueError(f"classes, iou, fscore and present: one entry per class (1 to {MAX_CLASSES})")
        return self


class Sample(Record):
    uid: str
    subset: str
    frame: int


class Predictions(Record):
    """``<stage>/test/predictions.json`` (what the test evaluation left for the report) and
    ``report/<stage>/predictions.json`` (what the report's pictures were drawn from)."""

    checkpoint: str
    checkpoint_sha256: str
    videos: int  # how many val videos were asked for as samples
    per_class: PerClass | None  # binary stages: None
    samples: list[Sample]


def write_predictions(folder: str | os.PathLike[str], record: Predictions) -> None:
    write_record(Path(folder) / PREDICTIONS_FILE, record)


def read_predictions(folder: str | os.PathLike[str]) -> Predictions | None:
    return read_record(Path(folder) / PREDICTIONS_FILE, Predictions)


@dataclass(frozen=True)
class SampleImages:
    """One sample of the report's grid: a val video's frame (the annotated one with the most labelled
    pixels) and its masks, as uint8 arrays of one size."""

    uid: str
    subset: str
    frame: int
    image: np.ndarray  # [H, W, 3] RGB
    truth: np.ndarray  # [H, W]: 0/1 for binary tasks, class indices for AVSS
    pred: np.ndarray  # [H, W], as truth
    prior: np.ndarray | None  # [H, W] 0..255: the earlier stage's mask given to the network; None without


def stage_test_dir(stage_dir: str | os.PathLike[str]) -> Path:
    """``<stage>/test/``: what the stage's test evaluation leaves for the report."""
    return Path(stage_dir) / TEST_DIR


def write_test_predictions(
    folder: str | os.PathLike[str],
    *,
    checkpoint: str,
    checkpoint_sha256: str,
    videos: int,
    per_class: PerClass | None,
    samples: Sequence[SampleImages],
) -> Predictions:
    """Replace ``folder`` (``stage_test_dir(stage_dir)``) with ``predictions.json`` and ``samples.npz``, as a
    whole: a reader sees both files of one evaluation or neither. Returns the record written."""
    record = Predictions(
        checkpoint=checkpoint,
        checkpoint_sha256=checkpoint_sha256,
        videos=videos,
        per_class=per_class,
        samples=[Sample(uid=s.uid, subset=s.subset, frame=s.frame) for s in samples],
    )
    # Any: savez_compressed's keywords are the arrays' names beside its own allow_pickle flag.
    arrays: dict[str, Any] = {}
    for i, sample in enumerate(samples):
        arrays.update({f"image_{i}": sample.image, f"truth_{i}": sample.truth, f"pred_{i}": sample.pred})
        if sample.prior is not None:
            arrays[f"prior_{i}"] = sample.prior
    arrays = {name: np.asarray(array, dtype=np.uint8) for name, array in arrays.items()}
    with atomic.atomic_dir(folder) as tmp:
        np.savez_compressed(tmp / SAMPLES_FILE, **arrays)
        write_predictions(tmp, record)
    return record


def read_test_predictions(folder: str | os.PathLike[str]) -> Predictions | None:
    """``predictions.json`` of ``stage_test_dir(stage_dir)``; None before the stage's test evaluation wrote it."""
    return read_predictions(folder)


def read_test_samples(folder: str | os.PathLike[str], record: Predictions) -> list[SampleImages]:
    """The images of ``record``'s samples from ``samples.npz`` beside it; [] when the file is missing
    or torn, or does not hold every sample as its writer saves them (never unpickled)."""
    try:
        with np.load(Path(folder) / SAMPLES_FILE, allow_pickle=False) as arrays:
            found = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # missing, or not a whole npz
        return []
    if any(f"{part}_{i}" not in found for i in range(len(record.samples)) for part in ("image", "truth", "pred")):
        return []
    for i in range(len(record.samples)):  # what the writer saved: uint8 arrays, one frame size a sample
        arrays = [found[f"{part}_{i}"] for part in ("image", "truth", "pred", "prior") if f"{part}_{i}" in found]
        image, masks = arrays[0], arrays[1:]
        if any(a.dtype != np.uint8 for a in arrays) or image.ndim != 3 or image.shape[2:] != (3,):
            return []
        if any(m.shape != image.shape[:2] for m in masks):
            return []
    return [
        SampleImages(
            uid=s.uid,
            subset=s.subset,
            frame=s.frame,
            image=found[f"image_{i}"],
            truth=found[f"truth_{i}"],
            pred=found[f"pred_{i}"],
            prior=found.get(f"prior_{i}"),
        )
        for i, s in enumerate(record.samples)
    ]
