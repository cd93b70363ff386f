"""``predict`` of a network on one clip, as every model type does it: the inputs checked, the frames
normalised, the network run in eval mode a chunk of frames at a time, the scores on the CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aavs.datasets.errors import InputError
from aavs.datasets.transforms import normalize_frames


def as_array(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def clip_inputs(
    frames: Any, audio: Any, prior: Any, *, audio_dim: int, takes_prior: bool, task: str
) -> tuple[np.ndarray, Tensor, Tensor | None]:
    """RGB uint8 frames ``[T, H, W, 3]``, embeddings ``[T, audio_dim]`` and an optional prior ``[T, h,
    w]`` in [0, 1], checked (an InputError naming the input); audio and prior as float32 tensors. With
    no frame, nothing else is checked."""
    frames = as_array(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames: expected RGB uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    t = frames.shape[0]
    if t == 0:
        return frames, torch.zeros(0, audio_dim), None
    audio_t = torch.as_tensor(as_array(audio), dtype=torch.float32)
    if tuple(audio_t.shape) != (t, audio_dim):
        raise InputError(f"audio: expected [{t}, {audio_dim}] (one embedding per frame), got {list(audio_t.shape)}")
    if prior is None:
        return frames, audio_t, None
    if not takes_prior:
        raise InputError(f"prior: the {task} network takes no prior (only avss does)")
    prior_t = torch.as_tensor(as_array(prior), dtype=torch.float32)
    if prior_t.ndim != 3 or prior_t.shape[0] != t:
        raise InputError(f"prior: expected [{t}, h, w], got {list(prior_t.shape)}")
    if prior_t.numel() and (prior_t.min() < 0 or prior_t.max() > 1):
        raise InputError(f"prior: values must lie in [0, 1], got [{prior_t.min():.3g}, {prior_t.max():.3g}]")
    return frames, audio_t, prior_t


@torch.no_grad()
def chunked_scores(
    model: Any, frames: np.ndarray, audio: Tensor, prior: Tensor | None, image_size: int, step: int
) -> Tensor:
    """``model.class_scores`` of the clip ``[T, C, 224, 224]`` float32 on the CPU, ``step`` frames a
    forward pass, in eval mode (the previous mode restored)."""
    pixel_values = normalize_frames(frames, image_size)  # [T, 3, S, S]
    module: nn.Module = model
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        scores = []
        for start in range(0, frames.shape[0], step):
            chunk = slice(start, start + step)
            output = model(
                pixel_values[chunk].to(device),
                audio[chunk].to(device),
                None if prior is None else prior[chunk].to(device),
            )
            scores.append(model.class_scores(output).float().cpu())
    finally:
        module.train(was_training)
    return torch.cat(scores)
