"""Image preprocessing shared by the data loader and ``AAVS.predict``.

Frames go into the network as Mask2FormerImageProcessor prepares them: RGB, resized with PIL's
bilinear filter to ``size x size``, scaled to [0, 1] and normalised with the ImageNet mean and std.
Masks are compared at ``MASK_SIZE x MASK_SIZE`` after a nearest-neighbour resize.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_SIZE = 224

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)
_MEAN_CHW = torch.from_numpy(_MEAN)[:, None, None]  # [3, 1, 1]
_STD_CHW = torch.from_numpy(_STD)[:, None, None]


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
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def normalize_resized(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, S, S, 3]`` (already resized) -> float32 ``[T, 3, S, S]``, ImageNet-normalised, on the
    frames' device.

    ``(x / 255 - mean) / std`` per element, in place on a channels-first copy: three times faster than
    on channels-last, the same bits. Elementwise IEEE float32 arithmetic, so a GPU gives the bits the
    CPU gives: the training loop runs it after the copy to the accelerator (``uint8_pixels``)."""
    x = torch.as_tensor(frames if isinstance(frames, torch.Tensor) else np.asarray(frames))
    x = x.permute(0, 3, 1, 2).contiguous().float()  # [T, 3, S, S]
    return x.div_(255.0).sub_(_MEAN_CHW.to(x.device)).div_(_STD_CHW.to(x.device))


def normalize_frames(frames: Sequence[Image.Image | np.ndarray] | np.ndarray, size: int) -> torch.Tensor:
    """RGB frames (PIL images or uint8 ``[T, H, W, 3]``) -> network input float32 ``[T, 3, size, size]``."""
    return normalize_resized(np.stack([resize_frame(f, size) for f in frames]))


def resize_mask(mask: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """A 2-D integer mask resized with nearest neighbour (PIL) to ``[size, size]``."""
    mask = np.asarray(mask)
    if mask.shape == (size, size):
        return mask
    image = Image.fromarray(mask.astype(np.int32), mode="I")
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST)).astype(mask.dtype)


# OpenCV's uint8 arithmetic, reproduced so that the binary training targets match the reference's
# without depending on OpenCV: ``cv2.resize`` (INTER_LINEAR) and ``cv2.cvtColor`` (BGR2GRAY).
_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: 11-bit interpolation weights
_GREY_WEIGHTS = (9798, 19235, 3735)  # R, G, B: ITU-R BT.601 luma in 15-bit fixed point


def _linear_taps(n_in: int, n_out: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights of one axis: pixel centres, ``src = (dst + 0.5) * scale - 0.5``.

    OpenCV clamps a column that falls outside the image to the edge pixel with weight 1; rows keep
    their fractional weight and only their indices are clamped (both taps then read the edge row).
    """
    position = ((np.arange(n_out) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    frac = (position - first).astype(np.float32)
    if clamp_weights:
        outside = (first < 0) | (first >= n_in - 1)
        frac[outside] = 0.0
        first = np.clip(first, 0, n_in - 1)
    w0 = np.rint((np.float32(1.0) - frac) * _COEF_SCALE).astype(np.int64)
    w1 = np.rint(frac * _COEF_SCALE).astype(np.int64)
    return np.clip(first, 0, n_in - 1), np.clip(first + 1, 0, n_in - 1), w0, w1


def opencv_linear_resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> ``[size, size, C]`` exactly as ``cv2.resize(image, (size, size))`` computes it.

    Bilinear without antialiasing (a downscaled pixel reads only its two nearest source pixels per axis,
    unlike PIL's bilinear filter), in OpenCV's fixed point: a horizontal pass with 11-bit weights, then
    the vertical pass of its SIMD kernel, whose truncations decide the last bit.
    """
    source = np.asarray(image, dtype=np.int64)
    c0, c1, a0, a1 = _linear_taps(source.shape[1], size, clamp_weights=True)
    r0, r1, b0, b1 = _linear_taps(source.shape[0], size, clamp_weights=False)
    rows = source[:, c0] * a0[None, :, None] + source[:, c1] * a1[None, :, None]  # x 2048
    top, bottom = rows[r0] >> 4, rows[r1] >> 4
    value = ((top * b0[:, None, None]) >> 16) + ((bottom * b1[:, None, None]) >> 16)
    return np.clip((value + 2) >> 2, 0, 255).astype(np.uint8)


def opencv_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB -> uint8 ``[H, W]`` luma, as ``cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)``."""
    rgb = np.asarray(rgb, dtype=np.int64)
    r, g, b = _GREY_WEIGHTS
    return ((rgb[..., 0] * r + rgb[..., 1] * g + rgb[..., 2] * b + (1 << 14)) >> 15).astype(np.uint8)
