"""AVSBench metrics (docs/method.md §6), vectorised in torch so they run on the model's device.

Binary (S4, MS3): per video, the mean over frames of the IoU (a frame with an empty true mask scores
the IoU of the two background masks) and the best over 255 thresholds of the frames' mean F-measure
(beta^2 = 0.3, empty true masks skipped); both averaged over videos.

Semantic (AVSS): per frame and class, intersection, prediction area and label area; per-class sums of
IoU and F over the frames where the class occurs in the union; mIoU = mean over all classes of
sum / count (never-seen classes count 0). "No background" drops class 0, the background, as the
reference code does (``miou_pc[1:]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BETA2 = 0.3
NUM_THRESHOLDS = 255
IOU_EPS = 1e-7  # AVSBench mask_iou
PR_EPS = 1e-20  # AVSBench _eval_pr
SEMANTIC_EPS = 2.220446049250313e-16  # AVSBench _batch_miou_fscore


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _thresholds(device: torch.device) -> torch.Tensor:
    # The reference's float32 torch.linspace(0, 1 - 1e-10, 255): its last threshold rounds to 1.0.
    return torch.linspace(0.0, 1.0 - 1e-10, NUM_THRESHOLDS, dtype=torch.float32, device=device)


def _check_video(*tensors: torch.Tensor) -> None:
    shape = tensors[0].shape
    if len(shape) != 3 or any(t.shape != shape for t in tensors):
        raise ValueError(f"expected [T, H, W] tensors of one shape, got {[tuple(t.shape) for t in tensors]}")


def binary_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame IoU ``[T]`` of bool masks ``[T, H, W]``; empty true mask -> IoU of the backgrounds."""
    pred, target = pred.bool(), target.bool()
    inter = (pred & target).flatten(1).sum(1).double()
    union = (pred | target).flatten(1).sum(1).double()
    empty = ~target.flatten(1).any(1)
    inter = torch.where(empty, (~pred).flatten(1).sum(1).double(), inter)
    union = torch.where(empty, torch.full_like(union, pred[0].numel()), union)
    return inter / (union + IOU_EPS)


def binary_fmeasure(prob: torch.Tensor, target: torch.Tensor) -> float:
    """max over thresholds of the mean F of the frames with a non-empty true mask (0 if there are none)."""
    target = target.bool()
    keep = target.flatten(1).any(1)
    if not keep.any():
        return 0.0
    prob, target = prob[keep].float().flatten(1), target[keep].flatten(1)  # [F, P]
    frames = prob.shape[0]
    # A pixel is predicted at threshold i iff i < (number of thresholds <= prob).
    level = torch.searchsorted(_thresholds(prob.device), prob.contiguous(), right=True)  # [F, P] in 0..255
    offset = (torch.arange(frames, device=prob.device) * (NUM_THRESHOLDS + 1))[:, None]
    size = frames * (NUM_THRESHOLDS + 1)
    hist_all = torch.bincount((level + offset).flatten(), minlength=size).view(frames, -1)
    hist_tp = torch.bincount((level + offset)[target], minlength=size).view(frames, -1)
    # count at threshold i = sum over levels k > i: reverse cumulative sum, drop level 0.
    predicted = hist_all.flip(1).cumsum(1).flip(1)[:, 1:].double()  # [F, 255]
    tp = hist_tp.flip(1).cumsum(1).flip(1)[:, 1:].double()
    positives = target.sum(1, keepdim=True).double()
    precision, recall = tp / (predicted + PR_EPS), tp / (positives + PR_EPS)
    f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    f = torch.nan_to_num(f, nan=0.0)
    return f.mean(0).max().item()


def binary_video_scores(pred: Any, prob: Any, target: Any) -> tuple[float, float]:
    """(mIoU, F-score) of one video: ``pred`` bool, ``prob`` float, ``target`` bool, each ``[T, H, W]``."""
    pred, prob, target = _tensor(pred), _tensor(prob), _tensor(target)
    _check_video(pred, prob, target)
    return binary_iou(pred, target).mean().item(), binary_fmeasure(prob, target)


class BinaryMetric:
    """Mean over videos of :func:`binary_video_scores`; feed it one video per :meth:`update`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.miou_sum, self.fscore_sum, self.videos = 0.0, 0.0, 0

    def update(self, pred: Any, prob: Any, target: Any) -> tuple[float, float]:
        miou, fscore = binary_video_scores(pred, prob, target)
        self.miou_sum += miou
        self.fscore_sum += fscore
        self.videos += 1
        return miou, fscore

    def merge(self, other: BinaryMetric) -> None:
        """Add another metric's videos (e.g. gathered from other workers)."""
        self.miou_sum += other.miou_sum
        self.fscore_sum += other.fscore_sum
        self.videos += other.videos

    def compute(self) -> dict[str, float]:
        n = max(self.videos, 1)
        return {"miou": self.miou_sum / n, "fscore": self.fscore_sum / n}


def semantic_frame_stats(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, ...]:
    """Per-frame, per-class (intersection, prediction area, label area), each ``[T, C]`` float64."""
    pred, target = pred.long().flatten(1), target.long().flatten(1)  # [T, P]
    for name, x in (("prediction", pred), ("target", target)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} class indices must lie in 0..{num_classes - 1}, got {x.min()}..{x.max()}")
    frames = pred.shape[0]
    offset = (torch.arange(frames, device=pred.device) * num_classes)[:, None]
    size = frames * num_classes

    def count(x: torch.Tensor) -> torch.Tensor:
        return torch.bincount(x.flatten(), minlength=size).view(frames, num_classes).double()

    return count((target + offset)[pred == target]), count(pred + offset), count(target + offset)


class SemanticMetric:
    """AVSBench AVSS mIoU and F-score over frames, accumulated per class of the data's ``num_classes``
    (its label2idx.json, background = 0; docs/method.md §6)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.iou_sum = torch.zeros(self.num_classes, dtype=torch.float64)
        self.fscore_sum = torch.zeros(self.num_classes, dtype=torch.float64)
        self.count = torch.zeros(self.num_classes, dtype=torch.float64)

    def update(self, pred: Any, target: Any) -> None:
        """``pred``, ``target`` int ``[T, H, W]`` class indices of one video (any frames)."""
        pred, target = _tensor(pred), _tensor(target)
        _check_video(pred, target)
        inter, area_pred, area_label = semantic_frame_stats(pred, target, self.num_classes)
        union = area_pred + area_label - inter
        iou = inter / (SEMANTIC_EPS + union)
        precision, recall = inter / area_pred, inter / area_label
        fscore = torch.nan_to_num((1 + BETA2) * precision * recall / (BETA2 * precision + recall), nan=0.0)
        self.iou_sum += iou.sum(0).cpu()
        self.fscore_sum += fscore.sum(0).cpu()
        self.count += (union > 0).sum(0).double().cpu()

    def merge(self, other: SemanticMetric) -> None:
        self.iou_sum += other.iou_sum
        self.fscore_sum += other.fscore_sum
        self.count += other.count

    def per_class(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(IoU, F) per class ``[C]``; classes never seen score 0."""
        return (
            torch.nan_to_num(self.iou_sum / self.count, nan=0.0),
            torch.nan_to_num(self.fscore_sum / self.count, nan=0.0),
        )

    def compute(self) -> dict[str, float]:
        iou, fscore = self.per_class()
        return {
            "miou": iou.mean().item(),
            "fscore": fscore.mean().item(),
            "miou_no_bg": iou[1:].mean().item(),
            "fscore_no_bg": fscore[1:].mean().item(),
        }
