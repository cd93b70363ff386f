"""`aavs data check`: every problem of an AVSBench data root, each naming its file. Read-only."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image
from rich.console import Console
from rich.table import Table

from aavs.datasets.layout import (
    LABEL2IDX,
    MAX_CLASSES,
    METADATA,
    VideoRecord,
    label2idx_problems,
    object_metadata_files,
    parse_metadata,
)
from aavs.datasets.palette import unknown_colours
from aavs.datasets.progress import track

# Audio more than this much shorter than the clip (one second per frame) is reported.
MAX_AUDIO_SHORTFALL_S = 1.0
PER_WORKER = 200  # videos per extra checking process at least: below, starting one costs more than it saves


@dataclass
class Problem:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def check_data_root(root: str | os.PathLike) -> list[Problem]:
    """All problems of the data root (empty when it is clean); never modifies anything."""
    root = Path(root)
    if not root.is_dir():
        return [
            Problem(
                str(root), "data root missing (expected a folder with metadata.csv, label2idx.json, v1s/, v1m/, v2/)"
            )
        ]
    records, meta = parse_metadata(root)
    problems = [Problem(where, message) for where, message in meta]
    num_classes = MAX_CLASSES
    if (root / METADATA).is_file() or not object_metadata_files(root):  # AVSBench-object's masks are binary
        label_problems, num_classes = _check_label2idx(root / LABEL2IDX)
        problems += label_problems
    if records:
        problems += _check_videos(root, records, num_classes)
    return problems


def _check_label2idx(path: Path) -> tuple[list[Problem], int]:
    """The problems of label2idx.json and its class count (:data:`MAX_CLASSES` when it is unusable,
    so that the masks are then checked against the whole palette)."""
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        missing = "label2idx.json is missing (expected class names -> index, background = 0)"
        return [Problem(str(path), missing)], MAX_CLASSES
    except (ValueError, UnicodeDecodeError) as err:
        return [Problem(str(path), f"not valid JSON: {err}")], MAX_CLASSES
    problems = [Problem(str(path), m) for m in label2idx_problems(mapping)]
    return problems, MAX_CLASSES if problems else len(mapping)


def _check_videos(root: Path, records: list[VideoRecord], num_classes: int) -> list[Problem]:
    """Every video's problems, in metadata order; decoded by one process per core (the whole
    AVSBench is ~87k frames and ~73k masks: docs/scale.md)."""
    check = functools.partial(check_video, root, num_classes=num_classes)
    workers = min(os.cpu_count() or 1, max(1, len(records) // PER_WORKER))
    if workers == 1:
        return [p for video in track(map(check, records), "checking videos", len(records)) for p in video]
    # forkserver: the caller may hold threads (Ray, torch) that a fork would copy mid-state.
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        found = pool.imap(check, records, chunksize=16)
        return [p for video in track(found, "checking videos", len(records)) for p in video]


def check_video(root: Path, record: VideoRecord, num_classes: int) -> list[Problem]:
    """The problems of one video's folder: frames, masks (colours of the first ``num_classes``
    classes only) and audio."""
    folder = record.video_dir(root)
    if not folder.is_dir():
        return [
            Problem(str(folder), f"video folder missing (listed in the metadata as {record.subset}/{record.split})")
        ]
    expected = range(record.num_frames)
    if record.binary_masks:  # AVSBench-object: files named by the video, MS3's frames in one folder
        problems = _check_named(root, record, "frame", expected) + _check_named(
            root, record, "mask", record.annotated_frames
        )
    else:
        problems = _check_indexed(folder / "frames", "jpg", required=expected, allowed=expected, record=record)
        problems += _check_indexed(
            folder / "labels_rgb", "png", required=record.annotated_frames, allowed=expected, record=record
        )
    for i in expected:
        if (path := record.frame_path(root, i)).is_file():
            problems += _check_frame(path)
    for i in expected:
        if (path := record.mask_path(root, i)).is_file():
            problems += _check_mask(path, num_classes, record.binary_masks)
    return problems + _check_audio(record.audio_path(root), record.num_frames)


def _check_indexed(
    folder: Path, ext: str, required: Sequence[int], allowed: Sequence[int], record: VideoRecord
) -> list[Problem]:
    """Missing required files and files beyond the subset's frames."""
    what = "frame" if ext == "jpg" else "mask"
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    problems = [
        Problem(
            str(folder / f"{i}.{ext}"),
            f"{what} missing ({record.subset} {record.split} needs {what}s {', '.join(map(str, required))})",
        )
        for i in required
        if f"{i}.{ext}" not in present
    ]
    allowed_names = {f"{i}.{ext}" for i in allowed}
    for name in sorted(present - allowed_names):
        if name.endswith(f".{ext}"):
            problems.append(
                Problem(
                    str(folder / name),
                    f"unexpected {what}: a {record.subset} video has "
                    f"{record.num_frames} frames (0..{record.num_frames - 1})",
                )
            )
    return problems


def _check_named(root: Path, record: VideoRecord, what: str, required: Sequence[int]) -> list[Problem]:
    """Missing required frames or masks of a layout whose files are named by the video."""
    path = record.frame_path if what == "frame" else record.mask_path
    return [
        Problem(str(path(root, i)), f"{what} missing ({record.subset} {record.split} needs {len(required)} {what}s)")
        for i in required
        if not path(root, i).is_file()
    ]


def _check_frame(path: Path) -> list[Problem]:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 8 or 1, image.height // 8 or 1))  # decode cheaply, but all of it
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return [Problem(str(path), f"frame not readable as an image: {err}")]
    return []


def _check_mask(path: Path, num_classes: int, binary: bool = False) -> list[Problem]:
    """A readable image; unless ``binary`` (any grey value > 0 is sounding), of palette colours only."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return [Problem(str(path), f"mask not readable as an image: {err}")]
    if binary:
        return []
    bad = unknown_colours(rgb, num_classes)
    if not bad:
        return []
    shown = "; ".join(f"colour {c} in {n} pixels" for c, n in bad[:3])
    more = f"; and {len(bad) - 3} more colours" if len(bad) > 3 else ""
    which = "" if num_classes == MAX_CLASSES else f" of the {num_classes} classes of label2idx.json"
    return [Problem(str(path), f"not an AVSBench palette colour{which}: {shown}{more}")]


def _check_audio(path: Path, frames: int) -> list[Problem]:
    if not path.is_file():
        return [Problem(str(path), "audio missing (expected a wav of the clip)")]
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        return [Problem(str(path), f"audio not decodable: {err}")]
    seconds = len(data) / rate
    if seconds < frames - MAX_AUDIO_SHORTFALL_S:
        return [Problem(str(path), f"audio lasts {seconds:.2f} s, far shorter than the {frames} s clip")]
    return []


def render_problems(console: Console, root: str | os.PathLike, problems: list[Problem]) -> None:
    """A rich table of the problems, or a green line saying the root is clean."""
    if not problems:
        console.print(f"[green]{root}: clean, no problems found[/green]")
        return
    table = Table(title=f"{root}: {len(problems)} problem(s)", show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("problem", overflow="fold")
    for problem in problems:
        table.add_row(problem.path, problem.message)
    console.print(table)
