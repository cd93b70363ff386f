"""How a batch of several videos weighs its frames in the loss: each video as it counts alone.

A training step of ``B`` videos gives the gradients of the same videos accumulated one by one
(``grad_accum: B``, each loss divided by ``B``): the loss is the mean over the batch's videos of each
video's own loss, and a video none of whose frames counts (unannotated, or an all-empty video the task
skips) adds zero to the sum and still counts in ``B``, as a skipped video in an accumulation window
does. A network's loss over a video is whatever it computes for that video alone (for Mask2Former's,
normalised by the video's own number of masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def video_frames_or_one(video_frames: Sequence[int] | None, n: int) -> list[int]:
    """Frames per video of a batch of ``n`` frames (default: one video); a ValueError if they do not add up."""
    videos = [n] if video_frames is None else [int(v) for v in video_frames]
    if sum(videos) != n or any(v < 0 for v in videos):
        raise ValueError(f"video_frames {videos} do not add up to the {n} frames given")
    return videos


def counted_frames(selected: Tensor, video_frames: Sequence[int]) -> list[Tensor]:
    """Per video, the batch indices (int64, on the CPU) of its frames that count (``selected`` [N] bool)."""
    out, start = [], 0
    for count in video_frames:
        out.append(selected[start : start + count].nonzero().flatten() + start)
        start += count
    return out


def frame_weights(selected: Tensor, video_frames: Sequence[int]) -> Tensor:
    """float32 ``[N]``: ``1 / (B x k_v)`` for each of the ``k_v`` counted frames of video ``v``, 0 for the
    rest; a per-frame loss summed with these weights is the mean over videos of each video's mean."""
    weights = torch.zeros(selected.shape[0], dtype=torch.float32)
    for index in counted_frames(selected, video_frames):
        if len(index):
            weights[index] = 1.0 / (len(video_frames) * len(index))
    return weights
