"""Validation, ``aavs evaluate``, and stage one's mask export: one prediction loop for all three.

Per video, the network's per-class score maps (docs/method.md §3) become predictions:
binary tasks take argmax over {background, sounding} and the F-score probability
sigmoid(2 * s1 - s0); AVSS takes argmax over the network's classes, which must be the data's
(its label2idx.json; docs/method.md §1). Metrics use the annotated frames only;
saved masks cover every frame (stage two needs a prior for each).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from aavs.datasets.avsbench import FRAME_KEYS, AVSBenchDataset, collate_videos
from aavs.datasets.errors import InputError
from aavs.datasets.layout import SPLITS, VideoRecord, class_list_mismatch, class_names
from aavs.datasets.masks import write_binary_masks, write_class_masks
from aavs.datasets.metrics import BinaryMetric, SemanticMetric
from aavs.datasets.tasks import MASK_EXPORT_TASK, Task, get_task, same_kind
from aavs.datasets.transforms import normalize_resized
from aavs.models import registry
from aavs.models.protocol import SegmentationModel
from aavs.orchestrator.recipe.device import pick_device
from aavs.orchestrator.results.containment import check_tree

log = logging.getLogger(__name__)


def training_frames(batch: dict[str, Any], task: str, temporal: bool = False) -> tuple[dict[str, Any], torch.Tensor]:
    """The frames that carry loss: the (possibly smaller) batch and its ``loss_frames``.

    A frame counts when it is annotated, unless its video is an all-empty one of the task's
    ``skip_empty_subsets`` (docs/method.md §4: the reference's loss for an all-empty v1m video of MS3 or
    stage one is a constant without a graph, so no optimiser step). Frames are independent batch items
    in AAVS, so a frame that does not count costs compute and adds nothing: it is dropped. A
    ``temporal`` network (the registry's: AVSBench's TPAVI) relates a video's frames, so every frame
    stays and ``loss_frames`` marks those that count. If no frame counts, one frame stays (temporal:
    all) with ``loss_frames`` all False: every worker still runs its forward, and the training loop
    makes no optimiser step when no worker has a frame that counts.
    """
    counts = batch["annotated"].clone()
    skipped_subsets = get_task(task).skip_empty_subsets
    start = 0
    for n, subset in zip(batch["frames_per_video"], batch["subsets"]):
        video = slice(start, start + n)
        if subset in skipped_subsets and not batch["labels"][video].any():
            counts[video] = False
        start += n
    if temporal:
        return batch, counts
    keep = counts.clone()
    if not keep.any():
        keep[0] = True
    loss_frames = counts[keep]
    out = {k: (v[keep] if k in FRAME_KEYS else v) for k, v in batch.items()}
    kept, start = [], 0
    for n in batch["frames_per_video"]:
        kept.append(int(keep[start : start + n].sum()))
        start += n
    out["frames_per_video"] = kept
    return out, loss_frames


def loss_targets(batch: dict[str, Any], loss_frames: torch.Tensor, device: torch.device | str) -> dict[str, Any]:
    """The loss's targets on ``device``: the labels as int64 (uint8 from a compact dataset, converted
    there) and the frames that count (:func:`training_frames`)."""
    return {
        "labels": batch["labels"].to(device, non_blocking=True).long(),
        "loss_frames": loss_frames.to(device, non_blocking=True),
    }


def model_inputs(batch: dict[str, Any], device: torch.device | str, dtype: torch.dtype) -> dict[str, Any]:
    """The network's inputs of a batch on ``device``; floating ones in ``dtype`` (the weights' dtype:
    DeepSpeed keeps a bf16 module in bf16, and it does not cast its inputs). uint8 frames (a dataset's
    ``compact``) cross as bytes and are normalised there, in float32 before the cast."""
    pixels = batch["pixel_values"]
    if pixels.dtype == torch.uint8:  # [N, S, S, 3]
        pixels = normalize_resized(pixels.to(device, non_blocking=True))  # float32 [N, 3, S, S]
    inputs = {
        "pixel_values": pixels.to(device, dtype, non_blocking=True),
        "audio": batch["audio"].to(device, dtype, non_blocking=True),
    }
    inputs["prior"] = batch["prior"].to(device, dtype, non_blocking=True) if "prior" in batch else None
    inputs["video_frames"] = batch["frames_per_video"]
    return inputs


def weights_dtype(model: torch.nn.Module | SegmentationModel) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def new_metric(task: str, num_classes: int) -> BinaryMetric | SemanticMetric:
    """The task's metric; a semantic one over ``num_classes`` (the network's, which are the data's)."""
    return BinaryMetric() if get_task(task).binary else SemanticMetric(num_classes)


