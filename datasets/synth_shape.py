"""AVSBench-shaped synthetic data: ``aavs data synth DIR --shape avsbench [--scale F] [--shape-from CSV]``.

The demo set's layout and idea (aavs.datasets.synth; drawing in aavs.datasets.synth_draw) at the size
and shape of AVSBench-semantic's release, so that the data path, the loader and cost estimates can run
at full size without the release:

- videos per subset and split: :data:`PUBLISHED_COUNTS` times ``scale`` (rounded half up, at least one
  each), named ``syn-<subset>-<split>-<k>``; or exactly the uids, subsets and splits of a real
  metadata.csv (``shape_from``);
- 5, 5 and 10 frames for v1s, v1m and v2 (aavs.datasets.layout), only frame 0 labelled in v1s train;
- AVSBench-semantic's 71 classes (label2idx.json: background + 70), with a long tail: the class of
  rank r is drawn with probability proportional to 1 / r ** :data:`ZIPF_EXPONENT` (Zipf's law, exponent
  1: the most frequent class is drawn 70 times as often as the rarest, 21 % of all draws), over a
  fixed ranking of the classes (a permutation drawn with seed :data:`RANK_SEED`, whatever ``seed``);
- one source per v1s video; in v1m and v2 two to four visible objects, several sources and silent
  seconds (as the demo set);
- frame sizes drawn per video from :data:`SIZE_MIX`; masks at frame size; audio.wav at 16 kHz, two
  channels, 16-bit PCM (aavs.datasets.synth_draw).

Each video's content depends only on ``seed`` and its uid (its own random streams), so the output is
the same whatever ``workers`` or ``scale`` (video k of a subset and split is the same at every scale).
A video is written into DIR/.staging and renamed into place once complete and on the disk
(aavs.datasets.atomic): a video folder that exists is complete, its presence is the completion marker.
A rerun after a kill skips those and continues. metadata.csv is written last, atomically, so DIR is a
data root only when every video is there. DIR/.synth-shape.json holds the parameters; a rerun with
other parameters is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np

from aavs.datasets.atomic import FS, durable_tree, make_dirs, write_json, write_text
from aavs.datasets.errors import InputError
from aavs.datasets.layout import (
    AVSBENCH_CLASSES,
    FRAMES_PER_SUBSET,
    LABEL2IDX,
    METADATA,
    SPLITS,
    SUBSETS,
    VideoRecord,
    uid_problem,
)
from aavs.datasets.progress import track
from aavs.datasets.synth import _SOURCE_COUNT_PROBS
from aavs.datasets.synth_draw import NUM_SOURCES, Placed, VideoPlan, render_video

log = logging.getLogger(__name__)

# Videos per subset and split of AVSBench's releases.
# v1s (S4) and v1m (MS3): Zhou et al., "Audio-Visual Segmentation", ECCV 2022 (arXiv 2207.05042), the
#   AVSBench statistics: 4,932 single-source videos = 3,452 / 740 / 740; 424 multi-source = 296 / 64 / 64.
# v2: Zhou et al., "Audio-Visual Segmentation with Semantics", IJCV 2024 (arXiv 2301.13190), the
#   AVSBench-semantic statistics: 11,356 videos = 8,498 train / 1,304 val / 1,554 test over all three
#   subsets; v2's share is those less S4's and MS3's (4,750 / 500 / 750 = 6,000 videos).
PUBLISHED_COUNTS: dict[tuple[str, str], int] = {
    ("v1s", "train"): 3452,
    ("v1s", "val"): 740,
    ("v1s", "test"): 740,
    ("v1m", "train"): 296,
    ("v1m", "val"): 64,
    ("v1m", "test"): 64,
    ("v2", "train"): 8498 - 3452 - 296,
    ("v2", "val"): 1304 - 740 - 64,
    ("v2", "test"): 1554 - 740 - 64,
}
# Frame sizes (width, height) and their shares, per subset. v1s and v1m as AVSBench-object stores its
# frames: every frame resized to 224 x 224 (OpenNLPLab/AVSBench, preprocess_scripts/preprocess_s4.py,
# ``cv2.resize(im, (224, 224))``). v2: an ASSUMPTION, YouTube's usual stream sizes (16:9 at 360p, 480p,
# 720p and 1080p, and 4:3 at 360p) in guessed shares; no published statistic of v2's frame sizes was found.
SIZE_MIX: dict[str, tuple[tuple[tuple[int, int], float], ...]] = {
    "v1s": (((224, 224), 1.0),),
    "v1m": (((224, 224), 1.0),),
    "v2": (
        ((1280, 720), 0.40),
        ((640, 360), 0.25),
        ((480, 360), 0.15),
        ((854, 480), 0.10),
        ((1920, 1080), 0.10),
    ),
}
ZIPF_EXPONENT = 1.0
RANK_SEED = 71
_OBJECTS = {"v1s": (2, 3), "v1m": (3, 3), "v2": (2, 4)}  # visible objects per video, inclusive (the demo set's)
MANIFEST = ".synth-shape.json"
STAGING = ".staging"
_STREAM = 0x5A9E  # tells these streams from the demo set's ([seed, subset, split, k])


def class_frequencies() -> np.ndarray:
    """``[70]``: the probability of drawing class index i + 1, Zipf's law over a fixed ranking."""
    ranks = np.random.default_rng(RANK_SEED).permutation(NUM_SOURCES) + 1
    weights = ranks.astype(np.float64) ** -ZIPF_EXPONENT
    return weights / weights.sum()


