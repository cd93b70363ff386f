"""The data and training-loop side of the recipe (docs/method.md §4):
five copies of frame 0 for v1s training videos, the reference's binary targets and loss-target size,
no optimiser step for all-empty v1m videos, and the order of the training videos."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aavs.datasets.avsbench import AVSBenchDataset, collate_videos
from aavs.datasets.errors import InputError
from aavs.datasets.layout import select_videos
from aavs.datasets.masks import read_colour, read_sounding
from aavs.datasets.transforms import normalize_frames
from aavs.models import build_model, phase_parameter_groups, set_phase
from aavs.models.modeling_aavs import resize_labels
from aavs.orchestrator.experiment.spec import apply_overrides, parse_spec
from aavs.orchestrator.experiment.trial_config import base_trial_config, trial_config
from aavs.orchestrator.recipe.accelerator import make_accelerator, release
from aavs.orchestrator.recipe.config import ComputeConfig, TrainConfig
from aavs.orchestrator.recipe.evaluation import training_frames
from aavs.orchestrator.recipe.train import _train_one_epoch, epoch_videos
from aavs.orchestrator.results import BestTrial

FIXTURE = Path(__file__).parent / "fixtures" / "opencv-mask"
SIZE = 64


def _per_second_embeddings(root: Path, task: str, split: str) -> dict[str, np.ndarray]:
    """Embeddings whose row t is the constant t: which second reaches an item is plain to see."""
    return {
        r.uid: np.repeat(np.arange(r.num_frames, dtype=np.float32)[:, None], 128, axis=1)
        for r in select_videos(root, task, split)
    }


def _data(root: Path, task: str, split: str, **kwargs) -> AVSBenchDataset:
    return AVSBenchDataset(
        root, task, split, image_size=SIZE, embeddings=_per_second_embeddings(root, task, split), **kwargs
    )


# ------------------------------------------------------------------------ 1. v1s: frame 0 five times
@pytest.mark.parametrize("task", ["s4", "avss-binary", "avss"])
def test_v1s_training_video_is_frame_zero_five_times_with_seconds_zero_to_four(synth_root, task):
    prior = "ground-truth" if task == "avss" else None
    data = _data(synth_root, task, "train", training=True, prior=prior)
    index = next(i for i, r in enumerate(data.records) if r.subset == "v1s")
    record, item = data.records[index], data[index]
    frame0 = normalize_frames([Image.open(record.frame_path(synth_root, 0))], SIZE)[0]
    mask0 = read_colour(record.mask_path(synth_root, 0))
    label0 = torch.from_numpy(mask0 if task == "avss" else (mask0 != 0).astype(np.int64))
    assert item["pixel_values"].shape == (5, 3, SIZE, SIZE)
    for t in range(5):
        torch.testing.assert_close(item["pixel_values"][t], frame0)
        assert torch.equal(item["labels"][t], label0)
        assert torch.all(item["audio"][t] == t)  # copy t hears second t
        if prior:  # stage two trains with the true sounding mask: frame 0's, for every copy
            assert torch.equal(item["prior"][t], torch.from_numpy((mask0 != 0).astype(np.float32)))
    assert item["annotated"].all()
    batch, loss_frames = training_frames(collate_videos([item]), task)
    assert batch["pixel_values"].shape[0] == 5 and loss_frames.tolist() == [True] * 5  # all five reach the loss


def test_evaluation_sets_keep_every_file_frame(synth_root):
    record = select_videos(synth_root, "s4", "train")[0]
    item = _data(synth_root, "s4", "train")[0]  # not a training set: frames 0..4, only frame 0 labelled
    assert item["annotated"].tolist() == [True, False, False, False, False]
    frames = normalize_frames([Image.open(record.frame_path(synth_root, i)) for i in range(5)], SIZE)
    torch.testing.assert_close(item["pixel_values"], frames)
    val = _data(synth_root, "s4", "val", training=True)[0]  # v1s val is annotated everywhere: no copies
    val_record = select_videos(synth_root, "s4", "val")[0]
    frames = normalize_frames([Image.open(val_record.frame_path(synth_root, i)) for i in range(5)], SIZE)
    torch.testing.assert_close(val["pixel_values"], frames)
    assert val["annotated"].all()


# -------------------------------------------------------------- 2. binary targets, loss-target size
def test_binary_target_is_opencvs_bilinear_grey_threshold():
    """The fixture's target was written by OpenCV itself (fixtures/opencv-mask/README.md)."""
    target = read_sounding(FIXTURE / "mask.png")
    expected = np.asarray(Image.open(FIXTURE / "opencv-target.png")) > 0
    assert target.shape == (224, 224) and target.dtype == bool
    assert np.array_equal(target, expected)
    nearest = read_colour(FIXTURE / "mask.png") != 0
    assert (target >= nearest).all() and target.sum() > nearest.sum()  # a slight dilation
    # PIL's bilinear filter antialiases when it shrinks (300 -> 224 here): not the reference's target.
    pil = (
        np.asarray(Image.open(FIXTURE / "mask.png").convert("RGB").resize((224, 224), Image.BILINEAR).convert("L")) > 0
    )
    assert not np.array_equal(pil, target)


