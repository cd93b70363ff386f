"""AVSBenchDataset, collate_videos and the mask files, against independent reads of the files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from aavs.datasets import audio_features
from aavs.datasets import avsbench as avsbench_module
from aavs.datasets.audio_features import align_to_frames, embed_clip
from aavs.datasets.avsbench import AVSBenchDataset, collate_videos
from aavs.datasets.errors import InputError
from aavs.datasets.layout import VideoRecord, select_videos
from aavs.datasets.masks import read_binary_masks, read_class_masks, write_binary_masks, write_class_masks
from aavs.datasets.palette import decode_colour_mask
from aavs.datasets.transforms import normalize_frames
from aavs.models.vggish import random_vggish

SIZE = 64


def _true_class_map(root, record):
    out = np.zeros((record.num_frames, 224, 224), dtype=np.int64)
    for i in record.annotated_frames:
        out[i] = decode_colour_mask(np.asarray(Image.open(record.mask_path(root, i)).convert("RGB")))
    return out


@pytest.fixture(scope="module")
def avss_train(synth_root):
    return AVSBenchDataset(synth_root, "avss", "train", image_size=SIZE, prior="ground-truth")


def test_item_matches_the_files(synth_root, avss_train):
    assert [r.uid for r in avss_train.records] == [r.uid for r in select_videos(synth_root, "avss", "train")]
    model = random_vggish().eval()
    for index, record in enumerate(avss_train.records):
        item = avss_train[index]
        T = record.num_frames
        assert item["uid"] == record.uid and item["subset"] == record.subset
        assert item["pixel_values"].shape == (T, 3, SIZE, SIZE) and item["pixel_values"].dtype == torch.float32
        frames = [Image.open(record.frame_path(synth_root, i)) for i in range(T)]
        torch.testing.assert_close(item["pixel_values"], normalize_frames(frames, SIZE))
        class_map = _true_class_map(synth_root, record)
        assert item["class_map"].dtype == torch.int64 and np.array_equal(item["class_map"].numpy(), class_map)
        assert torch.equal(item["labels"], item["class_map"])  # avss: the classes themselves
        assert item["annotated"].tolist() == [i in record.annotated_frames for i in range(T)]
        assert torch.equal(item["prior"], torch.from_numpy((class_map != 0).astype(np.float32)))
        audio = align_to_frames(embed_clip(record.audio_path(synth_root), model), T)
        assert item["audio"].shape == (T, 128) and item["audio"].dtype == torch.float32
        np.testing.assert_allclose(item["audio"].numpy(), audio, rtol=1e-5, atol=1e-5)
    v1s = next(i for i, r in enumerate(avss_train.records) if r.subset == "v1s")
    item = avss_train[v1s]
    assert item["annotated"].tolist() == [True, False, False, False, False]
    assert item["class_map"][0].any() and not item["class_map"][1:].any()  # unannotated frames are 0


def test_binary_task_labels(synth_root):
    data = AVSBenchDataset(synth_root, "ms3", "test", image_size=SIZE)
    assert len(data) == 2 and {r.subset for r in data.records} == {"v1m"}
    item = data[0]
    assert "prior" not in item
    assert torch.equal(item["labels"], (item["class_map"] != 0).long())
    assert item["class_map"].max() > 1  # the class map keeps the classes


def test_collate_concatenates_frames(avss_train):
    items = [avss_train[i] for i in range(len(avss_train))]
    batch = collate_videos(items)
    n = sum(r.num_frames for r in avss_train.records)
    assert batch["pixel_values"].shape == (n, 3, SIZE, SIZE)
    for key, shape in (
        ("class_map", (n, 224, 224)),
        ("labels", (n, 224, 224)),
        ("prior", (n, 224, 224)),
        ("annotated", (n,)),
        ("audio", (n, 128)),
    ):
        assert batch[key].shape == shape, key
    assert batch["frames_per_video"] == [r.num_frames for r in avss_train.records]
    assert batch["uids"] == [r.uid for r in avss_train.records]
    assert batch["subsets"] == [r.subset for r in avss_train.records]
    assert torch.equal(batch["audio"][5:10], items[1]["audio"])


def test_dataloader_workers_and_uncached_reads_agree(synth_root, avss_train):
    uncached = pickle.loads(
        pickle.dumps(AVSBenchDataset(synth_root, "avss", "train", image_size=SIZE, prior="ground-truth", cache_mb=0))
    )
    assert not uncached.in_memory and avss_train.in_memory
    loader = lambda data, workers: torch.utils.data.DataLoader(  # noqa: E731
        data, batch_size=2, num_workers=workers, collate_fn=collate_videos
    )
    for a, b in zip(loader(avss_train, 0), loader(uncached, 2)):
        assert a["uids"] == b["uids"]
        for key in ("pixel_values", "class_map", "labels", "annotated", "audio", "prior"):
            assert torch.equal(a[key], b[key]), key


def test_precomputed_embeddings_are_aligned(synth_root, monkeypatch):
    def no_vggish(*args, **kwargs):
        raise AssertionError("VGGish must not run when embeddings are given")

    monkeypatch.setattr(avsbench_module, "embed_videos", no_vggish)
    records = select_videos(synth_root, "s4", "val")
    short = {r.uid: np.arange(3 * 128, dtype=np.float32).reshape(3, 128) + k for k, r in enumerate(records)}
    data = AVSBenchDataset(synth_root, "s4", "val", image_size=SIZE, embeddings=short)
    np.testing.assert_array_equal(data[1]["audio"].numpy(), short[records[1].uid][[0, 1, 2, 2, 2]])
    with pytest.raises(InputError, match=rf"{records[1].uid}/audio.wav: no audio embedding"):
        AVSBenchDataset(synth_root, "s4", "val", image_size=SIZE, embeddings={records[0].uid: short[records[0].uid]})


def test_prior_from_a_masks_folder(synth_root, tmp_path):
    records = select_videos(synth_root, "avss", "val")
    for record in records:
        write_binary_masks(tmp_path, record, _true_class_map(synth_root, record) != 0)
    data = AVSBenchDataset(synth_root, "avss", "val", image_size=SIZE, prior=tmp_path)
    for index in range(len(data)):
        item = data[index]
        assert item["prior"].dtype == torch.float32
        assert torch.equal(item["prior"], (item["class_map"] != 0).float())
    (tmp_path / records[1].subset / records[1].uid / "3.png").unlink()
    (tmp_path / records[2].subset / records[2].uid / "0.png").unlink()
    with pytest.raises(InputError, match=rf"{records[1].uid}/3.png: prior mask missing"):
        AVSBenchDataset(synth_root, "avss", "val", image_size=SIZE, prior=tmp_path)
    with pytest.raises(InputError, match="prior mask folder missing"):
        AVSBenchDataset(synth_root, "avss", "val", image_size=SIZE, prior=tmp_path / "nope")


def test_bad_mask_colour_is_an_input_error(synth_copy):
    record = select_videos(synth_copy, "s4", "test")[0]
    path = record.mask_path(synth_copy, 2)
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[0, 0] = (255, 255, 255)
    Image.fromarray(rgb).save(path)
    with pytest.raises(
        InputError, match=r"2\.png: colour \(255, 255, 255\) \(1 pixels\) is not in the AVSBench palette"
    ):
        AVSBenchDataset(synth_copy, "s4", "test", image_size=SIZE)


# ------------------------------------------------------------------------------------------ masks
def test_mask_files_round_trip(tmp_path):
    record = VideoRecord("vid", "v1m", "test")
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 71, size=(5, 224, 224))
    write_class_masks(tmp_path / "c", record, classes)
    np.testing.assert_array_equal(read_class_masks(tmp_path / "c", record), classes)
    np.testing.assert_array_equal(read_class_masks(tmp_path / "c", record, frames=[4, 1]), classes[[4, 1]])
    binary = classes > 35
    write_binary_masks(tmp_path / "b", record, binary)
    with Image.open(tmp_path / "b" / "v1m" / "vid" / "0.png") as image:
        assert image.mode == "L" and set(np.unique(np.asarray(image))) == {0, 255}
    prior = read_binary_masks(tmp_path / "b", record)
    assert prior.dtype == np.float32 and np.array_equal(prior, binary.astype(np.float32))
    assert sorted(p.name for p in (tmp_path / "b" / "v1m" / "vid").iterdir()) == [f"{i}.png" for i in range(5)]
    with pytest.raises(ValueError, match="expected 5 masks"):
        write_binary_masks(tmp_path / "b", record, binary[:3])


def test_binary_masks_are_resized_bilinearly_as_soft_maps(tmp_path):
    record = VideoRecord("vid", "v1s", "test")
    folder = tmp_path / "v1s" / "vid"
    folder.mkdir(parents=True)
    half = np.zeros((112, 112), dtype=np.uint8)
    half[:, :56] = 255
    for i in range(5):
        Image.fromarray(half if i else np.full((112, 112), 128, np.uint8)).save(folder / f"{i}.png")
    prior = read_binary_masks(tmp_path, record)  # [5, 224, 224]
    assert prior.shape == (5, 224, 224)
    np.testing.assert_allclose(prior[0], 128 / 255, atol=1e-6)
    assert (prior[1, :, :100] == 1).all() and (prior[1, :, 124:] == 0).all()
    edge = prior[1, 0, 100:124]
    assert ((edge > 0) & (edge < 1)).sum() >= 2 and np.all(np.diff(edge) <= 0)
    hard = read_binary_masks(tmp_path, record, frames=[1], resample="nearest")
    assert set(np.unique(hard)) == {0.0, 1.0}
    (folder / "3.png").unlink()
    with pytest.raises(InputError, match=r"vid/3\.png: mask file missing"):
        read_binary_masks(tmp_path, record)


def test_dataset_rejects_bad_task_and_empty_split(synth_copy):
    with pytest.raises(InputError, match="unknown task"):
        AVSBenchDataset(synth_copy, "nope", "test")
    lines = (synth_copy / "metadata.csv").read_text().splitlines()
    (synth_copy / "metadata.csv").write_text("\n".join(line for line in lines if ",test,v1s" not in line) + "\n")
    with pytest.raises(InputError, match=r"metadata.csv: no s4 videos in split 'test'"):
        AVSBenchDataset(synth_copy, "s4", "test")


def test_embeddings_are_computed_once_through_the_cache(synth_root, monkeypatch, tmp_path):
    calls = []
    real = audio_features.embed_clip
    monkeypatch.setattr(audio_features, "embed_clip", lambda p, m: calls.append(p) or real(p, m))
    first = AVSBenchDataset(synth_root, "s4", "test", image_size=SIZE, cache_dir=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.rglob("*.npy"))) == 2
    second = AVSBenchDataset(synth_root, "s4", "test", image_size=SIZE, cache_dir=tmp_path)
    assert len(calls) == 2 and torch.equal(first[1]["audio"], second[1]["audio"])
