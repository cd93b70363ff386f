"""A small synthetic AVSBench that a model can only solve by listening.

Every frame shows a few objects of different classes, each class with its own look (a colour and a
shape) and its own sound (a tone and its octave at a class-specific pitch, spaced a musical fifth
apart inside 125-7500 Hz). Only the objects whose class is audible in that second are labelled, so the
image tells *what* and *where* but only the audio tells *which*. Some seconds are silent, with empty
masks. v1s videos have one source, v1m and v2 several; in the v1s training split only frame 0 is
labelled, as in AVSBench.

The sound of second t is placed in the t-th 0.96 s window (the VGGish example that frame t uses),
so each embedding hears exactly one second's sources; the tail of the clip continues the last second.

Output is byte-identical for a seed (fixed JPEG quality, 16-bit PCM wav, no timestamps), and every
video draws from its own random stream, so changing ``videos_per_split`` keeps the other videos.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from aavs.datasets.atomic import atomic_dir
from aavs.datasets.layout import (
    FRAMES_PER_SUBSET,
    LABEL2IDX,
    METADATA,
    OBJECT_SUBSETS,
    SPLITS,
    SUBSETS,
    ObjectVideoRecord,
    VideoRecord,
)
from aavs.datasets.palette import encode_class_map

log = logging.getLogger(__name__)

SIZE = 224
SAMPLE_RATE = 16000
SECOND_WINDOW = 0.96  # one VGGish example
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthClass:
    name: str
    colour: tuple[int, int, int]
    shape: str
    pitch_hz: float


# Pitches a fifth apart (ratio 1.5) from 220 Hz; with the octave the highest partial is ~5 kHz.
SYNTH_CLASSES = tuple(
    SynthClass(name, colour, shape, 220.0 * 1.5**k)
    for k, (name, colour, shape) in enumerate(
        (
            ("violin", (220, 40, 40), "disc"),
            ("dog", (40, 180, 60), "square"),
            ("piano", (50, 70, 225), "triangle"),
            ("car", (235, 210, 40), "diamond"),
            ("bird", (205, 50, 205), "ring"),
            ("drum", (40, 205, 215), "plus"),
            ("trumpet", (245, 140, 30), "bar"),
            ("man", (245, 245, 245), "hourglass"),
        )
    )
)
# The data set's own classes (its label2idx.json): background, then the sound sources.
CLASS_NAMES = ("background", *(c.name for c in SYNTH_CLASSES))


def label2idx() -> dict[str, int]:
    return {name: i for i, name in enumerate(CLASS_NAMES)}


def class_index(name: str) -> int:
    return CLASS_NAMES.index(name)


# ------------------------------------------------------------------------------------------ images
def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle((cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        draw.ellipse((cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r), fill=0)
    elif shape == "plus":
        draw.rectangle((cx - r, cy - 0.3 * r, cx + r, cy + 0.3 * r), fill=255)
        draw.rectangle((cx - 0.3 * r, cy - r, cx + 0.3 * r, cy + r), fill=255)
    elif shape == "bar":
        draw.rectangle((cx - r, cy - 0.4 * r, cx + r, cy + 0.4 * r), fill=255)
    elif shape == "hourglass":
        draw.polygon([(cx - r, cy - r), (cx + r, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=255)
    else:  # pragma: no cover - SYNTH_CLASSES is fixed
        raise ValueError(shape)


def _shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    image = Image.new("L", (SIZE, SIZE), 0)
    _draw_shape(ImageDraw.Draw(image), shape, cx, cy, r)
    return np.asarray(image) > 127  # [S, S] bool


def _background(rng: np.random.Generator) -> np.ndarray:
    """A video's muted colour gradient: ``[S, S, 3]`` float."""
    corners = rng.uniform(70, 150, size=(2, 2, 3))
    y = np.linspace(0.0, 1.0, SIZE)[:, None, None]  # [S, 1, 1]
    x = y.transpose(1, 0, 2)  # [1, S, 1]
    top = corners[0, 0] * (1 - x) + corners[0, 1] * x  # [1, S, 3]
    bottom = corners[1, 0] * (1 - x) + corners[1, 1] * x
    return top * (1 - y) + bottom * y


@dataclass(frozen=True)
class _Placed:
    cls: SynthClass
    cx: float
    cy: float
    r: float


