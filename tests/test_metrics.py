"""AVSBench metrics against slow, independent pure-Python loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aavs.datasets.metrics import BinaryMetric, SemanticMetric, binary_video_scores


# ------------------------------------------------------------------------------- slow references
def _slow_iou(pred, target):
    ious = []
    for p_frame, t_frame in zip(pred.tolist(), target.tolist()):
        pix = [(p, t) for prow, trow in zip(p_frame, t_frame) for p, t in zip(prow, trow)]
        if not any(t for _, t in pix):  # empty truth: IoU of the two background masks
            inter, union = sum(1 for p, t in pix if not p and not t), len(pix)
        else:
            inter, union = sum(1 for p, t in pix if p and t), sum(1 for p, t in pix if p or t)
        ious.append(inter / (union + 1e-7))
    return sum(ious) / len(ious)


def _slow_fscore(prob, target):
    thresholds = [float(x) for x in np.linspace(0, 1 - 1e-10, 255).astype(np.float32)]
    per_frame = []
    for p_frame, t_frame in zip(prob.astype(np.float32).tolist(), target.tolist()):
        pix = [(p, t) for prow, trow in zip(p_frame, t_frame) for p, t in zip(prow, trow)]
        positives = sum(1 for _, t in pix if t)
        if positives == 0:
            continue
        fs = []
        for th in thresholds:
            predicted = sum(1 for p, _ in pix if p >= th)
            tp = sum(1 for p, t in pix if p >= th and t)
            precision, recall = tp / (predicted + 1e-20), tp / (positives + 1e-20)
            denom = 0.3 * precision + recall
            fs.append(1.3 * precision * recall / denom if denom > 0 else 0.0)
        per_frame.append(fs)
    if not per_frame:
        return 0.0
    return max(sum(f[i] for f in per_frame) / len(per_frame) for i in range(255))


def _slow_semantic(videos, num_classes):
    iou_sum, f_sum, count = [0.0] * num_classes, [0.0] * num_classes, [0] * num_classes
    for pred, target in videos:
        for p_frame, t_frame in zip(pred.tolist(), target.tolist()):
            pix = [(p, t) for prow, trow in zip(p_frame, t_frame) for p, t in zip(prow, trow)]
            for c in range(num_classes):
                inter = sum(1 for p, t in pix if p == c and t == c)
                area_p = sum(1 for p, _ in pix if p == c)
                area_t = sum(1 for _, t in pix if t == c)
                union = area_p + area_t - inter
                if union == 0:
                    continue
                count[c] += 1
                iou_sum[c] += inter / union
                prec = inter / area_p if area_p else math.nan
                rec = inter / area_t if area_t else math.nan
                f = 1.3 * prec * rec / (0.3 * prec + rec) if (0.3 * prec + rec) else math.nan
                f_sum[c] += 0.0 if math.isnan(f) else f
    iou = [s / n if n else 0.0 for s, n in zip(iou_sum, count)]
    fsc = [s / n if n else 0.0 for s, n in zip(f_sum, count)]
    return {
        "miou": sum(iou) / num_classes,
        "fscore": sum(fsc) / num_classes,
        "miou_no_bg": sum(iou[1:]) / (num_classes - 1),
        "fscore_no_bg": sum(fsc[1:]) / (num_classes - 1),
    }


# ------------------------------------------------------------------------------------------ binary
def _random_video(rng, frames=4, h=9, w=11):
    prob = rng.random((frames, h, w)).astype(np.float32)
    prob[0, 0, :3] = [0.0, 1.0, 0.5]  # exact threshold values
    target = rng.random((frames, h, w)) < 0.4
    target[1] = False  # empty ground truth
    return prob, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    prob, target = _random_video(rng)
    pred = prob > 0.5
    pred[2] = False  # empty prediction
    miou, fscore = binary_video_scores(pred, prob, target)
    assert miou == pytest.approx(_slow_iou(pred, target), abs=1e-9)
    assert fscore == pytest.approx(_slow_fscore(prob, target), abs=1e-9)
    assert 0.0 <= miou <= 1.0 and 0.0 <= fscore <= 1.0


def test_binary_edge_cases():
    zeros = np.zeros((2, 4, 4), dtype=bool)
    ones = np.ones((2, 4, 4), dtype=bool)
    # empty truth, empty prediction: IoU of the backgrounds = 1; every frame empty -> F = 0
    miou, fscore = binary_video_scores(zeros, zeros.astype(np.float32), zeros)
    assert miou == pytest.approx(1.0) and fscore == 0.0
    # empty truth, full prediction: IoU 0
    assert binary_video_scores(ones, ones.astype(np.float32), zeros)[0] == pytest.approx(0.0)
    # perfect hard prediction: IoU 1, F 1 (the hard mask is its own probability)
    target = zeros.copy()
    target[:, 1:3, 1:3] = True
    miou, fscore = binary_video_scores(target, target.astype(np.float32), target)
    assert miou == pytest.approx(1.0) and fscore == pytest.approx(1.0)
    # F ignores the empty frame: one perfect frame plus an empty one still scores 1
    target[1] = False
    assert binary_video_scores(target, target.astype(np.float32), target)[1] == pytest.approx(1.0)


def test_binary_metric_averages_videos_and_accepts_torch():
    rng = np.random.default_rng(5)
    metric, expected = BinaryMetric(), []
    for _ in range(3):
        prob, target = _random_video(rng, frames=2, h=6, w=5)
        metric.update(torch.from_numpy(prob > 0.5), torch.from_numpy(prob), torch.from_numpy(target))
        expected.append((_slow_iou(prob > 0.5, target), _slow_fscore(prob, target)))
    scores = metric.compute()
    assert scores["miou"] == pytest.approx(np.mean([e[0] for e in expected]), abs=1e-9)
    assert scores["fscore"] == pytest.approx(np.mean([e[1] for e in expected]), abs=1e-9)
    other = BinaryMetric()
    other.merge(metric)
    assert other.compute() == scores
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        metric.update(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------- semantic
def test_semantic_matches_slow_reference_with_edge_cases():
    rng = np.random.default_rng(3)
    num_classes = 7
    videos = []
    for frames in (3, 2):
        target = rng.choice([0, 1, 2, 4], size=(frames, 8, 9))  # classes 3, 5, 6 never in the truth
        pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 6, size=target.shape))
        videos.append((pred, target))
    videos.append((np.zeros((2, 8, 9), int), np.zeros((2, 8, 9), int)))  # background only
    videos.append((np.full((1, 8, 9), 2), np.zeros((1, 8, 9), int)))  # one class only, all wrong
    metric = SemanticMetric(num_classes)
    for pred, target in videos:
        metric.update(pred, target)
    scores, expected = metric.compute(), _slow_semantic(videos, num_classes)
    assert set(scores) == {"miou", "fscore", "miou_no_bg", "fscore_no_bg"}
    for key in expected:
        assert scores[key] == pytest.approx(expected[key], abs=1e-9), key
    iou, _ = metric.per_class()
    assert iou[6] == 0.0  # never seen anywhere: counts 0


def test_semantic_perfect_prediction_and_unseen_classes():
    target = np.zeros((2, 5, 5), int)
    target[:, :2] = 3
    metric = SemanticMetric(71)
    metric.update(torch.from_numpy(target), torch.from_numpy(target))
    scores = metric.compute()
    # classes 0 and 3 perfect, the 69 others never seen and counted as 0
    assert scores["miou"] == pytest.approx(2 / 71) and scores["fscore"] == pytest.approx(2 / 71)
    assert scores["miou_no_bg"] == pytest.approx(1 / 70) and scores["fscore_no_bg"] == pytest.approx(1 / 70)
    with pytest.raises(ValueError, match="0..70"):
        metric.update(np.full((1, 2, 2), 71), np.zeros((1, 2, 2), int))