_FREQUENCIES = class_frequencies()


def published_shape(scale: float = 1.0) -> list[VideoRecord]:
    """The videos of AVSBench's shape at ``scale`` (0 < scale <= 1), subset by subset, split by split."""
    if not 0 < scale <= 1:
        raise InputError(f"--scale must be a fraction in (0, 1] of AVSBench's size (1 = full size), got {scale}")
    factor = Decimal(repr(float(scale)))
    records = []
    for subset in SUBSETS:
        for split in SPLITS:
            exact = PUBLISHED_COUNTS[subset, split] * factor
            count = max(1, int(exact.to_integral_value(rounding=ROUND_HALF_UP)))
            records += [VideoRecord(f"syn-{subset}-{split}-{k:04d}", subset, split) for k in range(count)]
    return records


def read_shape(path: str | os.PathLike) -> list[VideoRecord]:
    """The videos (uid, subset, split) of a real metadata.csv, in its order; an :class:`InputError` names
    the file (and line) when it cannot be read or a row is not a video of AVSBench-semantic's layout."""
    path = Path(path)
    expected = "expected an AVSBench-semantic metadata.csv with columns uid, split, label"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--shape-from {path}: cannot be read ({err}); {expected}") from None
    try:
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in ("uid", "split", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"--shape-from {path}: column(s) {', '.join(missing)} missing; {expected}")
        records, seen = [], set()
        for row in reader:
            uid, split, subset = (str(row.get(c) or "").strip() for c in ("uid", "split", "label"))
            where = f"--shape-from {path}:{reader.line_num}"
            if (why := uid_problem(uid)) is not None or uid in seen:
                raise InputError(f"{where}: uid {uid!r} {why or 'is listed twice'}")
            if split not in SPLITS or subset not in SUBSETS:
                raise InputError(
                    f"{where}: split {split!r} / label {subset!r}: expected a split of {', '.join(SPLITS)} "
                    f"and a label of {', '.join(SUBSETS)}"
                )
            seen.add(uid)
            records.append(VideoRecord(uid, subset, split))
    except csv.Error as err:
        raise InputError(f"--shape-from {path}: not a readable CSV file ({err}); {expected}") from None
    if not records:
        raise InputError(f"--shape-from {path}: lists no videos; {expected}")
    return records