def test_binary_training_labels_use_the_reference_target_and_metrics_the_nearest_mask(synth_copy):
    record = select_videos(synth_copy, "ms3", "train")[0]
    Image.open(FIXTURE / "mask.png").save(record.mask_path(synth_copy, 2))
    train = _data(synth_copy, "ms3", "train", training=True)[0]
    assert np.array_equal(train["labels"][2].numpy(), read_sounding(FIXTURE / "mask.png"))
    evaluation = _data(synth_copy, "ms3", "train")[0]
    assert np.array_equal(evaluation["labels"][2].numpy(), read_colour(FIXTURE / "mask.png") != 0)
    # a mask already 224 x 224: both agree (no resize, no dilation)
    assert torch.equal(train["labels"][0], evaluation["labels"][0])


@pytest.mark.parametrize("size", [384, 128, 64])
def test_labels_are_resized_as_pils_nearest(size):
    labels = torch.from_numpy(np.random.default_rng(size).integers(0, 71, (2, 224, 224)))
    expected = np.stack(
        [
            np.asarray(Image.fromarray(m.astype(np.int32), mode="I").resize((size, size), Image.NEAREST))
            for m in labels.numpy()
        ]
    )
    assert np.array_equal(resize_labels(labels, size).numpy(), expected)


def test_loss_targets_have_the_input_size(monkeypatch, one_torch_thread):
    model = build_model("s4", preset="tiny")
    size = model.config.image_size
    seen = {}
    original = model.model.get_loss_dict

    def spy(**kwargs):
        seen["shapes"] = [tuple(m.shape[-2:]) for m in kwargs["mask_labels"]]
        return original(**kwargs)

    monkeypatch.setattr(model.model, "get_loss_dict", spy)
    labels = torch.zeros(2, 224, 224, dtype=torch.long)
    labels[:, 50:120, 60:150] = 1
    out = model(torch.randn(2, 3, size, size), torch.randn(2, 128), labels=labels)
    assert torch.isfinite(out.loss)
    assert seen["shapes"] == [(size, size), (size, size)]


# ------------------------------------------------------------------ 3. all-empty videos: no step
def _batch(subsets: list[str], empty: list[bool]) -> dict:
    labels = torch.stack(
        [torch.zeros(5, 8, 8, dtype=torch.long) if e else torch.ones(5, 8, 8, dtype=torch.long) for e in empty]
    )
    n = 5 * len(subsets)
    return {
        "pixel_values": torch.zeros(n, 3, 4, 4),
        "labels": labels.flatten(0, 1),
        "class_map": labels.flatten(0, 1),
        "annotated": torch.ones(n, dtype=torch.bool),
        "audio": torch.zeros(n, 128),
        "uids": [f"u{i}" for i in range(len(subsets))],
        "subsets": subsets,
        "frames_per_video": [5] * len(subsets),
    }


