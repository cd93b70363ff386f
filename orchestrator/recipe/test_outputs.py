"""A stage's test evaluation, with what the report draws: one pass over the test split gives the
metrics ``best.json`` records and, for AVSS, each class's IoU and F; a few val videos give the
sample grid (frame, ground truth, prediction, prior). Both are written to ``<stage>/test/``
(:mod:`aavs.orchestrator.results.predictions`), so the report itself runs no network.

The driver runs :func:`evaluate_test_split` as the stage's test-evaluation task (in its process with
``--local``, else as a Ray task with a worker's resources), where it ran ``evaluate_checkpoint`` on
the test split before: the metrics it returns are that pass's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from aavs.datasets.avsbench import AVSBenchDataset, read_class_map, read_frames
from aavs.datasets.layout import VideoRecord
from aavs.datasets.masks import read_binary_masks
from aavs.datasets.metrics import SemanticMetric
from aavs.datasets.tasks import get_task
from aavs.models import registry
from aavs.models.protocol import SegmentationModel
from aavs.orchestrator import results
from aavs.orchestrator.recipe.device import pick_device
from aavs.orchestrator.recipe.evaluation import accumulate, check_classes

log = logging.getLogger(__name__)

SAMPLE_VIDEOS = 4  # val videos in the report's sample grid


def evaluate_test_split(
    checkpoint: str | Path,
    checkpoint_sha256: str,
    data_root: str | Path,
    task: str,
    out: str | Path,
    prior: str | Path | None = None,
    vggish: str | None = None,
    vggish_pca: str | None = None,
    cache_dir: str | Path | None = None,
    videos: int = SAMPLE_VIDEOS,
) -> dict[str, float]:
    """The checkpoint's metrics on the test split (with ``prior``: the earlier stage's masks), as
    ``aavs evaluate --split test`` gives them; writes ``out`` (``results.stage_test_dir(stage_dir)``):
    the per-class scores of a semantic stage and ``videos`` val videos' samples, recorded with
    ``checkpoint_sha256`` (best.json's) so the report can tell they are the best checkpoint's."""
    model = registry.load(checkpoint, task=task)
    check_classes(model, checkpoint, data_root)
    device = pick_device()
    model.to(device)
    if get_task(model.config.task).takes_prior and prior is None:
        log.warning("evaluating a stage-two network without a prior: it runs as the stage-one AAVS")
    dataset = AVSBenchDataset(
        data_root,
        task,
        "test",
        image_size=model.config.image_size,
        prior=prior,
        vggish=vggish,
        vggish_pca=vggish_pca,
        cache_dir=cache_dir,
    )
    metric = accumulate(model, dataset, task, device)
    per_class = None
    if isinstance(metric, SemanticMetric):  # a semantic task's
        iou, fscore = metric.per_class()
        per_class = results.PerClass(
            classes=list(model.config.class_names),
            iou=iou.tolist(),
            fscore=fscore.tolist(),
            present=(metric.count > 0).tolist(),
        )
    samples = val_samples(model, data_root, task, prior, videos, vggish, vggish_pca, cache_dir)
    results.write_test_predictions(
        out,
        checkpoint=str(checkpoint),
        checkpoint_sha256=checkpoint_sha256,
        videos=videos,
        per_class=per_class,
        samples=samples,
    )
    return metric.compute()


def val_samples(
    model: SegmentationModel,
    data_root: str | Path,
    task: str,
    prior: str | Path | None,
    videos: int,
    vggish: str | None = None,
    vggish_pca: str | None = None,
    cache_dir: str | Path | None = None,
) -> list[results.SampleImages]:
    """``videos`` val videos spread over the split, each as one frame (its annotated frame with the most
    labelled pixels): the image, ground truth and prediction (0/1 for binary tasks, class indices for
    AVSS) and the prior given to the network (0..255), uint8 arrays."""
    root = Path(data_root)
    binary = get_task(task).binary
    val = AVSBenchDataset(
        data_root,
        task,
        "val",
        image_size=model.config.image_size,
        prior=prior,
        vggish=vggish,
        vggish_pca=vggish_pca,
        cache_dir=cache_dir,
        cache_mb=0,  # only a few videos are read
    )
    picked = sorted({int(round(i)) for i in np.linspace(0, len(val) - 1, min(videos, len(val)))})
    samples: list[results.SampleImages] = []

    def keep(record: VideoRecord, pred: np.ndarray) -> None:
        truth = read_class_map(root, record, range(record.num_frames))
        frame = max(record.annotated_frames, key=lambda i: (int((truth[i] > 0).sum()), -i))
        prior_mask = read_binary_masks(prior, record, [frame])[0] if prior else None
        samples.append(
            results.SampleImages(
                uid=record.uid,
                subset=record.subset,
                frame=frame,
                image=read_frames(root, record, truth.shape[-1], [frame])[0],
                truth=(truth[frame] > 0 if binary else truth[frame]).astype(np.uint8),
                pred=pred[frame].astype(np.uint8),
                prior=None if prior_mask is None else (255 * prior_mask).round().astype(np.uint8),
            )
        )

    accumulate(model, val, task, pick_device(), videos=picked, on_video=keep)
    return samples