def _place_objects(rng: np.random.Generator, classes: list[SynthClass]) -> list[_Placed]:
    """Objects in distinct cells of a 3 x 3 grid, so they never overlap."""
    cell = SIZE / 3
    cells = rng.choice(9, size=len(classes), replace=False)
    placed = []
    for cls, c in zip(classes, cells):
        r = rng.uniform(0.36, 0.44) * cell
        cx = (c % 3 + 0.5) * cell + rng.uniform(-4, 4)
        cy = (c // 3 + 0.5) * cell + rng.uniform(-4, 4)
        placed.append(_Placed(cls, cx, cy, r))
    return placed


def _render_frame(
    rng: np.random.Generator, background: np.ndarray, objects: list[_Placed], audible: set[str]
) -> tuple[bytes, np.ndarray]:
    """(JPEG bytes, class map ``[S, S]``) of one frame; objects jitter a few pixels per frame."""
    pixels = background + rng.normal(0.0, 6.0, size=background.shape)
    class_map = np.zeros((SIZE, SIZE), dtype=np.int64)
    for obj in objects:
        dx, dy = rng.uniform(-3, 3, size=2)
        mask = _shape_mask(obj.cls.shape, obj.cx + dx, obj.cy + dy, obj.r)
        pixels[mask] = np.asarray(obj.cls.colour, dtype=np.float64) + rng.normal(0.0, 4.0, size=(int(mask.sum()), 3))
        if obj.cls.name in audible:
            class_map[mask] = class_index(obj.cls.name)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB").save(
        buf, format="JPEG", quality=JPEG_QUALITY
    )
    return buf.getvalue(), class_map


