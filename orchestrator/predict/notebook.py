"""One video predicted in memory, no files written: the notebook entry point."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aavs.datasets.errors import InputError
from aavs.datasets.palette import palette
from aavs.datasets.video import probe
from aavs.orchestrator.predict.models import Models
from aavs.orchestrator.predict.steps import decode_rows, embed_row, predict_row


@dataclass
class VideoPrediction:
    """A whole video's prediction in memory: ``masks`` uint8 ``[T, 224, 224]`` (binary 0/1 or class
    indices), ``timeline`` per second (sounding classes with pixel share and mean score)."""

    path: Path
    masks: np.ndarray
    timeline: list[dict[str, Any]]
    class_names: tuple[str, ...]
    binary: bool
    has_audio: bool

    def colour_masks(self) -> np.ndarray:
        """``[T, 224, 224, 3]`` uint8 in the AVSBench palette (binary: the sounding class's colour)."""
        return palette(max(len(self.class_names), 2))[self.masks.astype(np.int64)]


def predict_video(path: str | Path, models: Models) -> VideoPrediction:
    """Predict one video in this process (no files written): the notebook entry point."""
    path = Path(path)
    info = probe(path)
    embedder = models.embedder()
    masks: list[np.ndarray] = []
    sounding: list[list[dict[str, Any]]] = []
    for row in decode_rows({"path": str(path)}, models.image_size):
        if row["error"]:
            raise InputError(row["error"])
        row = predict_row(embed_row(row, embedder), models)
        masks.append(row["masks"])
        sounding += json.loads(row["sounding"])
    return VideoPrediction(
        path,
        np.concatenate(masks),
        [{"second": t, "sounding": s} for t, s in enumerate(sounding)],
        models.class_names,
        models.binary,
        info.has_audio,
    )
