"""overlay.mp4: the video at its own frame rate, each second's mask blended in with a legend of the
sounding classes, and the clip's sound: its first audio stream copied packet for packet when MP4
carries its codec as it is (AAC, MP3, AC-3, Opus, FLAC, ALAC), re-encoded to AAC otherwise (PCM)."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from aavs.datasets.palette import palette
from aavs.datasets.video import iter_timed_frames, probe, write_video

OVERLAY_ALPHA = 0.5
# One x264 thread: the same masks give the same overlay.mp4 bytes, in this process or a Ray task. With
# two threads, 1 to 4 encodes in 30 of the same frames came out different (this FFmpeg build, sliced
# or frame threads alike); videos run side by side (a second thread here, a task each under --ray) instead.
OVERLAY_X264 = {"crf": "20", "preset": "veryfast", "threads": "1"}


def _mask_layer(path: Path, binary: bool, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(colours ``[H, W, 3]`` uint8, sounding ``[H, W]`` bool) of one mask file at the frame's size (nearest)."""
    with Image.open(path) as image:
        image = image.resize(size, Image.Resampling.NEAREST)
        if binary:
            sounding = np.asarray(image) > 0
            colours = np.broadcast_to(palette(2)[1], (*sounding.shape, 3))
        else:
            colours = np.asarray(image.convert("RGB"))
            sounding = np.asarray(colours.any(axis=-1))
    return colours, sounding


def _font(height: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=max(10, height // 28))
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _legend(layer: Image.Image, classes: list[dict[str, Any]], colours: np.ndarray) -> None:
    """Colour swatches and names of the sounding classes, top left, on a dark box (drawn on an RGBA layer)."""
    if not classes:
        return
    draw = ImageDraw.Draw(layer)
    font = _font(layer.height)
    line = int(font.size * 1.3) if hasattr(font, "size") else 14
    width = max(draw.textlength(c["name"], font=font) for c in classes) + line + 12
    box = Image.new("RGBA", layer.size)
    ImageDraw.Draw(box).rectangle((4, 4, 4 + width, 8 + line * len(classes)), fill=(0, 0, 0, 150))
    layer.alpha_composite(box)
    for i, item in enumerate(classes):
        y = 6 + i * line
        draw.rectangle((8, y + 2, 8 + line - 6, y + line - 4), fill=(*(int(v) for v in colours[item["index"]]), 255))
        draw.text((8 + line, y), item["name"], fill=(255, 255, 255, 255), font=font)


class _Blend:
    """One second's overlay as integer alpha blending: ``out = (frame * (256 - a) + term) >> 8``, with
    the mask's colours at OVERLAY_ALPHA and the legend on top, computed once per second."""

    def __init__(
        self, mask_path: Path, binary: bool, size: tuple[int, int], classes: list[dict[str, Any]], colours: np.ndarray
    ) -> None:
        mask_rgb, sounding = _mask_layer(mask_path, binary, size)
        alpha = np.where(sounding, round(255 * OVERLAY_ALPHA), 0).astype(np.uint8)
        layer = Image.fromarray(np.dstack([mask_rgb, alpha]), mode="RGBA")
        _legend(layer, classes, colours)
        rgba = np.asarray(layer, dtype=np.uint16)
        a = rgba[..., 3:] + (rgba[..., 3:] > 0)  # 0..255 -> 0..256
        self.keep = 256 - a
        self.term = rgba[..., :3] * a

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return ((rgb * self.keep + self.term) >> 8).astype(np.uint8)


def overlay_frames(
    video: Path, masks: Path, timeline: list[dict[str, Any]], class_names: tuple[str, ...], binary: bool
) -> Iterator[np.ndarray]:
    """Every frame of the video (even width and height, as H.264 needs) with its second's mask blended
    in and a legend; frames after the last predicted second keep that second's mask."""
    colours = palette(max(len(class_names), 2))
    shown, blend = -1, None  # the second whose blend is ready, and that blend
    for start, _end, frame in iter_timed_frames(video):
        rgb = frame.to_ndarray(format="rgb24")
        rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
        second = min(max(int(start), 0), len(timeline) - 1)
        if blend is None or shown != second:
            blend = _Blend(
                masks / f"{second}.png", binary, (rgb.shape[1], rgb.shape[0]), timeline[second]["sounding"], colours
            )
            shown = second
        yield blend(rgb)


def write_overlay(
    video: Path,
    masks: Path,
    out: Path,
    timeline: list[dict[str, Any]],
    class_names: tuple[str, ...],
    binary: bool,
    height: int = 0,
) -> None:
    """overlay.mp4 at the video's own frame rate (1 fps when the header has none), with its sound;
    ``height`` pixels high (the width keeps the aspect ratio, both even), or the video's (0)."""
    fps = probe(video).fps or 1
    frames = overlay_frames(video, masks, timeline, class_names, binary)
    if height:
        frames = (_scaled(rgb, height) for rgb in frames)
    write_video(out, frames, rate=_rate(fps), options=OVERLAY_X264, sound_from=video)


def _scaled(rgb: np.ndarray, height: int) -> np.ndarray:
    """A frame resized (bilinear) to ``height`` rows, the width in proportion, both even."""
    h, w = rgb.shape[:2]
    size = (max(2, round(w * height / h / 2) * 2), max(2, height // 2 * 2))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)
