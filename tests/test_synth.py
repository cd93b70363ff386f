"""The synthetic AVSBench: layout, determinism, what is labelled, and that the audio tells classes apart."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile
from PIL import Image

from aavs.datasets.audio_features import align_to_frames, embed_videos
from aavs.datasets.check import check_data_root
from aavs.datasets.layout import read_label2idx, read_metadata
from aavs.datasets.masks import read_colour
from aavs.datasets.synth import SYNTH_CLASSES, class_index, write_synthetic_avsbench

SYNTH_INDICES = {class_index(c.name): c for c in SYNTH_CLASSES}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = _files(write_synthetic_avsbench(tmp_path / "a", videos_per_split=1, seed=7))
    b = _files(write_synthetic_avsbench(tmp_path / "b", videos_per_split=1, seed=7))
    c = _files(write_synthetic_avsbench(tmp_path / "c", videos_per_split=1, seed=8))
    assert a == b and len(a) > 9 * 10
    assert a.keys() == c.keys() and a["v2/syn-v2-test-0000/audio.wav"] != c["v2/syn-v2-test-0000/audio.wav"]


def test_rewrite_replaces_the_folder_atomically(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    write_synthetic_avsbench(out, videos_per_split=1, seed=0)
    assert not (out / "stale.txt").exists() and (out / "metadata.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folders left


def test_synthetic_set_is_clean_and_complete(synth_root):
    assert check_data_root(synth_root) == []
    labels = read_label2idx(synth_root)  # its own classes: background and the eight sound sources
    assert labels == {"background": 0, **{c.name: i for i, c in enumerate(SYNTH_CLASSES, 1)}}
    assert list(labels) == ["background", "violin", "dog", "piano", "car", "bird", "drum", "trumpet", "man"]
    records = read_metadata(synth_root)
    assert {(r.subset, r.split) for r in records} == {
        (s, p) for s in ("v1s", "v1m", "v2") for p in ("train", "val", "test")
    }
    for r in records:
        frames = sorted(p.name for p in (r.video_dir(synth_root) / "frames").iterdir())
        masks = sorted(p.name for p in (r.video_dir(synth_root) / "labels_rgb").iterdir())
        assert frames == [f"{i}.jpg" for i in range(r.num_frames)]
        assert masks == [f"{i}.png" for i in r.annotated_frames]
        with Image.open(r.frame_path(synth_root, 0)) as frame, Image.open(r.mask_path(synth_root, 0)) as mask:
            assert frame.format == "JPEG" and frame.size == (224, 224)
            assert mask.format == "PNG" and mask.mode == "RGB" and mask.size == (224, 224)
        info = soundfile.info(str(r.audio_path(synth_root)))
        assert (info.samplerate, info.channels, info.duration) == (16000, 1, float(r.num_frames))


def _frame_classes(rgb: np.ndarray) -> set[int]:
    """Synthetic classes whose colour covers a sizeable area of a frame."""
    dist = {i: np.abs(rgb.astype(int) - c.colour).sum(-1) for i, c in SYNTH_INDICES.items()}
    return {i for i, d in dist.items() if (d < 45).sum() > 300}


def test_labels_are_the_audible_visible_objects(synth_root):
    with open(synth_root / "metadata.csv", newline="") as f:
        a_obj = {row["uid"]: set(filter(None, row["a_obj"].split(","))) for row in csv.DictReader(f)}
    silent_frames = multi_frames = 0
    for r in read_metadata(synth_root):
        labelled_per_frame = []
        for i in r.annotated_frames:
            class_map = read_colour(r.mask_path(synth_root, i))
            frame = np.asarray(Image.open(r.frame_path(synth_root, i)).convert("RGB"))
            labelled = set(np.unique(class_map).tolist()) - {0}
            visible = _frame_classes(frame)
            assert len(visible) >= 2, f"{r.uid} frame {i} shows fewer than two objects"
            assert labelled <= visible <= set(SYNTH_INDICES)
            for c in labelled:  # the labelled pixels are the object's pixels
                colour = np.asarray(SYNTH_INDICES[c].colour)
                assert np.abs(frame[class_map == c].astype(int) - colour).sum(-1).mean() < 40
            labelled_per_frame.append(labelled)
            silent_frames += not labelled
            multi_frames += len(labelled) >= 2
        if r.subset == "v1s":
            assert len(set().union(*labelled_per_frame)) <= 1  # one source
        if r.subset == "v1s" and r.split == "train":
            assert labelled_per_frame[0], "the only labelled frame of a v1s training video is silent"
        if len(r.annotated_frames) == r.num_frames:
            names = {SYNTH_INDICES[c].name for c in set().union(*labelled_per_frame)}
            assert names == a_obj[r.uid]
    assert silent_frames > 0 and multi_frames > 0


def test_random_vggish_separates_the_classes(synth_root):
    """Nearest class centroid of single-source (or silent) seconds, leaving each video out in turn."""
    records = read_metadata(synth_root)
    embeddings = embed_videos(synth_root, records)
    xs, ys, videos = [], [], []
    for v, r in enumerate(records):
        audio = align_to_frames(embeddings[r.uid], r.num_frames)
        for i in r.annotated_frames:
            labelled = set(np.unique(read_colour(r.mask_path(synth_root, i))).tolist()) - {0}
            if len(labelled) <= 1:
                xs.append(audio[i])
                ys.append(min(labelled, default=0))
                videos.append(v)
    xs, ys, videos = np.stack(xs), np.array(ys), np.array(videos)
    correct = total = 0
    for v in np.unique(videos):
        train, test = videos != v, videos == v
        classes = [c for c in np.unique(ys[test]) if (ys[train] == c).any()]
        if not classes:
            continue
        known = np.unique(ys[train])
        centroids = np.stack([xs[train][ys[train] == c].mean(0) for c in known])
        held = test & np.isin(ys, classes)
        pred = known[((xs[held][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
        correct += (pred == ys[held]).sum()
        total += held.sum()
    assert total >= 40 and len(np.unique(ys)) >= 6
    assert correct / total >= 0.9, f"nearest-centroid accuracy {correct / total:.2f}"


def test_videos_per_split_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="videos_per_split"):
        write_synthetic_avsbench(tmp_path / "x", videos_per_split=0)
    with pytest.raises(ValueError, match="eval_videos_per_split must be >= 1, got 0"):
        write_synthetic_avsbench(tmp_path / "x", videos_per_split=1, eval_videos_per_split=0)


def test_val_and_test_can_be_smaller_and_keep_their_videos(tmp_path):
    same = _files(write_synthetic_avsbench(tmp_path / "same", videos_per_split=2, seed=3))
    small = _files(write_synthetic_avsbench(tmp_path / "small", videos_per_split=2, seed=3, eval_videos_per_split=1))
    rows = read_metadata(tmp_path / "small")
    counts = {(r.subset, r.split): sum(1 for o in rows if (o.subset, o.split) == (r.subset, r.split)) for r in rows}
    assert counts == {(s, p): 2 if p == "train" else 1 for s in ("v1s", "v1m", "v2") for p in ("train", "val", "test")}
    assert {k for k in small if k != "metadata.csv"} < set(same)  # video k is the same video in both
    assert all(small[k] == same[k] for k in small if k != "metadata.csv")
