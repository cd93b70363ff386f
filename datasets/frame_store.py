"""A split's decoded frames and labels, written once into memory-mapped files and read from there.

Decoding a JPEG and resizing it with PIL costs milliseconds per frame, every epoch; a GPU training at
~1,000 frames/s would wait for it (docs/scale.md). The store decodes each distinct file frame of a
split once, exactly as :mod:`aavs.datasets.avsbench` reads it (same functions, same resize), into
fixed-size uint8 rows:

    <store dir>/<key>/frames.u8      [rows, S, S, 3]   RGB at the network's input size S
    <store dir>/<key>/class_map.u8   [rows, 224, 224]  class indices (0 where a frame has no mask)
    <store dir>/<key>/sounding.u8    [rows, 224, 224]  the reference's binary targets (binary training sets)
    <store dir>/<key>/store.json     shapes and the rows of each video: written last, the store is
                                     complete when it is there

A video's rows are its distinct source frames (:func:`~aavs.datasets.avsbench.source_frames`), in
order; videos follow the split's order. An item reads the span of rows it needs with one ``pread``
per array (a video's rows are contiguous): the bytes are the ones decoding gives, so what reaches the
model does not change. One read of a few MB rather than a gather from a memory map matters on a cold
disk: the map faults its pages in one readahead window at a time (290 MB/s on this project's VM for
random videos, against 750 MB/s with ``pread``; docs/scale.md).

The key covers the store's format, the size, the training mode and, per video, its uid, subset,
frames and the (path, size, modification time) of each file read: a changed or replaced file gives a
new store (not a content hash: hashing every JPEG of AVSBench would cost as much as decoding it).

Writing is resumable and shared: one process of a node writes (an exclusive ``flock`` on
``.<key>.lock``; trials and ranks that want the same store wait for it), into ``.<key>.partial/``
with its progress saved every :data:`FLUSH_VIDEOS` videos, so a killed build continues where it
stopped; the finished folder is renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from aavs.datasets.atomic import FS, durable_tree, make_dirs, write_json
from aavs.datasets.errors import InputError
from aavs.datasets.files import aavs_cache
from aavs.datasets.layout import VideoRecord
from aavs.datasets.progress import track
from aavs.datasets.transforms import MASK_SIZE

log = logging.getLogger(__name__)

STORE_VERSION = "frame-store-v1"  # part of every key: bump it when a row's content changes
STORE_JSON = "store.json"
PROGRESS_JSON = "progress.json"
FLUSH_VIDEOS = 256  # a killed build loses at most this many videos' decoding

# The arrays of a store: file name suffix and the shape of one row (S: the image size).
ARRAYS = ("frames", "class_map", "sounding")

# One video's distinct frames, decoded: {"frames": [U, S, S, 3], "class_map": [U, 224, 224], ...}.
Decode = Callable[[VideoRecord, Sequence[int]], dict[str, np.ndarray]]


def default_store_dir() -> Path:
    """``frames/`` of ``$AAVS_CACHE_DIR`` (default ~/.cache/aavs): a node's own disk, shared by every
    experiment on the same data (the key tells stores apart), never the results storage, which may be
    a network filesystem where memory-mapped reads are slow."""
    return aavs_cache("frames")


def row_shape(name: str, image_size: int) -> tuple[int, ...]:
    return (image_size, image_size, 3) if name == "frames" else (MASK_SIZE, MASK_SIZE)


def distinct(frames: Sequence[int]) -> list[int]:
    """The distinct file frames of an item list, in order of first use."""
    return list(dict.fromkeys(frames))


def store_key(
    root: Path, records: Sequence[VideoRecord], frames: Sequence[Sequence[int]], image_size: int, names: Sequence[str]
) -> str:
    """sha256 over what the rows depend on (module docstring); ``frames[i]``: video i's source frames."""
    digest = hashlib.sha256(json.dumps([STORE_VERSION, image_size, list(names)]).encode())
    for record, used in zip(records, frames, strict=True):
        files = [record.frame_path(root, i) for i in distinct(used)]
        files += [record.mask_path(root, i) for i in distinct(used) if i in record.annotated_frames]
        stats = []
        for path in files:
            try:
                st = path.stat()
                stats.append((str(path), st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                stats.append((str(path), -1, -1))  # decoding will name it
        digest.update(json.dumps([record.uid, record.subset, list(used), stats]).encode())
    return digest.hexdigest()[:24]


@dataclass
class FrameStore:
    """An opened store: ``arrays(i, frames)`` gives video i's items. Picklable; each process (a
    DataLoader worker) maps the files itself on first use."""

    folder: Path
    image_size: int
    names: tuple[str, ...]
    starts: list[int]  # first row of each video
    distinct_frames: list[list[int]]  # each video's distinct source frames, in row order
    _files: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # name -> fd

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_files"} | {"_files": {}}

    @property
    def rows(self) -> int:
        return self.starts[-1] + len(self.distinct_frames[-1]) if self.starts else 0

    def nbytes(self) -> int:
        return sum(self.rows * int(np.prod(row_shape(n, self.image_size))) for n in self.names)

    def __del__(self) -> None:
        for fd in self._files.values():
            os.close(fd)

    def _fd(self, name: str) -> int:
        """The array's file, opened once per process (a file descriptor is not shared across a pickle)."""
        if name not in self._files:
            self._files[name] = os.open(self.folder / f"{name}.u8", os.O_RDONLY)
        return self._files[name]

    def arrays(self, index: int, frames: Sequence[int]) -> dict[str, np.ndarray]:
        """Video ``index``'s items for its source ``frames``: each array ``[len(frames), ...]``, read
        with one ``pread`` per array of the rows from the first to the last wanted, ``sounding`` as bool."""
        position = {f: self.starts[index] + k for k, f in enumerate(self.distinct_frames[index])}
        rows = [position[f] for f in frames]
        first, span = min(rows), max(rows) - min(rows) + 1
        out = {}
        for name in self.names:
            shape = row_shape(name, self.image_size)
            block = np.empty((span, *shape), np.uint8)
            row_bytes = block[0].nbytes
            if os.preadv(self._fd(name), [block.data], first * row_bytes) != block.nbytes:
                raise OSError(f"{self.folder / name}.u8: rows {first}..{first + span} past the end (a truncated store)")
            in_order = rows == list(range(first, first + span))  # the common case: no gather
            out[name] = block if in_order else block[[r - first for r in rows]]
        if "sounding" in out:
            out["sounding"] = out["sounding"].view(bool)
        return out


class _Videos(Dataset):
    """Video i's distinct frames decoded, for the DataLoader workers that fill a store."""

    def __init__(self, records: Sequence[VideoRecord], frames: Sequence[Sequence[int]], decode: Decode) -> None:
        self.records, self.frames, self.decode = records, frames, decode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.decode(self.records[i], distinct(self.frames[i]))


def open_frame_store(
    base: Path,
    root: Path,
    records: Sequence[VideoRecord],
    frames: Sequence[Sequence[int]],
    image_size: int,
    names: Sequence[str],
    decode: Decode,
    workers: int = 0,
    label: str = "",
) -> FrameStore:
    """The store of these videos under ``base``, written first if missing (``decode`` in ``workers``
    processes); ``frames[i]``: video i's source frames; ``names``: which of :data:`ARRAYS` to keep."""
    names = tuple(n for n in ARRAYS if n in names)
    key = store_key(root, records, frames, image_size, names)
    done = base / key
    store = FrameStore(done, image_size, names, _starts(frames), [distinct(f) for f in frames])
    if (done / STORE_JSON).is_file():
        return store
    make_dirs(base)
    _check_space(base, store.nbytes())
    with _exclusive(base / f".{key}.lock"):
        if not (done / STORE_JSON).is_file():  # another process may have written it meanwhile
            _build(store, base / f".{key}.partial", records, frames, decode, workers, label)
    return store


def _check_space(base: Path, needed: int) -> None:
    """Refuse a store the disk cannot hold: writes into a memory map on a full disk kill the process
    (SIGBUS) instead of raising. A partial store already there counts as written."""
    partial = sum(p.stat().st_blocks * 512 for p in base.glob(".*.partial/*.u8"))
    free = shutil.disk_usage(base).free
    if needed - partial > free:
        raise InputError(
            f"{base}: the frame store needs {needed / 1e9:.1f} GB and the disk has {free / 1e9:.1f} GB free "
            "(free some space, point $AAVS_CACHE_DIR at a larger disk, or set compute.frame_store: false "
            "to decode every frame each epoch)"
        )


def _starts(frames: Sequence[Sequence[int]]) -> list[int]:
    counts = [len(distinct(f)) for f in frames]
    return [int(s) for s in np.concatenate([[0], np.cumsum(counts)[:-1]])] if counts else []


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(
    store: FrameStore,
    partial: Path,
    records: Sequence[VideoRecord],
    frames: Sequence[Sequence[int]],
    decode: Decode,
    workers: int,
    label: str,
) -> None:
    partial.mkdir(exist_ok=True)
    progress = partial / PROGRESS_JSON
    first = json.loads(progress.read_text())["videos"] if progress.is_file() else 0
    maps = {
        name: np.memmap(
            partial / f"{name}.u8",
            np.uint8,
            "r+" if first else "w+",
            shape=(store.rows, *row_shape(name, store.image_size)),
        )
        for name in store.names
    }
    log.info(
        "%s: writing the frame store %s (%.1f GB, %d videos%s)",
        label or "data",
        store.folder,
        store.nbytes() / 1e9,
        len(records) - first,
        f", continuing after {first}" if first else "",
    )
    loader = DataLoader(
        torch.utils.data.Subset(_Videos(records, frames, decode), range(first, len(records))),
        batch_size=None,
        num_workers=workers,
    )
    index = first
    for decoded in track(loader, f"frame store {label}".strip(), total=len(records) - first):
        start = store.starts[index]
        for name, array in maps.items():
            rows = np.asarray(decoded[name])
            array[start : start + len(rows)] = rows.view(np.uint8) if rows.dtype == bool else rows
        index += 1
        if index % FLUSH_VIDEOS == 0 and index < len(records):
            _flush(maps, progress, index)
    for array in maps.values():
        array.flush()
    del maps
    progress.unlink(missing_ok=True)
    write_json(
        partial / STORE_JSON,
        {"version": STORE_VERSION, "image_size": store.image_size, "arrays": list(store.names), "rows": store.rows},
    )
    durable_tree(partial)
    FS.rename(partial, store.folder)
    FS.fsync(store.folder.parent)


def _flush(maps: dict[str, np.memmap], progress: Path, videos: int) -> None:
    """The rows written so far on disk, then the count that says so."""
    for array in maps.values():
        array.flush()
    write_json(progress, {"videos": videos})
