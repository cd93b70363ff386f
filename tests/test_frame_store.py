"""The frame store (aavs.datasets.frame_store): items read from it are the items decoding gives, it is
written once and rewritten when a file changes, and a killed build continues where it stopped."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from aavs.datasets import frame_store
from aavs.datasets.avsbench import AVSBenchDataset, collate_videos, decode_video, source_frames
from aavs.datasets.errors import InputError
from aavs.datasets.layout import select_videos
from aavs.orchestrator.recipe.evaluation import model_inputs

SIZE = 64


def _embeddings(root: Path, task: str) -> dict[str, np.ndarray]:
    return {r.uid: np.zeros((r.num_frames, 128), np.float32) for r in select_videos(root, task, "train")}


def _items(data: AVSBenchDataset) -> list[dict]:
    return [data[i] for i in range(len(data))]


@pytest.mark.parametrize("task", ["avss", "s4"])
def test_items_from_the_store_are_the_decoded_items(synth_root, tmp_path, task):
    """AVSS training (v1s: frame 0 five times, one stored row) and S4 training (the reference's
    binary targets as a third array), with the stage-two prior: every tensor equal."""
    common = dict(image_size=SIZE, prior="ground-truth", training=True, cache_mb=0)
    decoded = AVSBenchDataset(synth_root, task, "train", embeddings=_embeddings(synth_root, task), **common)
    stored = AVSBenchDataset(
        synth_root, task, "train", embeddings=_embeddings(synth_root, task), frame_store=tmp_path, **common
    )
    assert decoded.frame_store is None and stored.frame_store is not None
    distinct_rows = sum(len(set(source_frames(r, True))) for r in stored.records)
    assert stored.frame_store.rows == distinct_rows
    names = ("frames", "class_map", "sounding") if task == "s4" else ("frames", "class_map")
    assert sorted(p.name for p in stored.frame_store.folder.iterdir()) == sorted(
        [*(f"{n}.u8" for n in names), "store.json"]
    )
    assert (stored.frame_store.folder / "frames.u8").stat().st_size == distinct_rows * SIZE * SIZE * 3
    for a, b in zip(_items(decoded), _items(stored), strict=True):
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), key
            else:
                assert value == b[key], key


@pytest.mark.parametrize("task", ["avss", "s4"])
def test_compact_items_reach_the_network_as_the_full_ones(synth_root, tmp_path, task):
    """What the training loop feeds (compact items from the store: uint8 frames, masks and prior,
    converted by model_inputs and the loop on the accelerator) equals the full items, bit for bit."""
    common = dict(image_size=SIZE, prior="ground-truth", training=True, cache_mb=0)
    full = AVSBenchDataset(synth_root, task, "train", embeddings=_embeddings(synth_root, task), **common)
    compact = AVSBenchDataset(
        synth_root,
        task,
        "train",
        embeddings=_embeddings(synth_root, task),
        frame_store=tmp_path,
        compact=True,
        **common,
    )
    for i in range(len(full)):
        a, b = collate_videos([full[i]]), collate_videos([compact[i]])
        assert b["pixel_values"].dtype == b["labels"].dtype == b["prior"].dtype == torch.uint8
        x, y = model_inputs(a, "cpu", torch.float32), model_inputs(b, "cpu", torch.float32)
        for key in ("pixel_values", "audio", "prior"):
            assert x[key].dtype == torch.float32 and torch.equal(x[key], y[key]), key
        assert torch.equal(a["labels"], b["labels"].long()) and torch.equal(a["class_map"], b["class_map"].long())


def test_written_once_and_again_for_a_changed_frame(synth_copy, tmp_path):
    kwargs = dict(image_size=SIZE, training=False, cache_mb=0, frame_store=tmp_path / "store")
    first = AVSBenchDataset(synth_copy, "s4", "train", embeddings=_embeddings(synth_copy, "s4"), **kwargs)
    written = (first.frame_store.folder / "store.json").stat().st_mtime_ns
    again = AVSBenchDataset(synth_copy, "s4", "train", embeddings=_embeddings(synth_copy, "s4"), **kwargs)
    assert again.frame_store.folder == first.frame_store.folder
    assert (again.frame_store.folder / "store.json").stat().st_mtime_ns == written

    record = first.records[1]
    path = record.frame_path(synth_copy, 2)
    Image.new("RGB", (40, 30), (250, 10, 10)).save(path)  # another picture under the same name
    changed = AVSBenchDataset(synth_copy, "s4", "train", embeddings=_embeddings(synth_copy, "s4"), **kwargs)
    assert changed.frame_store.folder != first.frame_store.folder
    fresh = AVSBenchDataset(
        synth_copy, "s4", "train", embeddings=_embeddings(synth_copy, "s4"), image_size=SIZE, cache_mb=0
    )
    assert torch.equal(changed[1]["pixel_values"], fresh[1]["pixel_values"])
    assert not torch.equal(changed[1]["pixel_values"], first[1]["pixel_values"])


def test_a_killed_build_continues_after_its_last_flush(synth_root, tmp_path, monkeypatch):
    records = select_videos(synth_root, "avss", "train")  # 6 videos: 2 each of v1s, v1m, v2
    frames = [source_frames(r, False) for r in records]
    monkeypatch.setattr(frame_store, "FLUSH_VIDEOS", 2)
    decoded: list[str] = []

    def decode(record, used):
        if record.uid == records[3].uid and not decoded_after_kill:
            raise KeyboardInterrupt  # the process is stopped while video 3 decodes
        decoded.append(record.uid)
        return decode_video(synth_root, SIZE, False, record, used)

    decoded_after_kill = False
    args = (tmp_path, synth_root, records, frames, SIZE, ["frames", "class_map"], decode)
    with pytest.raises(KeyboardInterrupt):
        frame_store.open_frame_store(*args)
    assert not any(p.is_dir() and not p.name.startswith(".") for p in tmp_path.iterdir())  # nothing final yet
    decoded.clear()
    decoded_after_kill = True
    store = frame_store.open_frame_store(*args)
    assert decoded == [r.uid for r in records[2:]]  # videos 0 and 1 were flushed before the stop
    assert not list(tmp_path.glob(".*.partial"))
    for i, record in enumerate(records):
        want = decode_video(synth_root, SIZE, False, record, frames[i])
        got = store.arrays(i, frames[i])
        assert all(np.array_equal(want[k], got[k]) for k in want), record.uid


def test_the_store_pickles_without_its_maps(synth_root, tmp_path):
    """DataLoader workers get the store by pickling (spawn) and open the files themselves."""
    import pickle

    data = AVSBenchDataset(
        synth_root,
        "ms3",
        "train",
        image_size=SIZE,
        cache_mb=0,
        frame_store=tmp_path,
        embeddings=_embeddings(synth_root, "ms3"),
    )
    data[0]  # maps the files in this process
    copy = pickle.loads(pickle.dumps(data))
    assert copy.frame_store._files == {}
    assert torch.equal(copy[1]["pixel_values"], data[1]["pixel_values"])


def test_a_store_the_disk_cannot_hold_is_refused_before_writing(synth_root, tmp_path, monkeypatch):
    monkeypatch.setattr(frame_store.shutil, "disk_usage", lambda path: SimpleNamespace(free=5000))
    with pytest.raises(InputError, match=r"needs 0\.0 GB and the disk has 0\.0 GB free .*compute.frame_store: false"):
        AVSBenchDataset(
            synth_root,
            "s4",
            "train",
            image_size=SIZE,
            cache_mb=0,
            frame_store=tmp_path,
            embeddings=_embeddings(synth_root, "s4"),
        )
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written
