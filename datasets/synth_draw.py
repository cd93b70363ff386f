"""Frames, masks and sound of one video of the AVSBench-shaped synthetic set (aavs.datasets.synth_shape).

The idea of the 9-class demo set (aavs.datasets.synth), for AVSBench-semantic's 70 sound classes and
at any frame size: every class has a look (one of the demo set's eight shapes, in its own colour) and a
sound (a tone and its octave), each frame shows a few objects in distinct cells of a 3 x 3 grid, and
only the objects audible in that second are labelled. Second t sounds in the t-th 0.96 s window (the
VGGish example that frame t uses).

Made to be cheap at ~87k frames of up to 1920 x 1080: a video's background (a gradient with coarse
blotches and fine grain, so that its JPEGs are about as large as photos', not flat colour) and its
objects' sprites are drawn once; a frame is the background with the sprites pasted a few pixels off,
and its mask is written by :func:`png_rgb`, which skips the adaptive row filters that make Pillow's
PNG encoder the slowest step on a mostly black mask.
"""

from __future__ import annotations

import colorsys
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from aavs.datasets.layout import AVSBENCH_CLASSES, VideoRecord
from aavs.datasets.palette import palette
from aavs.datasets.synth import JPEG_QUALITY, SAMPLE_RATE, SECOND_WINDOW, _draw_shape

SHAPES = ("disc", "square", "triangle", "diamond", "ring", "plus", "bar", "hourglass")
NUM_SOURCES = len(AVSBENCH_CLASSES) - 1  # 70: the class indices 1..70 of label2idx.json
# AVSBench-object's audio_wav as its preprocessing writes it (OpenNLPLab/AVSBench,
# preprocess_scripts/preprocess_s4.py: moviepy's ``write_audiofile(path, fps=16000)``, whose reader
# decodes two channels of 16-bit PCM by default); assumed the same for AVSBench-semantic's audio.wav.
CHANNELS = 2
# Class c sounds at C3 (130.81 Hz) plus c - 1 semitones: the 70th is 7.04 kHz, under 16 kHz's Nyquist.
LOWEST_PITCH_HZ = 130.81
PNG_LEVEL = 1  # zlib level of the masks: 3.5x faster than 6 on a 1080p mask, 2.6x larger (34 KB)


@dataclass(frozen=True)
class Placed:
    """One object: its class index (1..70), centre and radius in pixels of the frame."""

    cls: int
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class VideoPlan:
    """What one video shows and plays, drawn before any pixel: frame size ``(width, height)``, its
    objects, and per second the class indices that sound (empty: a silent second)."""

    size: tuple[int, int]
    objects: tuple[Placed, ...]
    sources: tuple[tuple[int, ...], ...]

    def audible(self) -> list[str]:
        """The names of the classes heard in any second (metadata.csv's ``a_obj``)."""
        return sorted({AVSBENCH_CLASSES[c] for second in self.sources for c in second})


