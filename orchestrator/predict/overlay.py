"""overlay.mp4: the video at its own frame rate, each second's mask blended in with a legend of the
sounding classes, and the clip's sound: its first audio stream copied packet for packet when MP4
carries its codec as it is (AAC, MP3, AC-3, Opus, FLAC, ALAC), re-encoded to AAC otherwise (PCM)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from aavs.datasets.palette import palette
from aavs.datasets.video import as_yuv420p, iter_timed_frames, new_yuv420p, probe, write_video, yuv420p_planes

if TYPE_CHECKING:
    import av

OVERLAY_ALPHA = 0.5
# x264 at crf 20, preset superfast with a fixed pattern of B-frames (b-adapt=0) and no scene-cut
# keyframes (scenecut=0), so that it runs no look-ahead at all: a 5 s 720p30 overlay took 0.46x (the
# bench's gradients) to 0.58x (a textured, panning picture) of veryfast's encoding time, for 2.2x and
# 2.0x its bytes (superfast alone: 0.6x to 0.74x the time; ultrafast: 0.27x to 0.5x, for 3.4x to 8x the
# bytes). One x264 thread: the same masks give the same overlay.mp4 bytes, in this process or a Ray
# task. Preset veryfast (its macroblock tree and look-ahead) gave 2 or 3 different encodes in 30 of the
# same frames inside pytest even with one thread (these settings: the same bytes 120 times), and with
# two threads 1 to 4 in 30 (this FFmpeg build, sliced or frame threads alike); videos run side by side
# (a second thread here, a task each under --ray) instead.
OVERLAY_X264 = {"crf": "20", "preset": "superfast", "x264-params": "b-adapt=0:scenecut=0", "threads": "1"}


def _mask_layer(path: Path, binary: bool, size: tuple[int, int]) -> Image.Image:
    """The RGBA layer of one mask file: its colours at OVERLAY_ALPHA where it sounds, transparent
    elsewhere, at the frame's size (nearest: built at the mask's size, then resized)."""
    with Image.open(path) as image:
        if binary:
            sounding = np.asarray(image) > 0
            colours = np.broadcast_to(palette(2)[1], (*sounding.shape, 3))
        else:
            colours = np.asarray(image.convert("RGB"))
            sounding = np.asarray(colours.any(axis=-1))
    alpha = np.where(sounding, round(255 * OVERLAY_ALPHA), 0).astype(np.uint8)
    return Image.fromarray(np.dstack([colours, alpha]), mode="RGBA").resize(size, Image.Resampling.NEAREST)


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
    corner = (4 + width, 8 + line * len(classes))  # the box's bottom right (inclusive)
    box = Image.new("RGBA", (min(layer.width, math.ceil(corner[0]) + 1), min(layer.height, corner[1] + 1)))
    ImageDraw.Draw(box).rectangle((4, 4, *corner), fill=(0, 0, 0, 150))
    layer.alpha_composite(box)  # at the top left: the box only, not a layer's worth of transparency
    for i, item in enumerate(classes):
        y = 6 + i * line
        draw.rectangle((8, y + 2, 8 + line - 6, y + line - 4), fill=(*(int(v) for v in colours[item["index"]]), 255))
        draw.text((8 + line, y), item["name"], fill=(255, 255, 255, 255), font=font)


class _Blend:
    """One second's overlay, computed once per second and blended into yuv420p frames (the video's own
    planes, as decoded: no conversion to RGB and back): the mask's colours at OVERLAY_ALPHA and the
    legend on top, as an RGBA layer converted to Y, U and V (BT.601, limited range: as swscale converts
    RGB by default), blended ``out = (plane * (256 - a) + term) >> 8`` in integers, Y at full
    resolution and U, V at quarter (their alpha and colour averaged over each 2x2 block). Only the
    layer's bounding box is blended; the rest of the frame is copied as it is."""

    def __init__(
        self, mask_path: Path, binary: bool, size: tuple[int, int], classes: list[dict[str, Any]], colours: np.ndarray
    ) -> None:
        self.size = size
        layer = _mask_layer(mask_path, binary, size)
        _legend(layer, classes, colours)
        opaque = np.asarray(layer.getchannel("A"))
        rows = np.flatnonzero(opaque.max(axis=1))
        self.box: tuple[int, int, int, int] | None = None  # top, bottom, left, right (even) of the layer
        if not rows.size:
            return
        cols = np.flatnonzero(opaque[rows[0] : rows[-1] + 1].max(axis=0))
        top, bottom = int(rows[0]) // 2 * 2, int(rows[-1]) // 2 * 2 + 2
        left, right = int(cols[0]) // 2 * 2, int(cols[-1]) // 2 * 2 + 2
        self.box = (top, bottom, left, right)
        r, g, b, a = (np.asarray(c, dtype=np.float32) for c in layer.crop((left, top, right, bottom)).split())
        a += a > 0  # 0..255 -> 0..256
        a_c = np.rint(_quarter(a))
        self.keep = [(256 - a).astype(np.uint16), (256 - a_c).astype(np.uint16)]
        self.term: list[np.ndarray] = []  # colour * alpha, + 128 to round to nearest; U, V: 2x2 means
        for k, (to_r, to_g, to_b) in enumerate(_BT601):
            plane = r * to_r
            plane += g * to_g
            plane += b * to_b
            plane += _BT601_OFFSET[k]
            if k == 0:
                self.term.append((np.rint(plane * a) + 128).astype(np.uint16))
            else:
                plane *= a
                term = np.minimum(np.rint(_quarter(plane)), 255 * a_c)
                self.term.append((term + 128).astype(np.uint16))
        self.work = [np.empty(a.shape, np.uint16), np.empty(a_c.shape, np.uint16)]

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        """A new yuv420p frame: ``frame`` (yuv420p, at least the blend's size) with the layer blended in."""
        width, height = self.size
        out = new_yuv420p(width, height)
        for k, (src, dst) in enumerate(
            zip(yuv420p_planes(frame, width, height), yuv420p_planes(out, width, height), strict=True)
        ):
            dst[...] = src
            if self.box is None:
                continue
            top, bottom, left, right = (v // 2 if k else v for v in self.box)
            work = self.work[min(k, 1)]
            np.multiply(src[top:bottom, left:right], self.keep[min(k, 1)], out=work)
            work += self.term[k]
            work >>= 8
            np.copyto(dst[top:bottom, left:right], work, casting="unsafe")
        return out


# BT.601 RGB -> Y'CbCr in limited range (Y 16..235, Cb and Cr 16..240), as swscale converts by default.
_BT601 = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], np.float32) / 255
_BT601_OFFSET = np.array([16.0, 128.0, 128.0], np.float32)