def _png(class_map: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(encode_class_map(class_map), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def still_image(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """One still image of 2-4 objects with *every* object labelled by its class: (RGB image, class map
    ``[S, S]`` int64). Images, not videos, and no audio: the stand-in for the image segmentation data
    set a Mask2Former base is pre-trained on (ADE20k for the method), from which the tiny preset learns
    what the objects look like but never which of them sounds
    (aavs.orchestrator.recipe.base_pretraining)."""
    order = rng.permutation(len(SYNTH_CLASSES))
    visible = [SYNTH_CLASSES[i] for i in order[: int(rng.integers(2, 5))]]
    objects = _place_objects(rng, visible)
    jpeg, class_map = _render_frame(rng, _background(rng), objects, {c.name for c in visible})
    return Image.open(io.BytesIO(jpeg)).convert("RGB"), class_map


# ------------------------------------------------------------------------------------------- audio
def _tone(cls: SynthClass, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    phase = rng.uniform(0, 2 * np.pi, size=2)
    return np.sin(2 * np.pi * cls.pitch_hz * t + phase[0]) + 0.5 * np.sin(2 * np.pi * 2 * cls.pitch_hz * t + phase[1])


def _render_audio(rng: np.random.Generator, sources: list[list[SynthClass]], duration: int) -> bytes:
    """16 kHz mono PCM-16 wav: second t's sources sound in the t-th 0.96 s window."""
    total = duration * SAMPLE_RATE
    audio = rng.normal(0.0, 0.003, size=total)  # faint noise floor: silence is never digital zero
    bounds = [round(t * SECOND_WINDOW * SAMPLE_RATE) for t in range(len(sources))] + [total]
    fade = np.hanning(2 * 160)  # 10 ms fades against clicks
    for t, classes in enumerate(sources):
        start, stop = bounds[t], bounds[t + 1]
        envelope = np.ones(stop - start)
        envelope[:160], envelope[-160:] = fade[:160], fade[160:]
        for cls in classes:
            audio[start:stop] += rng.uniform(0.12, 0.22) * _tone(cls, stop - start, rng) * envelope
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ videos
def _schedule_v1s(
    rng: np.random.Generator, visible: list[SynthClass], frames: int, split: str
) -> list[list[SynthClass]]:
    source = visible[0]
    on = rng.random(frames) >= 0.2
    if split == "train":
        on[0] = True  # the only labelled frame is never silent
    if not on.any():
        on[rng.integers(frames)] = True
    return [[source] if o else [] for o in on]


# How many of the visible objects sound in a second (0 = silent), for 2 and for 3+ visible objects.
_SOURCE_COUNT_PROBS = {2: (0.15, 0.45, 0.4), 3: (0.1, 0.4, 0.35, 0.15)}


def _schedule_multi(rng: np.random.Generator, visible: list[SynthClass], frames: int) -> list[list[SynthClass]]:
    probs = _SOURCE_COUNT_PROBS[min(len(visible), 3)]
    counts = rng.choice(len(probs), size=frames, p=probs)
    if counts.max() < 2:  # every multi-source video has a second with several sources
        counts[rng.integers(frames)] = 2
    return [[visible[i] for i in sorted(rng.choice(len(visible), size=n, replace=False))] for n in counts]


_OBJECTS_PER_SUBSET: dict[str, Callable[[np.random.Generator], int]] = {
    "v1s": lambda rng: int(rng.integers(2, 4)),
    "v1m": lambda rng: 3,
    "v2": lambda rng: int(rng.integers(2, 5)),
}


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _object_files(jpeg: bytes, class_map: np.ndarray) -> tuple[bytes, bytes]:
    """AVSBench-object's frame (PNG, of the JPEG's pixels) and binary mask (grey, 255 = sounding)."""
    frame, mask = io.BytesIO(), io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("RGB").save(frame, format="PNG")
    Image.fromarray(np.where(class_map > 0, 255, 0).astype(np.uint8), mode="L").save(mask, format="PNG")
    return frame.getvalue(), mask.getvalue()


def _write_video(root: Path, record: VideoRecord, rng: np.random.Generator) -> list[str]:
    """Write one video's frames, masks and audio where its layout puts them; returns the names of its
    audible classes."""
    frames = record.num_frames
    order = rng.permutation(len(SYNTH_CLASSES))
    visible = [SYNTH_CLASSES[i] for i in order[: _OBJECTS_PER_SUBSET[record.subset](rng)]]
    if record.subset == "v1s":
        sources = _schedule_v1s(rng, visible, frames, record.split)
    else:
        sources = _schedule_multi(rng, visible, frames)
    objects = _place_objects(rng, visible)
    background = _background(rng)
    record.video_dir(root).mkdir(parents=True)
    for i in range(frames):
        jpeg, class_map = _render_frame(rng, background, objects, {c.name for c in sources[i]})
        frame, mask = _object_files(jpeg, class_map) if record.binary_masks else (jpeg, _png(class_map))
        _write(record.frame_path(root, i), frame)
        if i in record.annotated_frames:
            _write(record.mask_path(root, i), mask)
    _write(record.audio_path(root), _render_audio(rng, sources, duration=frames))
    return sorted({c.name for second in sources for c in second})


LAYOUTS = ("avsbench-semantic", "avsbench-object")  # aavs.datasets.layout's two release layouts


def write_synthetic_avsbench(
    out: str | os.PathLike,
    videos_per_split: int = 8,
    seed: int = 0,
    eval_videos_per_split: int | None = None,
    layout: str = "avsbench-semantic",
) -> Path:
    """Write the synthetic set to ``out`` (replacing it as a whole, atomically); returns ``out``.

    ``videos_per_split`` videos of each subset in each split; ``eval_videos_per_split``, when given, in
    val and test instead (AVSBench's own val and test are far smaller than its train split). Video k of
    a subset and split is the same whatever the counts. ``layout="avsbench-object"`` writes the v1s and
    v1m videos in AVSBench-object's layout instead (S4 and MS3, binary masks; aavs.datasets.layout).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "avsbench-object":
        return _write_object_layout(Path(out), videos_per_split, seed, eval_videos_per_split)
    counts = {split: videos_per_split for split in SPLITS}
    if eval_videos_per_split is not None:
        counts.update({split: eval_videos_per_split for split in SPLITS if split != "train"})
    for key, value in (("videos_per_split", videos_per_split), ("eval_videos_per_split", eval_videos_per_split)):
        if value is not None and value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    out = Path(out)
    rows = []
    with atomic_dir(out) as tmp:
        for s, subset in enumerate(SUBSETS):
            for p, split in enumerate(SPLITS):
                for k in range(counts[split]):
                    record = VideoRecord(uid=f"syn-{subset}-{split}-{k:04d}", subset=subset, split=split)
                    rng = np.random.default_rng([seed, s, p, k])
                    audible = _write_video(tmp, record, rng)
                    rows.append(
                        {
                            "vid": record.uid,
                            "uid": record.uid,
                            "s_min": 0,
                            "s_sec": 0,
                            "a_obj": ",".join(audible),
                            "split": split,
                            "label": subset,
                        }
                    )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / METADATA).write_text(buf.getvalue(), encoding="utf-8")
        (tmp / LABEL2IDX).write_text(json.dumps(label2idx(), indent=2) + "\n", encoding="utf-8")
    log.info(
        "synthetic AVSBench: %d videos (%s) in %s",
        len(rows),
        ", ".join(f"{s}: {FRAMES_PER_SUBSET[s]} frames" for s in SUBSETS),
        out,
    )
    return out


def _write_object_layout(out: Path, videos_per_split: int, seed: int, eval_videos_per_split: int | None) -> Path:
    """The v1s and v1m videos of :func:`write_synthetic_avsbench` (the same draws) in AVSBench-object's
    layout: S4's in one category folder, ``syn``; its metadata files with the release's columns."""
    counts = {
        split: videos_per_split if split == "train" else (eval_videos_per_split or videos_per_split) for split in SPLITS
    }
    rows: dict[str, list[dict[str, str]]] = {subset: [] for subset in OBJECT_SUBSETS}
    with atomic_dir(out) as tmp:
        for s, subset in enumerate(SUBSETS):
            if subset not in OBJECT_SUBSETS:
                continue
            for p, split in enumerate(SPLITS):
                for k in range(counts[split]):
                    uid = f"syn-{subset}-{split}-{k:04d}"
                    category = "syn" if subset == "v1s" else ""
                    record = ObjectVideoRecord(uid=uid, subset=subset, split=split, category=category)
                    audible = _write_video(tmp, record, np.random.default_rng([seed, s, p, k]))
                    row = {"name": uid, "a_obj": ",".join(audible), "category": category, "split": split}
                    rows[subset].append(
                        row if subset == "v1s" else {"video_id": uid, "a_obj": row["a_obj"], "split": split}
                    )
        for subset, (folder, prefix) in OBJECT_SUBSETS.items():
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[subset][0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows[subset])
            (tmp / folder / f"{prefix}_meta_data.csv").write_text(buf.getvalue(), encoding="utf-8")
    log.info(
        "synthetic AVSBench-object: %d videos (S4 and MS3, 5 frames each) in %s", sum(map(len, rows.values())), out
    )
    return out