# -------------------------------------------------------------------------------------------- plan
def _streams(seed: int, uid: str) -> tuple[np.random.Generator, np.random.Generator]:
    """A video's two random streams: its plan's and its pixels' and samples' (so that the plan, and
    with it metadata.csv's a_obj, is known without drawing a pixel)."""
    key = int.from_bytes(hashlib.sha256(uid.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([seed, _STREAM, key, 0]), np.random.default_rng([seed, _STREAM, key, 1])


def plan_video(rng: np.random.Generator, subset: str, split: str) -> VideoPlan:
    """A video's frame size, objects (classes drawn by :func:`class_frequencies`, without repeats, in
    distinct cells of a 3 x 3 grid) and per second its sounding classes."""
    frames = FRAMES_PER_SUBSET[subset]
    sizes = SIZE_MIX[subset]
    width, height = sizes[int(rng.choice(len(sizes), p=[share for _, share in sizes]))][0]
    low, high = _OBJECTS[subset]
    n = int(rng.integers(low, high + 1))
    visible = [int(c) + 1 for c in rng.choice(NUM_SOURCES, size=n, replace=False, p=_FREQUENCIES)]
    if subset == "v1s":  # one source, silent in about one second of five; never in the one labelled frame
        on = rng.random(frames) >= 0.2
        if split == "train":
            on[0] = True
        if not on.any():
            on[rng.integers(frames)] = True
        sources = [(visible[0],) if o else () for o in on]
    else:
        probs = _SOURCE_COUNT_PROBS[min(n, 3)]
        counts = rng.choice(len(probs), size=frames, p=probs)
        if counts.max() < 2:  # every multi-source video has a second with several sources
            counts[rng.integers(frames)] = 2
        sources = [tuple(visible[i] for i in sorted(rng.choice(n, size=int(k), replace=False))) for k in counts]
    cell_w, cell_h = width / 3, height / 3
    objects = []
    for c, cell in zip(visible, rng.choice(9, size=n, replace=False)):
        r = rng.uniform(0.36, 0.44) * min(cell_w, cell_h)
        cx = (cell % 3 + 0.5 + rng.uniform(-0.02, 0.02)) * cell_w
        cy = (cell // 3 + 0.5 + rng.uniform(-0.02, 0.02)) * cell_h
        objects.append(Placed(c, float(cx), float(cy), float(r)))
    return VideoPlan((width, height), tuple(objects), tuple(sources))


# ----------------------------------------------------------------------------------------- writing
def _make_video(job: tuple[str, str, str, str, int]) -> int:
    """Write one video into DIR/.staging/<uid>, then rename it into place; returns its frame count."""
    root, uid, subset, split, seed = job
    record = VideoRecord(uid, subset, split)
    plan_rng, draw_rng = _streams(seed, uid)
    plan = plan_video(plan_rng, subset, split)
    staged, final = Path(root) / STAGING / uid, record.video_dir(root)
    FS.remove(staged)
    staged.mkdir()
    try:
        render_video(staged, record, plan, draw_rng)
        durable_tree(staged)
        make_dirs(final.parent)
        FS.rename(staged, final)
        FS.fsync(final.parent)
    finally:
        if staged.exists():
            FS.remove(staged)
    return record.num_frames


def _run(jobs: list[tuple[str, str, str, str, int]], workers: int) -> Iterator[int]:
    if workers == 1 or len(jobs) <= 1:
        yield from map(_make_video, jobs)
        return
    # forkserver: the workers are not forks of a process that may already run threads (rich, torch)
    with multiprocessing.get_context("forkserver").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(_make_video, jobs)


def _claim(out: Path, manifest: dict) -> None:
    """Make ``out`` ours: new or empty, or a generation of the same parameters to continue."""
    path = out / MANIFEST
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != manifest:
            raise InputError(
                f"{out}: holds a synthetic set of other parameters ({path}: {found}, now {manifest}); "
                "remove it or write to another folder"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(
            f"{out}: exists and is not a --shape generation (no {MANIFEST}); expected a new or empty folder"
        )
    make_dirs(out)
    write_json(path, manifest)


def write_shaped_avsbench(
    out: str | os.PathLike,
    seed: int = 0,
    scale: float = 1.0,
    shape_from: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Path:
    """Write (or continue writing) the AVSBench-shaped set in ``out``; returns ``out``. See the module
    docstring. ``workers`` processes (default: every core) write videos in parallel."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    manifest: dict = {"format": 1, "seed": seed}
    if shape_from is not None:
        if scale != 1.0:
            raise InputError(
                "--scale shrinks AVSBench's published counts; --shape-from copies a metadata file as it is"
            )
        records = read_shape(shape_from)
        manifest["shape_from"] = hashlib.sha256(Path(shape_from).read_bytes()).hexdigest()
    else:
        records = published_shape(scale)
        manifest.update(shape="avsbench", scale=scale)
    out = Path(out)
    _claim(out, manifest)
    write_text(out / LABEL2IDX, json.dumps({name: i for i, name in enumerate(AVSBENCH_CLASSES)}, indent=2) + "\n")
    FS.remove(out / STAGING)  # what a killed run left half-written
    (out / STAGING).mkdir()
    jobs = [(str(out), r.uid, r.subset, r.split, seed) for r in records if not r.video_dir(out).is_dir()]
    start, frames = time.perf_counter(), 0
    for count in track(_run(jobs, workers), "writing AVSBench-shaped videos", total=len(jobs)):
        frames += count
    seconds = time.perf_counter() - start
    FS.remove(out / STAGING)
    rows = []
    for r in records:
        audible = plan_video(_streams(seed, r.uid)[0], r.subset, r.split).audible()
        rows.append(
            {
                "vid": r.uid,
                "uid": r.uid,
                "s_min": 0,
                "s_sec": 0,
                "a_obj": ",".join(audible),
                "split": r.split,
                "label": r.subset,
            }
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / METADATA, buf.getvalue())
    used = min(workers, max(len(jobs), 1))
    log.info(
        "AVSBench-shaped set in %s: %d videos (%d written now, %d there already); %d frames in %.1f s%s",
        out,
        len(records),
        len(jobs),
        len(records) - len(jobs),
        frames,
        seconds,
        f", {1000 * seconds * used / frames:.1f} ms per frame per worker ({used} workers)" if frames else "",
    )
    return out
