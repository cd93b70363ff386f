"""Image preprocessing shared by the data loader and ``AAVS.predict``.

Frames go into the network as Mask2FormerImageProcessor prepares them: RGB, resized with PIL's
bilinear filter to ``size x size``, scaled to [0, 1] and normalised with the ImageNet mean and std.
Masks are compared at ``MASK_SIZE x MASK_SIZE`` after a nearest-neighbour resize.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_SIZE = 224

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def _as_image(frame: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(frame, Image.Image):
        return frame.convert("RGB")
    array = np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB uint8 frame [H, W, 3], got {array.dtype} {array.shape}")
    return Image.fromarray(array, mode="RGB")


def resize_frame(frame: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """One RGB frame resized (PIL bilinear) to ``[size, size, 3]`` uint8."""
    image = _as_image(frame)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def normalize_resized(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, S, S, 3]`` (already resized) -> float32 ``[T, 3, S, S]``, ImageNet-normalised."""
    x = torch.as_tensor(np.asarray(frames)).float().div_(255.0)
    x = (x - torch.from_numpy(_MEAN)) / torch.from_numpy(_STD)
    return x.permute(0, 3, 1, 2).contiguous()


def normalize_frames(frames: Sequence[Image.Image | np.ndarray] | np.ndarray, size: int) -> torch.Tensor:
    """RGB frames (PIL images or uint8 ``[T, H, W, 3]``) -> network input float32 ``[T, 3, size, size]``."""
    return normalize_resized(np.stack([resize_frame(f, size) for f in frames]))


def resize_mask(mask: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """A 2-D integer mask resized with nearest neighbour (PIL) to ``[size, size]``."""
    mask = np.asarray(mask)
    if mask.shape == (size, size):
        return mask
    image = Image.fromarray(mask.astype(np.int32), mode="I")
    return np.asarray(image.resize((size, size), Image.NEAREST)).astype(mask.dtype)
