"""A training step over several videos gives the gradients of the same videos accumulated one by one
(each loss divided by the number of videos, as ``grad_accum`` does): each video counts as it does alone,
an all-empty MS3 video (which the task skips) included. Both model types, 2 and 4 videos.

Eval mode keeps dropout out of the comparison (the loss and its gradients are computed all the same),
and the same seed before each side gives Mask2Former's sampled points in the same order: per video,
in video order, on both sides.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aavs.datasets.avsbench import AVSBenchDataset, collate_videos
from aavs.datasets.layout import select_videos
from aavs.models import registry
from aavs.orchestrator.recipe.evaluation import model_inputs, training_frames

SIZE = 64


@pytest.fixture(scope="module")
def videos(synth_root):
    """v1m, v1s, v2, v1m of the stage-one training set; the first v1m video's masks emptied, so the
    task skips it (no frame of it counts)."""
    embeddings = {
        r.uid: np.random.default_rng(1).normal(size=(r.num_frames, 128)).astype(np.float32)
        for r in select_videos(synth_root, "avss-binary", "train")
    }
    data = AVSBenchDataset(synth_root, "avss-binary", "train", image_size=SIZE, training=True, embeddings=embeddings)
    by_subset: dict[str, list[int]] = {}
    for i, record in enumerate(data.records):
        by_subset.setdefault(record.subset, []).append(i)
    items = [data[i] for i in (by_subset["v1m"][0], by_subset["v1s"][0], by_subset["v2"][0], by_subset["v1m"][1])]
    items[0]["labels"] = torch.zeros_like(items[0]["labels"])
    items[0]["class_map"] = torch.zeros_like(items[0]["class_map"])
    return items


def _gradients(model: torch.nn.Module, batches: list[list[dict]], temporal: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(0)
    for videos in batches:
        batch, loss_frames = training_frames(collate_videos(videos), "avss-binary", temporal)
        out = model(**model_inputs(batch, "cpu", torch.float32), labels=batch["labels"], loss_frames=loss_frames)
        (out.loss / len(batches)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", ["aavs", "avsbench"])
@pytest.mark.parametrize("count", [2, 4])
def test_a_batch_of_videos_gives_the_gradients_accumulated_one_by_one(videos, model_type, count):
    torch.manual_seed(0)
    model = registry.build(model_type, "avss-binary", preset="tiny", image_size=SIZE).eval()
    temporal = registry.get_model_type(model_type).temporal
    chosen = videos[:count]
    together = _gradients(model, [chosen], temporal)
    one_by_one = _gradients(model, [[v] for v in chosen], temporal)
    assert together.keys() == one_by_one.keys() and together
    scale = max(g.abs().max() for g in one_by_one.values())
    worst = max((together[n] - one_by_one[n]).abs().max() / scale for n in together)
    assert worst < 1e-5, (
        f"{model_type}, {count} videos: largest gradient difference {worst:.2e} of the largest gradient"
    )