def class_look(c: int) -> tuple[tuple[int, int, int], str]:
    """Colour and shape of class index ``c`` (1..70): shapes cycle, hues step by the golden ratio so that
    neighbouring classes differ, and saturation and value alternate in blocks of 8 and 16."""
    k = c - 1
    red, green, blue = colorsys.hsv_to_rgb((k * 0.6180339887) % 1.0, (0.9, 0.6)[k // 8 % 2], (0.95, 0.7)[k // 16 % 2])
    return (round(255 * red), round(255 * green), round(255 * blue)), SHAPES[k % len(SHAPES)]


def pitch_hz(c: int) -> float:
    return LOWEST_PITCH_HZ * 2.0 ** ((c - 1) / 12)


# ------------------------------------------------------------------------------------------ images
def png_rgb(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` ``[H, W, 3]`` uint8, every row unfiltered (filter type 0)."""
    height, width, _ = rgb.shape
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # a 0 (no filter) before each row
    rows[:, 1:] = rgb.reshape(height, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.data, PNG_LEVEL))
        + chunk(b"IEND", b"")
    )


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A muted gradient with coarse blotches (drawn at 1/8 size, resized) and fine grain: ``[H, W, 3]``."""
    corners = rng.uniform(70, 150, size=(2, 2, 3))
    gh, gw = height // 8 + 2, width // 8 + 2
    y = np.linspace(0.0, 1.0, gh)[:, None, None]
    x = np.linspace(0.0, 1.0, gw)[None, :, None]
    top = corners[0, 0] * (1 - x) + corners[0, 1] * x
    bottom = corners[1, 0] * (1 - x) + corners[1, 1] * x
    coarse = top * (1 - y) + bottom * y + rng.normal(0.0, 8.0, size=(gh, gw, 3))
    small = Image.fromarray(np.clip(coarse, 0, 255).round().astype(np.uint8))
    smooth = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    grain = rng.integers(0, 9, size=(height, width, 3), dtype=np.uint8)
    return np.clip(smooth + grain - 4, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Sprite:
    cls: int
    x0: int  # top-left corner in the frame, before a frame's jitter
    y0: int
    mask: np.ndarray  # [h, w] bool
    pixels: np.ndarray  # [h, w, 3] uint8


def _sprite(rng: np.random.Generator, obj: Placed) -> _Sprite:
    colour, shape = class_look(obj.cls)
    half = int(np.ceil(obj.r)) + 1
    x0, y0 = int(np.floor(obj.cx)) - half, int(np.floor(obj.cy)) - half
    image = Image.new("L", (2 * half + 1, 2 * half + 1), 0)
    _draw_shape(ImageDraw.Draw(image), shape, obj.cx - x0, obj.cy - y0, obj.r)
    mask = np.asarray(image) > 127
    pixels = np.clip(np.asarray(colour, dtype=np.float64) + rng.normal(0.0, 4.0, size=(*mask.shape, 3)), 0, 255)
    return _Sprite(obj.cls, x0, y0, mask, pixels.round().astype(np.uint8))


def _paste(
    frame: np.ndarray, label: np.ndarray | None, sprite: _Sprite, dx: int, dy: int, colour: np.ndarray | None
) -> None:
    """Draw ``sprite`` at its place moved by (dx, dy), clipped to the frame; colour its pixels in
    ``label`` with ``colour`` (when both are given)."""
    height, width = frame.shape[:2]
    h, w = sprite.mask.shape
    x0, y0 = sprite.x0 + dx, sprite.y0 + dy
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sy, sx = slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0)
    where = sprite.mask[sy, sx, None]
    np.copyto(frame[fy0:fy1, fx0:fx1], sprite.pixels[sy, sx], where=where)
    if label is not None and colour is not None:
        np.copyto(label[fy0:fy1, fx0:fx1], colour, where=where)


# ------------------------------------------------------------------------------------------- audio
def _audio(rng: np.random.Generator, sources: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Float samples ``[n]`` of a clip of ``len(sources)`` seconds: second t's classes sound in the t-th
    0.96 s window (the tail continues the last second), over a faint noise floor."""
    total = len(sources) * SAMPLE_RATE
    audio = rng.normal(0.0, 0.003, size=total)
    bounds = [round(t * SECOND_WINDOW * SAMPLE_RATE) for t in range(len(sources))] + [total]
    fade = np.hanning(2 * 160)  # 10 ms fades against clicks
    for t, classes in enumerate(sources):
        start, stop = bounds[t], bounds[t + 1]
        envelope = np.ones(stop - start)
        envelope[:160], envelope[-160:] = fade[:160], fade[160:]
        time = np.arange(stop - start) / SAMPLE_RATE
        for c in classes:
            f = pitch_hz(c)
            phase = rng.uniform(0, 2 * np.pi, size=2)
            tone = np.sin(2 * np.pi * f * time + phase[0])
            if 2 * f < 7500:  # the octave only where VGGish's mel bands (125-7500 Hz) hear it
                tone += 0.5 * np.sin(4 * np.pi * f * time + phase[1])
            audio[start:stop] += rng.uniform(0.12, 0.22) * tone * envelope
    return np.clip(audio, -1.0, 1.0)


# ------------------------------------------------------------------------------------------- video
def render_video(folder: Path, record: VideoRecord, plan: VideoPlan, rng: np.random.Generator) -> None:
    """Write ``record``'s frames (JPEG), masks (palette-coloured RGB PNG, at the frame's size, only of
    its annotated frames) and audio.wav into ``folder`` (its video folder, or a staging copy of it),
    drawing every random number from ``rng``."""
    width, height = plan.size
    base = record.video_dir("")
    (folder / record.frame_path("", 0).relative_to(base)).parent.mkdir(parents=True, exist_ok=True)
    (folder / record.mask_path("", 0).relative_to(base)).parent.mkdir(parents=True, exist_ok=True)
    background = _background(rng, width, height)
    sprites = [_sprite(rng, obj) for obj in plan.objects]
    colours = palette()
    jitter = max(1, round(0.01 * min(width, height)))
    annotated = set(record.annotated_frames)
    for i, audible in enumerate(plan.sources):
        frame = background.copy()
        label = np.zeros((height, width, 3), dtype=np.uint8) if i in annotated else None
        for sprite in sprites:
            dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
            _paste(frame, label, sprite, dx, dy, colours[sprite.cls] if sprite.cls in audible else None)
        Image.fromarray(frame).save(
            folder / record.frame_path("", i).relative_to(base), format="JPEG", quality=JPEG_QUALITY
        )
        if label is not None:
            (folder / record.mask_path("", i).relative_to(base)).write_bytes(png_rgb(label))
    audio = _audio(rng, plan.sources)
    soundfile.write(
        str(folder / record.audio_path("").relative_to(base)),
        np.repeat(audio[:, None], CHANNELS, axis=1),
        SAMPLE_RATE,
        subtype="PCM_16",
        format="WAV",
    )