@pytest.mark.parametrize(
    "task, subset, dropped",
    [
        ("ms3", "v1m", True),
        ("avss-binary", "v1m", True),
        ("avss-binary", "v2", False),
        ("avss-binary", "v1s", False),
        ("s4", "v1s", False),
        ("avss", "v1m", False),
    ],
)
def test_which_all_empty_videos_leave_the_loss(task, subset, dropped):
    batch, loss_frames = training_frames(_batch([subset, subset], [True, False]), task)
    assert batch["pixel_values"].shape[0] == (5 if dropped else 10) and loss_frames.all()  # the other video stays
    batch, loss_frames = training_frames(_batch([subset], [True]), task)
    assert loss_frames.tolist() == ([False] if dropped else [True] * 5)


def test_a_temporal_network_keeps_every_frame_and_the_loss_only_the_counted_ones():
    batch = _batch(["v1m", "v2"], [True, False])  # an all-empty v1m video (left out of ms3's loss) and a v2 one
    batch["annotated"][5 + 3] = False
    kept, loss_frames = training_frames(batch, "avss-binary", temporal=True)
    assert kept["pixel_values"].shape[0] == 10 and kept["frames_per_video"] == [5, 5]
    assert loss_frames.tolist() == [False] * 5 + [True, True, True, False, True]
    dropped, loss_frames = training_frames(batch, "avss-binary")
    assert dropped["pixel_values"].shape[0] == 4 and dropped["frames_per_video"] == [0, 4] and loss_frames.all()


def _blank_masks(root: Path, record) -> None:
    for i in record.annotated_frames:
        Image.new("RGB", (224, 224)).save(record.mask_path(root, i))


def _snapshot(model, optimizer) -> tuple[dict, dict]:
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state = {
        id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in optimizer.state.items()
    }
    return params, state


def _same(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    params_equal = a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    states_equal = a[1].keys() == b[1].keys() and all(
        a[1][p].keys() == b[1][p].keys()
        and all(torch.equal(torch.as_tensor(a[1][p][k]), torch.as_tensor(b[1][p][k])) for k in a[1][p])
        for p in a[1]
    )
    return params_equal and states_equal


def test_all_empty_ms3_video_makes_no_optimizer_step(synth_copy, tmp_path, one_torch_thread):
    records = select_videos(synth_copy, "ms3", "train")
    _blank_masks(synth_copy, records[0])
    cfg = TrainConfig(
        task="ms3",
        data_root=str(synth_copy),
        trial_dir=str(tmp_path),
        compute=ComputeConfig(gpus_per_worker=0, loader_workers=0),
    )
    torch.manual_seed(0)
    model = build_model("ms3", preset="tiny")
    set_phase(model, "A")
    optimizer = torch.optim.AdamW(
        phase_parameter_groups(model, "A", lr=1e-3, weight_decay=0.05), lr=1e-3, weight_decay=0.05
    )
    accelerator = make_accelerator(cfg.compute, cfg.grad_accum, cfg.grad_clip, cfg.batch_size)
    model, optimizer = accelerator.prepare(model, optimizer)
    data = AVSBenchDataset(synth_copy, "ms3", "train", image_size=model.config.image_size, training=True)
    empty, sounding = torch.utils.data.Subset(data, [0]), torch.utils.data.Subset(data, [1])
    try:
        _train_one_epoch(cfg, model, optimizer, accelerator, sounding, 0, 1, 0)  # AdamW state exists now
        before = _snapshot(model, optimizer.optimizer)
        stats = _train_one_epoch(cfg, model, optimizer, accelerator, empty, 1, 1, 0)
        assert stats["train/loss"] == 0.0 and stats["train/skipped_steps"] == 1.0
        assert _same(before, _snapshot(model, optimizer.optimizer))  # weights, moments, step count
        stats = _train_one_epoch(cfg, model, optimizer, accelerator, sounding, 2, 1, 0)
        assert stats["train/skipped_steps"] == 0.0
        assert not _same(before, _snapshot(model, optimizer.optimizer))
    finally:
        release(accelerator)


# --------------------------------------------------------------------------- 4. video order
def _interleave_metadata(root: Path) -> None:
    """Rewrite metadata.csv with the subsets' rows interleaved (v2, v1m, v1s, v2, ...)."""
    path = root / "metadata.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    by_subset = {s: [r for r in rows if r["label"] == s] for s in ("v2", "v1m", "v1s")}
    mixed = [r for group in zip(*by_subset.values()) for r in group]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(mixed)
    path.write_text(buf.getvalue(), encoding="utf-8")


def test_stage_two_epoch_runs_v1s_then_v1m_then_v2_in_file_order(synth_copy, tmp_path):
    _interleave_metadata(synth_copy)
    records = select_videos(synth_copy, "avss", "train")
    rows = list(csv.DictReader(io.StringIO((synth_copy / "metadata.csv").read_text(encoding="utf-8"))))
    in_file = [r["uid"] for s in ("v1s", "v1m", "v2") for r in rows if r["label"] == s and r["split"] == "train"]
    assert [r.uid for r in records] == in_file and [r.subset for r in records][::2] == ["v1s", "v1m", "v2"]
    cfg = TrainConfig(task="avss", data_root=str(synth_copy), trial_dir=str(tmp_path))
    assert cfg.shuffle is False
    for epoch in (0, 1):
        assert epoch_videos(cfg, records, epoch, 1, 0) == list(range(len(records)))
    shares = [epoch_videos(cfg, records, 0, 2, rank) for rank in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3, 5]]  # each worker keeps the order; steps walk it together
    capped = TrainConfig(task="avss", data_root=str(synth_copy), trial_dir=str(tmp_path), max_videos=3)
    assert epoch_videos(capped, records, 0, 1, 0) == [0, 1, 2]


