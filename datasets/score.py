"""`aavs score`: AVSBench metrics of predicted masks on disk against a data root's masks.

Predictions live at ``PRED/<subset>/<uid>/<i>.png``: grayscale 0/255 for the binary tasks (s4, ms3,
avss-binary), palette colours for avss. Only the annotated frames are scored; predictions are
compared at 224 x 224 after a nearest-neighbour resize, like the ground truth.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from aavs.datasets.errors import InputError
from aavs.datasets.layout import MAX_CLASSES, class_names, select_videos
from aavs.datasets.masks import read_binary_masks, read_class_masks, read_truth
from aavs.datasets.metrics import BinaryMetric, SemanticMetric
from aavs.datasets.tasks import get_task


def score_predictions(
    pred_root: str | os.PathLike, data_root: str | os.PathLike, task: str, split: str
) -> dict[str, float]:
    """``{"miou", "fscore"}`` as fractions (avss adds ``miou_no_bg``, ``fscore_no_bg``, over the data root's
    label2idx.json classes)."""
    pred_root, data_root = Path(pred_root), Path(data_root)
    if not pred_root.is_dir():
        raise InputError(f"{pred_root}: predictions folder missing (expected <subset>/<uid>/<i>.png)")
    records = select_videos(data_root, task, split)
    if not records:
        raise InputError(f"{data_root / 'metadata.csv'}: no {task} videos in split {split!r}")
    binary = get_task(task).binary
    # A binary task counts any palette colour as sounding; avss knows only the data's classes.
    num_classes = MAX_CLASSES if binary else len(class_names(data_root))
    metric = BinaryMetric() if binary else SemanticMetric(num_classes)
    for record in records:
        frames = record.annotated_frames
        target = np.stack([read_truth(data_root, record, i, num_classes) for i in frames])  # [t, 224, 224]
        if isinstance(metric, BinaryMetric):  # the task is binary
            prob = read_binary_masks(pred_root, record, frames, resample="nearest")  # [t, 224, 224]
            metric.update(prob >= 0.5, prob, target != 0)
        else:
            metric.update(read_class_masks(pred_root, record, frames, num_classes), target)
    return metric.compute()


def render_scores(console: Console, scores: dict[str, float], title: str) -> None:
    """The scores as a rich table, in percent."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value (%)", justify="right")
    for name, value in scores.items():
        table.add_row(name, f"{100 * value:.2f}")
    console.print(table)