def _quarter(plane: np.ndarray) -> np.ndarray:
    """The mean of each 2x2 block of a float plane of even height and width."""
    return (plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]) / 4


def overlay_frames(
    video: Path,
    masks: Path,
    timeline: list[dict[str, Any]],
    class_names: tuple[str, ...],
    binary: bool,
    height: int = 0,
) -> Iterator[av.VideoFrame]:
    """Every frame of the video as a yuv420p frame with its second's mask blended in and a legend, at
    the video's size cropped to even width and height (as H.264 needs), or ``height`` pixels high (the
    width in proportion, both even; scaled before blending); frames after the last predicted second keep
    that second's mask."""
    colours = palette(max(len(class_names), 2))
    shown, blend = -1, None  # the second whose blend is ready, and that blend
    for start, _end, decoded in iter_timed_frames(video, threads=False):  # beside the next video's work
        size = (decoded.width // 2 * 2, decoded.height // 2 * 2)
        frame = as_yuv420p(decoded, _scaled_size(size, height) if height else None)
        if height:
            size = (frame.width, frame.height)
        second = min(max(int(start), 0), len(timeline) - 1)
        if blend is None or shown != second:
            blend = _Blend(masks / f"{second}.png", binary, size, timeline[second]["sounding"], colours)
            shown = second
        yield blend(frame)


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
    frames = overlay_frames(video, masks, timeline, class_names, binary, height)
    write_video(out, frames, rate=_rate(fps), options=OVERLAY_X264, sound_from=video)


def _scaled_size(size: tuple[int, int], height: int) -> tuple[int, int]:
    """``size`` (width, height) scaled to ``height`` rows, the width in proportion, both even."""
    w, h = size
    return max(2, round(w * height / h / 2) * 2), max(2, height // 2 * 2)


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)