@torch.no_grad()
def evaluate(
    model: SegmentationModel,
    dataset: AVSBenchDataset,
    task: str,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    save_masks: str | Path | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset`` (videos sharded over ``world`` ranks, then merged)."""
    return accumulate(model, dataset, task, device, rank, world, save_masks, num_workers).compute()


@torch.no_grad()
def accumulate(
    model: SegmentationModel,
    dataset: AVSBenchDataset,
    task: str,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    save_masks: str | Path | None = None,
    num_workers: int = 0,
    videos: Sequence[int] | None = None,
    on_video: Callable[[VideoRecord, np.ndarray], None] | None = None,
) -> BinaryMetric | SemanticMetric:
    """:func:`evaluate`'s pass, returning the metric itself (the report's per-class IoU).

    ``videos``: dataset indices to predict (default all); ``on_video(record, masks)`` receives each
    video's predicted masks (bool ``[T, 224, 224]`` for binary tasks, class indices for AVSS).
    """
    binary = _check_task(model, task).binary
    was_training = model.training
    model.eval()
    metric = new_metric(task, model.config.num_labels)
    indices = list(range(len(dataset)) if videos is None else videos)[rank::world]
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=1,
        num_workers=num_workers,
        collate_fn=collate_videos,
        pin_memory=torch.device(device).type == "cuda",
    )
    dtype = weights_dtype(model)
    for position, batch in enumerate(loader):
        out = model(**model_inputs(batch, device, dtype))
        scores = model.class_scores(out).float().cpu()  # [T, C, 224, 224]
        ann = batch["annotated"]
        if isinstance(metric, BinaryMetric):  # the task is binary
            pred = scores[:, 1] > scores[:, 0]
            prob = torch.sigmoid(2 * scores[:, 1] - scores[:, 0])
            if ann.any():
                metric.update(pred[ann], prob[ann], batch["labels"][ann].bool())
        else:
            pred = scores.argmax(1)
            if ann.any():
                metric.update(pred[ann], batch["class_map"][ann].long())
        if save_masks is not None:
            video = dataset.records[indices[position]]
            if binary:
                write_binary_masks(save_masks, video, pred.numpy())
            else:
                write_class_masks(save_masks, video, pred.numpy())
        if on_video is not None:
            on_video(dataset.records[indices[position]], pred.numpy())
    if was_training:
        model.train()
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, metric)
        metric = gathered[0]
        for other in gathered[1:]:
            metric.merge(other)
    return metric


def _check_task(model: SegmentationModel, task: str) -> Task:
    """``task``, which must label as the network's own task does (binary or the data's classes)."""
    wanted, own = get_task(task), get_task(model.config.task)
    if wanted.semantic != own.semantic:
        kind = "semantic" if own.semantic else "binary"
        raise InputError(
            f"--task {task}: the checkpoint holds a {kind} network (trained for "
            f"{own.name}); evaluate it on {' or '.join(same_kind(own.semantic))}"
        )
    return wanted


def check_classes(model: SegmentationModel, checkpoint: str | Path, data: str | Path) -> None:
    """A semantic network predicts the classes it was trained on: the data's label2idx.json must list
    the same ones, in the same order (a binary network's background / sounding fit any data)."""
    if get_task(model.config.task).binary:
        return
    data_classes = class_names(data)
    problem = class_list_mismatch(
        f"checkpoint {checkpoint}", model.config.class_names, f"data {data}'s label2idx.json", data_classes
    )
    if problem:
        raise InputError(problem)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    task: str | None = None,
    split: str = "val",
    prior: str | Path | None = None,
    save_masks: str | Path | None = None,
    base: str | None = None,
    vggish: str | None = None,
    vggish_pca: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, float]:
    """``aavs evaluate``: metrics of a checkpoint (ours or a released one) on one split. A checkpoint
    folder may come from someone else: a link in it that leads out of it is refused."""
    if Path(checkpoint).is_dir():
        check_tree(checkpoint, "the checkpoint folder")
    model = registry.load(checkpoint, base=base, task=task)
    check_classes(model, checkpoint, data)
    model.to(pick_device())
    task = task or model.config.task
    if get_task(model.config.task).takes_prior and prior is None:
        log.warning("evaluating a stage-two network without --prior: it runs as the stage-one AAVS")
    dataset = AVSBenchDataset(
        data,
        task,
        split,
        image_size=model.config.image_size,
        prior=prior,
        vggish=vggish,
        vggish_pca=vggish_pca,
        cache_dir=cache_dir,
        compact=True,
    )
    return evaluate(model, dataset, task, pick_device(), save_masks=save_masks)


def export_masks(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    splits: Iterable[str] = SPLITS,
    vggish: str | None = None,
    vggish_pca: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Stage one's prior for stage two: binary masks of every frame of every split of v1s, v1m, v2.

    Returns the metrics of each split as a by-product (the masks and the metrics come from one pass).
    """
    model = registry.load(checkpoint).to(pick_device())
    if get_task(model.config.task).semantic:
        raise InputError(
            f"{checkpoint}: mask export needs a binary (stage-one) network, this one is {model.config.task}"
        )
    scores = {}
    for split in splits:
        dataset = AVSBenchDataset(
            data,
            MASK_EXPORT_TASK,
            split,
            image_size=model.config.image_size,
            vggish=vggish,
            vggish_pca=vggish_pca,
            cache_dir=cache_dir,
            compact=True,
        )
        scores[split] = evaluate(model, dataset, MASK_EXPORT_TASK, pick_device(), save_masks=out)
    return scores
