"""Predicted and prior masks on disk: ``OUT/<subset>/<uid>/<i>.png``.

Binary masks are grayscale PNGs (0 = silent, 255 = sounding), the format stage one exports and stage
two reads as its prior; class masks are palette-coloured RGB PNGs. Both are read back at
``MASK_SIZE x MASK_SIZE``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from aavs.datasets.atomic import write_bytes
from aavs.datasets.errors import InputError
from aavs.datasets.layout import MAX_CLASSES, VideoRecord
from aavs.datasets.palette import decode_colour_mask, encode_class_map, unknown_colours
from aavs.datasets.transforms import MASK_SIZE, opencv_grey, opencv_linear_resize, resize_mask


def mask_file(root: str | os.PathLike, record: VideoRecord, i: int) -> Path:
    return Path(root) / record.subset / record.uid / f"{i}.png"


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _check_frames(record: VideoRecord, masks: np.ndarray, ndim: int) -> None:
    if masks.ndim != ndim or masks.shape[0] != record.num_frames:
        raise ValueError(f"{record.subset}/{record.uid}: expected {record.num_frames} masks, got shape {masks.shape}")


def write_binary_masks(out_root: str | os.PathLike, record: VideoRecord, masks: np.ndarray) -> None:
    """``masks`` bool ``[T, H, W]`` -> one grayscale PNG (0/255) per frame, each written atomically."""
    masks = np.asarray(masks)
    _check_frames(record, masks, 3)
    for i, mask in enumerate(masks):
        write_bytes(mask_file(out_root, record, i), binary_mask_png(mask))


def write_class_masks(out_root: str | os.PathLike, record: VideoRecord, class_maps: np.ndarray) -> None:
    """``class_maps`` int ``[T, H, W]`` class indices -> one palette-coloured RGB PNG per frame."""
    class_maps = np.asarray(class_maps)
    _check_frames(record, class_maps, 3)
    for i, class_map in enumerate(class_maps):
        write_bytes(mask_file(out_root, record, i), class_mask_png(class_map))


def binary_mask_png(mask: np.ndarray) -> bytes:
    """One bool ``[H, W]`` mask as the grayscale PNG (0/255) of the binary mask files."""
    return _png_bytes(Image.fromarray(np.where(np.asarray(mask).astype(bool), 255, 0).astype(np.uint8), mode="L"))


def class_mask_png(class_map: np.ndarray) -> bytes:
    """One ``[H, W]`` class-index map as the palette-coloured RGB PNG of the class mask files."""
    return _png_bytes(Image.fromarray(encode_class_map(class_map), mode="RGB"))


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise InputError(f"{path}: mask file missing") from None
    except OSError as err:
        raise InputError(f"{path}: not a readable image ({err})") from None


def read_gray(path: Path, resample: Literal["bilinear", "nearest"] = "bilinear") -> np.ndarray:
    """One grayscale mask as float32 ``[MASK_SIZE, MASK_SIZE]`` in [0, 1] (value / 255)."""
    image = _open(path)
    if image.mode not in ("L", "I", "I;16", "F"):
        image = image.convert("L")
    values = np.asarray(image.convert("F"), dtype=np.float32)
    if values.shape != (MASK_SIZE, MASK_SIZE):
        method = Image.Resampling.BILINEAR if resample == "bilinear" else Image.Resampling.NEAREST
        values = np.asarray(Image.fromarray(values, mode="F").resize((MASK_SIZE, MASK_SIZE), method))
    return np.clip(values / 255.0, 0.0, 1.0).astype(np.float32)


def read_colour(path: Path, num_classes: int = MAX_CLASSES) -> np.ndarray:
    """One palette-coloured mask as int64 class indices ``[MASK_SIZE, MASK_SIZE]`` (nearest resize);
    only the colours of the first ``num_classes`` classes are accepted."""
    rgb = np.asarray(_open(path).convert("RGB"))
    classes = decode_colour_mask(rgb, num_classes)
    if (classes < 0).any():
        colour, count = unknown_colours(rgb, num_classes)[0]
        which = "" if num_classes == MAX_CLASSES else f" of {num_classes} classes"
        raise InputError(f"{path}: colour {colour} ({count} pixels) is not in the AVSBench palette{which}")
    return resize_mask(classes, MASK_SIZE)


def read_truth(root: str | os.PathLike, record: VideoRecord, i: int, num_classes: int = MAX_CLASSES) -> np.ndarray:
    """Frame ``i``'s ground truth as int64 class indices ``[MASK_SIZE, MASK_SIZE]`` (nearest resize):
    :func:`read_colour` of a palette-coloured mask; for AVSBench-object's binary masks, 1 (sounding)
    where the grey value is non-zero, as its authors' loaders read them."""
    path = record.mask_path(root, i)
    if not record.binary_masks:
        return read_colour(path, num_classes)
    grey = np.asarray(_open(path).convert("L"))
    return resize_mask((grey > 0).astype(np.int64), MASK_SIZE)


def read_sounding(path: Path) -> np.ndarray:
    """One mask as the reference's binary training target: bool ``[MASK_SIZE, MASK_SIZE]``, "not background".

    The colour image is resized bilinearly to 224 (OpenCV's filter, no antialiasing), converted to grey
    and thresholded at > 0, so a file that is not already 224 x 224 gives a slightly dilated mask
    (docs/method.md §4). Metrics keep the nearest-neighbour
    masks of :func:`read_colour`.
    """
    rgb = np.asarray(_open(path).convert("RGB"))
    if rgb.shape[:2] != (MASK_SIZE, MASK_SIZE):
        rgb = opencv_linear_resize(rgb, MASK_SIZE)
    return opencv_grey(rgb) > 0


def _frames(record: VideoRecord, frames: Sequence[int] | None) -> Sequence[int]:
    return range(record.num_frames) if frames is None else frames


def read_binary_masks(
    root: str | os.PathLike,
    record: VideoRecord,
    frames: Sequence[int] | None = None,
    resample: Literal["bilinear", "nearest"] = "bilinear",
) -> np.ndarray:
    """float32 ``[T, 224, 224]`` in [0, 1] for ``frames`` (default all) of ``record``.

    A prior is a soft map, so the 0..255 image is resized bilinearly by default; scoring hard
    predictions uses ``resample="nearest"`` like the ground truth.
    """
    return np.stack([read_gray(mask_file(root, record, i), resample) for i in _frames(record, frames)])


def read_class_masks(
    root: str | os.PathLike, record: VideoRecord, frames: Sequence[int] | None = None, num_classes: int = MAX_CLASSES
) -> np.ndarray:
    """int64 ``[T, 224, 224]`` class indices (< ``num_classes``) for ``frames`` (default all) of ``record``."""
    return np.stack([read_colour(mask_file(root, record, i), num_classes) for i in _frames(record, frames)])


def first_missing(root: str | os.PathLike, records: Sequence[VideoRecord]) -> Path | None:
    """The first mask file of ``records`` (all frames) absent under ``root``, or None."""
    for record in records:
        for i in range(record.num_frames):
            path = mask_file(root, record, i)
            if not path.is_file():
                return path
    return None
