"""The per-window steps: decode, audio embedding, prediction, mask writing.

Each step takes and returns a row (a dict), the unit of the Ray Data pipeline (:mod:`.ray_pipeline`);
the in-process run (:mod:`.run`) and :func:`aavs.orchestrator.predict.predict_video` chain the same
functions. Every row of a step has the same keys (Ray Data builds tables of them): a row carrying an
``error`` goes through the later steps with empty values. Each step adds its time as ``t_<step>``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aavs.datasets.atomic import write_bytes
from aavs.datasets.errors import InputError
from aavs.datasets.masks import binary_mask_png, class_mask_png
from aavs.datasets.transforms import MASK_SIZE
from aavs.datasets.video import WindowEmbedder, iter_windows
from aavs.orchestrator.predict.models import Models
from aavs.orchestrator.predict.outputs import MASKS


def decode_rows(video: dict[str, Any], image_size: int) -> Iterator[dict[str, Any]]:
    """A video's windows as rows (frames, audio samples; none: empty); a decoding failure ends them
    with an error row."""
    clock = time.perf_counter()
    try:
        for window in iter_windows(video["path"], image_size):
            samples = np.zeros(0) if window.samples is None else window.samples
            yield {
                **video,
                "window": window.index,
                "start": window.start,
                "frames": window.frames,
                "samples": samples,
                "rate": window.rate,
                "error": "",
                "t_decode": time.perf_counter() - clock,
            }
            clock = time.perf_counter()
    except InputError as err:
        yield {
            **video,
            "window": -1,
            "start": 0,
            "frames": np.zeros((0, image_size, image_size, 3), np.uint8),
            "samples": np.zeros(0),
            "rate": 0,
            "error": str(err),
            "t_decode": 0.0,
        }


def _step(row: dict[str, Any], drop: tuple[str, ...], add: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in row.items() if k not in drop}, **add}


def embed_row(row: dict[str, Any], embedder: WindowEmbedder) -> dict[str, Any]:
    """Replaces the samples by ``audio`` ``[n, 128]``, the window's VGGish embeddings (none: silence)."""
    clock = time.perf_counter()
    samples = row["samples"] if row["samples"].size else None
    audio = np.zeros((0, 128), np.float32) if row["error"] else embedder.embed(samples, row["rate"], len(row["frames"]))
    return _step(row, ("samples",), {"audio": audio, "t_audio": time.perf_counter() - clock})


def predict_row(row: dict[str, Any], models: Models) -> dict[str, Any]:
    """Replaces frames and audio by the window's ``masks`` and per-second ``sounding`` classes (JSON)."""
    clock = time.perf_counter()
    masks, sounding = (
        (np.zeros((0, MASK_SIZE, MASK_SIZE), np.uint8), [])
        if row["error"]
        else models.predict(row["frames"], row["audio"])
    )
    return _step(
        row,
        ("frames", "audio"),
        {
            "masks": masks,
            "sounding": json.dumps(sounding),
            "binary": models.binary,
            "t_model": time.perf_counter() - clock,
        },
    )


def write_row(row: dict[str, Any]) -> dict[str, Any]:
    """Writes the window's masks into the video's (temporary) folder; keeps only the timeline."""
    clock = time.perf_counter()
    encode = binary_mask_png if row["binary"] else class_mask_png
    for i, mask in enumerate(row["masks"]):
        write_bytes(Path(row["folder"]) / MASKS / f"{row['start'] + i}.png", encode(mask))
    return _step(row, ("masks",), {"seconds": len(row["masks"]), "t_write": time.perf_counter() - clock})
