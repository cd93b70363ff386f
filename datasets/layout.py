"""The AVSBench folder layouts: which videos exist, where their files are, which frames are labelled.

AVSBench-semantic's release (all three subsets; what ``aavs data synth`` writes by default):

```
DATA/metadata.csv                          uid, split (train|val|test), label (v1s|v1m|v2), ...
DATA/label2idx.json                        class name -> index, background = 0 (AVSBench: 71 entries)
DATA/<label>/<uid>/frames/<i>.jpg          one frame per second
DATA/<label>/<uid>/labels_rgb/<i>.png      palette-coloured masks
DATA/<label>/<uid>/audio.wav
```

AVSBench-object's release (S4 = v1s and MS3 = v1m only, binary masks; ``--layout avsbench-object``),
as its authors' loaders read it (OpenNLPLab/AVSBench ``avs_scripts/avs_s4``, ``avs_ms3``); either
folder may be absent. Frames and masks are numbered from 1 there, from 0 here:

```
DATA/Single-source/s4_meta_data.csv        name (first column), ..., category, split
DATA/Single-source/s4_data/visual_frames/<split>/<category>/<name>/<name>_<i+1>.png
DATA/Single-source/s4_data/gt_masks/<split>/<category>/<name>/<name>_<i+1>.png    0 / non-zero: sounding
DATA/Single-source/s4_data/audio_wav/<split>/<category>/<name>.wav
DATA/Multi-sources/ms3_meta_data.csv       name (first column), ..., split
DATA/Multi-sources/ms3_data/visual_frames/<name>.mp4_<i+1>.png
DATA/Multi-sources/ms3_data/gt_masks/<split>/<name>/<name>_<i+1>.png
DATA/Multi-sources/ms3_data/audio_wav/<split>/<name>.wav
```
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import get_task

SUBSETS = ("v1s", "v1m", "v2")
FRAMES_PER_SUBSET = {"v1s": 5, "v1m": 5, "v2": 10}
SPLITS = ("train", "val", "test")
MAX_CLASSES = 256  # the PASCAL VOC colour map's length, which the palette (and a uint8 index) covers
# AVSBench-semantic's label2idx.json (background + 70 sources), as the reference's AVSS config lists it
# (GeWu-Lab/Stepping-Stones, avss/.models/config.json id2label): the class list of the released
# checkpoints. Our networks take theirs from the data root (docs/method.md §1).
AVSBENCH_CLASSES = (
    "background",
    "accordion",
    "airplane",
    "axe",
    "baby",
    "bassoon",
    "bell",
    "bird",
    "boat",
    "boy",
    "bus",
    "car",
    "cat",
    "cello",
    "clarinet",
    "clipper",
    "clock",
    "dog",
    "donkey",
    "drum",
    "duck",
    "elephant",
    "emergency-car",
    "erhu",
    "flute",
    "frying-food",
    "girl",
    "goose",
    "guitar",
    "gun",
    "guzheng",
    "hair-dryer",
    "handpan",
    "harmonica",
    "harp",
    "helicopter",
    "hen",
    "horse",
    "keyboard",
    "leopard",
    "lion",
    "man",
    "marimba",
    "missile-rocket",
    "motorcycle",
    "mower",
    "parrot",
    "piano",
    "pig",
    "pipa",
    "saw",
    "saxophone",
    "sheep",
    "sitar",
    "sorna",
    "squirrel",
    "tabla",
    "tank",
    "tiger",
    "tractor",
    "train",
    "trombone",
    "truck",
    "trumpet",
    "tuba",
    "ukulele",
    "utv",
    "vacuum-cleaner",
    "violin",
    "wolf",
    "woman",
)
REQUIRED_COLUMNS = ("uid", "split", "label")
METADATA = "metadata.csv"
LABEL2IDX = "label2idx.json"


@dataclass(frozen=True)
class VideoRecord:
    """One video of AVSBench: its uid, its subset folder (``label`` in metadata.csv) and its split."""

    uid: str
    subset: str
    split: str

    @property
    def num_frames(self) -> int:
        return FRAMES_PER_SUBSET[self.subset]

    @property
    def annotated_frames(self) -> tuple[int, ...]:
        """Frames that carry a mask: only frame 0 in the v1s training split, every frame elsewhere."""
        if self.subset == "v1s" and self.split == "train":
            return (0,)
        return tuple(range(self.num_frames))

    def video_dir(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.subset / self.uid

    def frame_path(self, root: str | os.PathLike, i: int) -> Path:
        return self.video_dir(root) / "frames" / f"{i}.jpg"

    def mask_path(self, root: str | os.PathLike, i: int) -> Path:
        return self.video_dir(root) / "labels_rgb" / f"{i}.png"

    def audio_path(self, root: str | os.PathLike) -> Path:
        return self.video_dir(root) / "audio.wav"

    @property
    def binary_masks(self) -> bool:
        """Whether its mask files are binary (AVSBench-object: non-zero is sounding) rather than
        palette-coloured class maps."""
        return False


OBJECT_SUBSETS = {"v1s": ("Single-source", "s4"), "v1m": ("Multi-sources", "ms3")}  # folder, file prefix


@dataclass(frozen=True)
class ObjectVideoRecord(VideoRecord):
    """One video of AVSBench-object's release (the module docstring's second layout); ``category`` is
    its S4 class folder (empty for MS3)."""

    category: str = ""

    def _data(self, root: str | os.PathLike) -> Path:
        folder, prefix = OBJECT_SUBSETS[self.subset]
        return Path(root) / folder / f"{prefix}_data"

    def _per_video(self, root: str | os.PathLike, kind: str) -> Path:
        parts = [self.split, self.category] if self.subset == "v1s" else [self.split]
        return self._data(root).joinpath(kind, *parts)

    def video_dir(self, root: str | os.PathLike) -> Path:
        """The folder of its masks (MS3 keeps every video's frames in one folder)."""
        return self._per_video(root, "gt_masks") / self.uid

    def frame_path(self, root: str | os.PathLike, i: int) -> Path:
        if self.subset == "v1s":
            return self._per_video(root, "visual_frames") / self.uid / f"{self.uid}_{i + 1}.png"
        return self._data(root) / "visual_frames" / f"{self.uid}.mp4_{i + 1}.png"

    def mask_path(self, root: str | os.PathLike, i: int) -> Path:
        return self.video_dir(root) / f"{self.uid}_{i + 1}.png"

    def audio_path(self, root: str | os.PathLike) -> Path:
        return self._per_video(root, "audio_wav") / f"{self.uid}.wav"

    @property
    def binary_masks(self) -> bool:
        return True


def has_metadata(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a data root of either layout (its metadata file(s) exist)."""
    return (Path(root) / METADATA).is_file() or bool(object_metadata_files(root))


def object_metadata_files(root: str | os.PathLike) -> dict[str, Path]:
    """AVSBench-object's metadata files under ``root``, by subset (empty when it is not that layout)."""
    files = {
        subset: Path(root) / folder / f"{prefix}_meta_data.csv" for subset, (folder, prefix) in OBJECT_SUBSETS.items()
    }
    return {subset: path for subset, path in files.items() if path.is_file()}


def uid_problem(uid: str) -> str | None:
    """Why ``uid`` cannot be a folder name under DATA/<label>/ (None when it can)."""
    if not uid.strip():
        return "is empty"
    if uid in (".", "..") or "/" in uid or "\\" in uid or "\0" in uid:
        return "is not a plain folder name (no '/', '\\', '.' or '..')"
    if PurePosixPath(uid).is_absolute() or PureWindowsPath(uid).is_absolute() or PureWindowsPath(uid).drive:
        return "is an absolute path"
    return None


def parse_metadata(root: str | os.PathLike) -> tuple[list[VideoRecord], list[tuple[str, str]]]:
    """Read DATA/metadata.csv into records, collecting every problem as ``(where, message)``.

    Rows with a problem are left out of the records. Used by :func:`read_metadata` (which raises the
    first problem) and by the data checker (which reports them all).
    """
    path = Path(root) / METADATA
    if not path.is_file():
        if object_metadata_files(root):
            return _parse_object_metadata(root)
        return [], [
            (
                str(path),
                "metadata.csv is missing (expected columns uid, split, label; or AVSBench-object's "
                "Single-source/s4_meta_data.csv, Multi-sources/ms3_meta_data.csv)",
            )
        ]
    problems: list[tuple[str, str]] = []
    records: list[VideoRecord] = []
    seen: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                return [], [
                    (
                        str(path),
                        f"column(s) {', '.join(missing)} missing from the header "
                        f"(found {', '.join(reader.fieldnames or []) or 'nothing'})",
                    )
                ]
            for row in reader:
                where = f"{path}:{reader.line_num}"
                record, row_problems = _parse_row(row, seen, reader.line_num)
                problems.extend((where, m) for m in row_problems)
                if record is not None:
                    records.append(record)
    except (UnicodeDecodeError, csv.Error) as err:
        problems.append((str(path), f"not a readable CSV file: {err}"))
    return records, problems


def _parse_row(row: dict, seen: dict[str, int], line: int) -> tuple[VideoRecord | None, list[str]]:
    uid, split, subset = (str(row.get(c) or "").strip() for c in REQUIRED_COLUMNS)
    problems = []
    if (why := uid_problem(uid)) is not None:
        problems.append(f"column uid: {uid!r} {why}")
    elif uid in seen:
        problems.append(f"column uid: duplicate uid {uid!r} (first on line {seen[uid]})")
    if split not in SPLITS:
        problems.append(f"column split: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if subset not in SUBSETS:
        problems.append(f"column label: unknown label {subset!r} (expected one of {', '.join(SUBSETS)})")
    if uid and uid not in seen:
        seen[uid] = line
    if problems:
        return None, problems
    return VideoRecord(uid=uid, subset=subset, split=split), []


def _parse_object_metadata(root: str | os.PathLike) -> tuple[list[VideoRecord], list[tuple[str, str]]]:
    """AVSBench-object's metadata files as records (S4's as v1s, MS3's as v1m), with their problems."""
    problems: list[tuple[str, str]] = []
    records: list[VideoRecord] = []
    seen: dict[str, int] = {}
    for subset, path in object_metadata_files(root).items():
        needed = ("category", "split") if subset == "v1s" else ("split",)
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                columns = reader.fieldnames or []
                missing = [c for c in needed if c not in columns]
                if not columns or missing:
                    problems.append((str(path), f"column(s) {', '.join(missing or needed)} missing from the header"))
                    continue
                for row in reader:
                    where = f"{path}:{reader.line_num}"
                    uid, split = str(row.get(columns[0]) or "").strip(), str(row.get("split") or "").strip()
                    category = str(row.get("category") or "").strip() if subset == "v1s" else ""
                    row_problems = []
                    if (why := uid_problem(uid)) is not None:
                        row_problems.append(f"column {columns[0]}: {uid!r} {why}")
                    elif uid in seen:
                        row_problems.append(f"column {columns[0]}: duplicate name {uid!r} (first on line {seen[uid]})")
                    if split not in SPLITS:
                        row_problems.append(
                            f"column split: unknown split {split!r} (expected one of {', '.join(SPLITS)})"
                        )
                    if subset == "v1s" and (why := uid_problem(category)) is not None:
                        row_problems.append(f"column category: {category!r} {why}")
                    seen.setdefault(uid, reader.line_num)
                    problems.extend((where, m) for m in row_problems)
                    if not row_problems:
                        records.append(ObjectVideoRecord(uid=uid, subset=subset, split=split, category=category))
        except (UnicodeDecodeError, csv.Error) as err:
            problems.append((str(path), f"not a readable CSV file: {err}"))
    return records, problems


def read_metadata(root: str | os.PathLike) -> list[VideoRecord]:
    """All videos listed in DATA/metadata.csv; an :class:`InputError` names the first bad row/column."""
    records, problems = parse_metadata(root)
    if problems:
        where, message = problems[0]
        more = f" (and {len(problems) - 1} more problem(s); run `aavs data check`)" if len(problems) > 1 else ""
        raise InputError(f"{where}: {message}{more}")
    return records


def select_videos(root: str | os.PathLike, task: str, split: str) -> list[VideoRecord]:
    """The videos of ``task`` in ``split``: subset by subset (AVSS: v1s, then v1m, then v2), each in
    metadata order, the order in which the reference concatenates them (and trains stage two)."""
    subsets = get_task(task).subsets
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    records = [r for r in read_metadata(root) if r.split == split]
    return [r for subset in subsets for r in records if r.subset == subset]


def label2idx_problems(mapping: object) -> list[str]:
    """What is wrong with a parsed label2idx.json (empty when it is a valid map).

    Any class count from 2 (background + one source) to :data:`MAX_CLASSES` is valid: the data set
    decides the semantic network's classes (AVSBench: 71).
    """
    if not isinstance(mapping, dict):
        return [f"expected a JSON object class name -> index, got {type(mapping).__name__}"]
    problems = []
    if not 2 <= len(mapping) <= MAX_CLASSES:
        problems.append(f"has {len(mapping)} classes, expected 2..{MAX_CLASSES} (background + at least one source)")
    bad = [k for k, v in mapping.items() if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        problems.append(f"non-integer index for {', '.join(map(repr, bad[:5]))}")
    elif sorted(mapping.values()) != list(range(len(mapping))):
        problems.append(f"indices are not 0..{len(mapping) - 1}, each once")
    first = next(iter(mapping), None)
    if mapping.get("background") != 0 or first != "background":
        problems.append(f"the first class must be 'background' with index 0 (found {first!r})")
    return problems


def read_label2idx(root: str | os.PathLike) -> dict[str, int]:
    """DATA/label2idx.json as a dict; an :class:`InputError` says what is wrong with it."""
    path = Path(root) / LABEL2IDX
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: missing (expected a JSON object class name -> index, background = 0)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    problems = label2idx_problems(mapping)
    if problems:
        raise InputError(f"{path}: {'; '.join(problems)}")
    return mapping


def class_names(root: str | os.PathLike) -> tuple[str, ...]:
    """The data root's classes in index order (background first): the semantic network's classes."""
    mapping = read_label2idx(root)
    return tuple(sorted(mapping, key=mapping.__getitem__))


def describe_classes(names: Sequence[str], shown: int = 8) -> str:
    """``N classes [a, b, ...]`` for messages: the count and the first ``shown`` names."""
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return f"{len(names)} classes [{', '.join(names[:shown])}{more}]"


def class_list_mismatch(have: str, names: Sequence[str], want: str, others: Sequence[str]) -> str | None:
    """Why two class lists differ, naming both (None when they are equal): ``have`` and ``want``
    describe their owners, e.g. "checkpoint X" and "data D's label2idx.json"."""
    names, others = tuple(names), tuple(others)
    if names == others:
        return None
    first = next((i for i, (a, b) in enumerate(zip(names, others)) if a != b), None)
    where = "" if first is None else f" (class {first} is {names[first]!r} in one, {others[first]!r} in the other)"
    return f"{have} has {describe_classes(names)} but {want} has {describe_classes(others)}{where}"
