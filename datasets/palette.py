"""The AVSBench colour palette: class index <-> mask colour (docs/method.md §1).

The palette is the PASCAL VOC colour map, whose first colours stay the same whatever the class
count: a data set of N classes uses the first N (``num_classes``), up to :data:`MAX_CLASSES`.
"""

from __future__ import annotations

import functools

import numpy as np

from aavs.datasets.layout import MAX_CLASSES


@functools.lru_cache(maxsize=8)
def _palette(n: int) -> np.ndarray:
    colours = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        j, r, g, b, i = index, 0, 0, 0, 0
        while j > 0:
            r |= ((j >> 0) & 1) << (7 - i)
            g |= ((j >> 1) & 1) << (7 - i)
            b |= ((j >> 2) & 1) << (7 - i)
            j >>= 3
            i += 1
        colours[index] = (r, g, b)
    colours.setflags(write=False)
    return colours


def palette(n: int = MAX_CLASSES) -> np.ndarray:
    """``[n, 3]`` uint8 colours; row j is the colour of class j (background black)."""
    return _palette(_check_count(n)).copy()


def _check_count(num_classes: int) -> int:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"the palette has colours for 1..{MAX_CLASSES} classes, not {num_classes}")
    return num_classes


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@functools.lru_cache(maxsize=8)
def _lookup(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    keys = _pack(_palette(_check_count(num_classes)))
    order = np.argsort(keys)
    return keys[order], order.astype(np.int64)


def decode_colour_mask(rgb: np.ndarray, num_classes: int = MAX_CLASSES) -> np.ndarray:
    """``[H, W, 3]`` uint8 palette colours -> ``[H, W]`` int64 class indices, -1 where none of the first
    ``num_classes`` colours matches."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB mask [H, W, 3], got shape {rgb.shape}")
    keys, classes = _lookup(num_classes)
    packed = _pack(rgb)
    pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    return np.where(keys[pos] == packed, classes[pos], -1)


def unknown_colours(rgb: np.ndarray, num_classes: int = MAX_CLASSES) -> list[tuple[tuple[int, int, int], int]]:
    """Colours of ``rgb`` that are none of the first ``num_classes`` palette entries, with their pixel
    counts (most frequent first)."""
    packed = _pack(np.asarray(rgb).reshape(-1, 3))
    values, counts = np.unique(packed, return_counts=True)
    keys, _ = _lookup(num_classes)
    bad = ~np.isin(values, keys)
    found = sorted(zip(values[bad].tolist(), counts[bad].tolist()), key=lambda vc: -vc[1])
    return [((v >> 16 & 255, v >> 8 & 255, v & 255), c) for v, c in found]


def encode_class_map(class_map: np.ndarray) -> np.ndarray:
    """``[H, W]`` class indices 0..MAX_CLASSES-1 -> ``[H, W, 3]`` uint8 palette colours."""
    class_map = np.asarray(class_map)
    if class_map.size and (class_map.min() < 0 or class_map.max() >= MAX_CLASSES):
        raise ValueError(f"class indices must lie in 0..{MAX_CLASSES - 1}, got {class_map.min()}..{class_map.max()}")
    return _palette(MAX_CLASSES)[class_map.astype(np.int64)]