def test_stage_one_epochs_are_shuffled_by_seed_and_epoch(synth_root, tmp_path):
    records = select_videos(synth_root, "avss-binary", "train")
    cfg = TrainConfig(task="avss-binary", data_root=str(synth_root), trial_dir=str(tmp_path))
    assert cfg.shuffle is True
    orders = [epoch_videos(cfg, records, epoch, 1, 0) for epoch in (0, 1)]
    assert sorted(orders[0]) == list(range(len(records)))
    assert orders[0] != list(range(len(records))) and orders[0] != orders[1]
    assert epoch_videos(cfg, records, 0, 1, 0) == orders[0]  # the same on resume
    explicit = TrainConfig(task="avss", data_root=str(synth_root), trial_dir=str(tmp_path), shuffle=True)
    assert epoch_videos(explicit, records, 0, 1, 0) == orders[0]


def test_shuffle_is_a_stage_option_of_the_experiment_file(tmp_path):
    raw = {
        "name": "x",
        "data": {"synthetic": {"videos_per_split": 2}},
        "model": {"preset": "tiny"},
        "stages": [
            {"name": "localize", "task": "avss-binary"},
            {"name": "semantic", "task": "avss", "prior": "localize", "shuffle": True},
        ],
    }
    spec = parse_spec(raw, "x.yaml")
    assert [s.shuffle for s in spec.stages] == [True, True]  # stage one's task default, stage two's as written
    bests = {
        "localize": BestTrial(
            stage="localize",
            trial_id="t000",
            metric="val/miou",
            mode="max",
            value=0.5,
            checkpoint=str(tmp_path / "best"),
            checkpoint_sha256="0" * 64,
            params={},
            data_root=str(tmp_path / "data"),
            masks=str(tmp_path / "masks"),
        )
    }
    shuffles = []
    for stage in spec.stages:
        base = base_trial_config(spec, stage, tmp_path / "data", tmp_path / "cache", bests)
        config = trial_config(base, tmp_path / stage.name, {"trial": "t000"})
        shuffles.append([TrainConfig.load(config).shuffle])
    assert shuffles == [[True], [True]]
    with pytest.raises(InputError, match=r"x.yaml: stages.1.shuffle: expected true or false, got 'no'"):
        parse_spec(apply_overrides(raw, ["stages.1.shuffle='no'"], "x.yaml"), "x.yaml")
    with pytest.raises(InputError, match="training config: shuffle: expected true or false, got 1"):
        TrainConfig.load({"task": "avss", "data_root": "d", "trial_dir": "t", "shuffle": 1})
