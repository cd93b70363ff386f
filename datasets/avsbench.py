"""The AVSBench data set for training and evaluation: frames, masks, audio embeddings and priors.

One item is one video (all its frames): stage one and two both train on whole clips, with frame t
seeing second t's VGGish embedding. :func:`collate_videos` concatenates the frames of a batch of
videos into one frame batch. A training set (``training=True``) builds its items as the reference's
training loader does: see :func:`source_frames` and :func:`read_sounding_maps`.

Loading is cheap: audio embeddings are computed (or read from the disk cache) once at construction;
when the split's resized frames, masks and priors fit in ``cache_mb`` they are decoded once at
construction as well; otherwise, given a ``frame_store`` folder, the frames and labels are decoded once
into a memory-mapped store there (:mod:`aavs.datasets.frame_store`, the same bytes) and each item
gathers its rows; without one, each item decodes its files. The object is picklable, so DataLoader
workers (fork or spawn) work.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from aavs.datasets.audio_features import align_to_frames, embed_videos
from aavs.datasets.errors import InputError
from aavs.datasets.frame_store import FrameStore, open_frame_store
from aavs.datasets.layout import VideoRecord, select_videos
from aavs.datasets.masks import first_missing, read_binary_masks, read_sounding, read_truth
from aavs.datasets.progress import track
from aavs.datasets.tasks import get_task
from aavs.datasets.transforms import MASK_SIZE, normalize_resized, resize_frame

log = logging.getLogger(__name__)

GROUND_TRUTH = "ground-truth"
DEFAULT_CACHE_MB = 1024.0


def source_frames(record: VideoRecord, training: bool) -> tuple[int, ...]:
    """The file frame behind each of the video's ``T`` items (item t is paired with second t's audio).

    For training, a video whose only mask is frame 0's (the v1s training split: S4, and the v1s part of
    both AVSS stages) is frame 0 ``T`` times, every copy labelled with frame 0's mask: the reference
    trains on these five image-audio pairs (docs/method.md §4).
    Otherwise item t is frame t.
    """
    if training and record.annotated_frames == (0,):
        return (0,) * record.num_frames
    return tuple(range(record.num_frames))


def _read_each(frames: Sequence[int], read: Callable[[int], np.ndarray]) -> np.ndarray:
    """``read(i)`` for each of ``frames``, stacked; a file that several items show is read once."""
    decoded = {i: read(i) for i in dict.fromkeys(frames)}
    return np.stack([decoded[i] for i in frames])


def read_frames(root: Path, record: VideoRecord, size: int, frames: Sequence[int]) -> np.ndarray:
    """uint8 ``[len(frames), size, size, 3]``: the given frames, RGB, resized (PIL bilinear)."""

    def read(i: int) -> np.ndarray:
        path = record.frame_path(root, i)
        try:
            with Image.open(path) as image:
                return resize_frame(image, size)
        except FileNotFoundError:
            raise InputError(f"{path}: frame missing") from None
        except OSError as err:
            raise InputError(f"{path}: frame not readable ({err})") from None

    return _read_each(frames, read)


def read_class_map(root: Path, record: VideoRecord, frames: Sequence[int]) -> np.ndarray:
    """uint8 ``[len(frames), 224, 224]`` class indices (nearest resize), 0 on frames without a mask."""

    def read(i: int) -> np.ndarray:
        if i not in record.annotated_frames:
            return np.zeros((MASK_SIZE, MASK_SIZE), dtype=np.uint8)
        return read_truth(root, record, i).astype(np.uint8)

    return _read_each(frames, read)


def read_sounding_maps(root: Path, record: VideoRecord, frames: Sequence[int]) -> np.ndarray:
    """bool ``[len(frames), 224, 224]``: the reference's binary training targets (S4, MS3, stage one),
    built by :func:`~aavs.datasets.masks.read_sounding` (bilinear, grey, > 0); False without a mask."""

    def read(i: int) -> np.ndarray:
        if i not in record.annotated_frames:
            return np.zeros((MASK_SIZE, MASK_SIZE), dtype=bool)
        return read_sounding(record.mask_path(root, i))

    return _read_each(frames, read)


def decode_video(
    root: Path, image_size: int, with_sounding: bool, record: VideoRecord, frames: Sequence[int]
) -> dict[str, np.ndarray]:
    """The files behind one video's items ``frames``: frames uint8 ``[T, S, S, 3]``, class map uint8,
    and with ``with_sounding`` the reference's binary targets bool (binary training sets)."""
    arrays = {
        "frames": read_frames(root, record, image_size, frames),
        "class_map": read_class_map(root, record, frames),
    }
    if with_sounding:
        arrays["sounding"] = read_sounding_maps(root, record, frames)
    return arrays


class AVSBenchDataset(Dataset):
    """Videos of ``task`` in ``split`` under ``root``; see the module docstring.

    ``prior``: None, ``"ground-truth"`` (the true sounding mask, stage-two training; all-zero on
    unannotated frames) or a folder of stage one's masks ``<prior>/<subset>/<uid>/<i>.png``.
    ``embeddings``: optional precomputed ``{uid: [n_seconds, 128]}``, otherwise VGGish (``vggish``
    weights, ``vggish_pca`` parameters, random init without) through the disk cache ``cache_dir``.
    ``cache_mb``: memory budget for decoding the whole split once (0 disables it).
    ``frame_store``: where a split that does not fit ``cache_mb`` keeps its decoded frames and labels
    (written once, by ``store_workers`` processes); None: each item decodes its files.
    ``training``: items as the reference's training loader builds them, for the loss: frame 0 repeated
    in videos annotated only there (:func:`source_frames`) and, for binary tasks, ``labels`` from
    :func:`read_sounding_maps`. Evaluation sets (the default) keep every file frame and the
    nearest-neighbour masks the AVSBench metrics are defined on.
    ``compact``: items in the dtypes they are stored in, converted after the copy to the accelerator
    (:func:`~aavs.orchestrator.recipe.evaluation.model_inputs`, the training loop, the evaluation):
    ``pixel_values`` the resized uint8 ``[T, S, S, 3]`` (normalised there), ``class_map``, ``labels`` and
    a ground-truth ``prior`` uint8. A third of the bytes through the loader's processes, the pinned copy and the bus,
    and a loader worker's main cost (normalising) off the CPU (docs/scale.md); the same values. Otherwise
    pixels float32 ``[T, 3, S, S]`` normalised here, class map and labels int64, prior float32.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        task: str,
        split: str,
        image_size: int = 384,
        prior: str | os.PathLike | None = None,
        vggish: str | os.PathLike | None = None,
        vggish_pca: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        embeddings: dict[str, np.ndarray] | None = None,
        cache_mb: float = DEFAULT_CACHE_MB,
        training: bool = False,
        frame_store: str | os.PathLike | None = None,
        store_workers: int = 0,
        compact: bool = False,
    ) -> None:
        self.root = Path(root)
        self.task, self.split, self.image_size, self.training = task, split, int(image_size), training
        self.compact = compact
        self.records = select_videos(self.root, task, split)
        if not self.records:
            raise InputError(f"{self.root / 'metadata.csv'}: no {task} videos in split {split!r}")
        self.binary = get_task(task).binary
        self.reference_targets = self.binary and training
        self.prior = self._check_prior(prior)
        if embeddings is None:
            embeddings = embed_videos(
                self.root, self.records, vggish=vggish, vggish_pca=vggish_pca, cache_dir=cache_dir
            )
        self.audio = self._align_audio(embeddings)
        self._cache: list[dict[str, np.ndarray]] | None = None
        self._store: FrameStore | None = None
        if self._bytes_needed() <= cache_mb * 2**20:
            self._cache = self._load_all()
        elif frame_store is not None:
            self._store = open_frame_store(
                Path(frame_store),
                self.root,
                self.records,
                [source_frames(r, training) for r in self.records],
                self.image_size,
                ["frames", "class_map", *(["sounding"] if self.reference_targets else [])],
                functools.partial(decode_video, self.root, self.image_size, self.reference_targets),
                workers=store_workers,
                label=f"{task}/{split}",
            )

    @property
    def in_memory(self) -> bool:
        """Whether the split was decoded into memory at construction (it fits in ``cache_mb``)."""
        return self._cache is not None

    def _check_prior(self, prior: str | os.PathLike | None) -> str | Path | None:
        if prior is None or prior == GROUND_TRUTH:
            return prior
        folder = Path(prior)
        if not folder.is_dir():
            raise InputError(f"{folder}: prior mask folder missing (expected <subset>/<uid>/<i>.png from stage one)")
        missing = first_missing(folder, self.records)
        if missing is not None:
            raise InputError(
                f"{missing}: prior mask missing (the prior folder must hold every frame of every "
                f"{self.task}/{self.split} video)"
            )
        return folder

    def _align_audio(self, embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        aligned = {}
        for record in self.records:
            embedding = embeddings.get(record.uid)
            if embedding is None or len(embedding) == 0:
                raise InputError(f"{record.audio_path(self.root)}: no audio embedding for video {record.uid}")
            aligned[record.uid] = align_to_frames(np.asarray(embedding), record.num_frames)  # [T, 128]
        return aligned

    def _bytes_needed(self) -> int:
        per_frame = (
            self.image_size**2 * 3
            + MASK_SIZE**2 * (2 if self.reference_targets else 1)
            + (MASK_SIZE**2 * 4 if isinstance(self.prior, Path) else 0)
        )
        return per_frame * sum(r.num_frames for r in self.records)

    @property
    def frame_store(self) -> FrameStore | None:
        """The memory-mapped store the items are read from, if any."""
        return self._store

    def _load_all(self) -> list[dict[str, np.ndarray]]:
        label = f"decoding {self.task}/{self.split}"
        arrays = [self._load_arrays(i) for i in track(range(len(self.records)), label)]
        log.debug("%s/%s: %d videos decoded into memory", self.task, self.split, len(self.records))
        return arrays

    def _load_arrays(self, index: int) -> dict[str, np.ndarray]:
        """The decoded files of video ``index``, per item: frames uint8, class map uint8, the reference's
        binary targets bool (binary training sets), prior float32 (from a folder)."""
        record = self.records[index]
        frames = source_frames(record, self.training)
        if self._store is not None:
            arrays = self._store.arrays(index, frames)
        else:
            arrays = decode_video(self.root, self.image_size, self.reference_targets, record, frames)
        if isinstance(self.prior, Path):
            arrays["prior"] = read_binary_masks(self.prior, record, frames)
        return arrays

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        arrays = self._cache[index] if self._cache is not None else self._load_arrays(index)
        class_map = torch.from_numpy(arrays["class_map"])  # uint8 [T, 224, 224]
        if not self.compact:
            class_map = class_map.long()
        annotated = torch.tensor([i in record.annotated_frames for i in source_frames(record, self.training)])
        frames = arrays["frames"]  # uint8 [T, S, S, 3]
        item = {
            "pixel_values": torch.from_numpy(frames) if self.compact else normalize_resized(frames),
            "class_map": class_map,
            "labels": self._labels(arrays, class_map),
            "annotated": annotated,  # [T]
            "audio": torch.from_numpy(self.audio[record.uid].copy()),  # [T, 128]
            "uid": record.uid,
            "subset": record.subset,
        }
        if self.prior == GROUND_TRUTH:
            item["prior"] = (class_map != 0).to(torch.uint8 if self.compact else torch.float32)  # [T, 224, 224]
        elif self.prior is not None:  # a soft map in [0, 1]
            item["prior"] = torch.from_numpy(np.array(arrays["prior"], dtype=np.float32))  # [T, 224, 224]
        return item

    def _labels(self, arrays: dict[str, np.ndarray], class_map: torch.Tensor) -> torch.Tensor:
        """``[T, 224, 224]`` (int64, or uint8 when ``compact``): the class map (AVSS), or sounding = 1
        (binary tasks)."""
        dtype = torch.uint8 if self.compact else torch.int64
        if self.reference_targets:
            return torch.from_numpy(arrays["sounding"]).to(dtype)
        return (class_map != 0).to(dtype) if self.binary else class_map


FRAME_KEYS = (  # per-frame tensors of a batch: [N, ...], N the frames of all its videos
    "pixel_values",
    "class_map",
    "labels",
    "annotated",
    "audio",
    "prior",
)


def collate_videos(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Videos -> one batch of all their frames ``[N, ...]`` plus uids, subsets and frames per video."""
    out: dict[str, Any] = {key: torch.cat([item[key] for item in batch]) for key in FRAME_KEYS if key in batch[0]}
    out["uids"] = [item["uid"] for item in batch]
    out["subsets"] = [item["subset"] for item in batch]
    out["frames_per_video"] = [int(item["annotated"].shape[0]) for item in batch]
    return out
