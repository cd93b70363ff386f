"""The task registry: a task's attributes, not its name, decide the videos, the labels, the metric,
the network and the training defaults; a new task is one entry."""

from __future__ import annotations

import pytest
import torch

from aavs.datasets.errors import InputError
from aavs.datasets.layout import FRAMES_PER_SUBSET, SUBSETS, select_videos
from aavs.datasets.metrics import BinaryMetric, SemanticMetric
from aavs.datasets.tasks import BINARY_CLASSES, MASK_EXPORT_TASK, TASKS, Task, get_task, same_kind, task_names
from aavs.models.configuration_aavs import task_labels
from aavs.orchestrator.recipe.evaluation import new_metric, training_frames


def test_the_four_tasks_as_the_method_defines_them():
    """docs/method.md §1 and §4."""
    assert task_names() == ("s4", "ms3", "avss-binary", "avss")
    assert [t.subsets for t in TASKS.values()] == [("v1s",), ("v1m",), SUBSETS, SUBSETS]
    assert [t.name for t in TASKS.values() if t.semantic] == ["avss"]
    assert [t.name for t in TASKS.values() if t.takes_prior] == ["avss"]
    avss, stage_one = get_task("avss"), get_task("avss-binary")
    assert (avss.shuffle, avss.adapter_warmup, avss.grad_clip) == (False, 1 / 3, None)
    assert (stage_one.shuffle, stage_one.adapter_warmup, stage_one.grad_clip) == (True, 0.5, 0.01)
    assert [t.name for t in TASKS.values() if t.skip_empty_subsets == ("v1m",)] == ["ms3", "avss-binary"]
    assert get_task(MASK_EXPORT_TASK).binary and set(get_task(MASK_EXPORT_TASK).subsets) == set(SUBSETS)
    for task in TASKS.values():
        assert set(task.subsets) <= set(FRAMES_PER_SUBSET) and set(task.skip_empty_subsets) <= set(task.subsets)


def test_user_commands_offer_the_standalone_tasks_and_evaluation_offers_all():
    from aavs.orchestrator.cli import build_parser

    assert task_names(standalone_only=True) == ("s4", "ms3", "avss")
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["model-info", "--preset", "tiny", "--task", "avss-binary"])
    assert parser.parse_args(["evaluate", "ckpt", "--data", "d", "--task", "avss-binary"]).task == "avss-binary"
    assert same_kind(semantic=False) == ("s4", "ms3", "avss-binary") and same_kind(semantic=True) == ("avss",)


def test_unknown_task_names_itself_and_the_known_ones(synth_root):
    for call in (lambda: get_task("seg"), lambda: select_videos(synth_root, "seg", "val"), lambda: task_labels("seg")):
        with pytest.raises(InputError, match=r"unknown task 'seg': expected one of s4, ms3, avss-binary, avss"):
            call()


@pytest.fixture
def v2_binary(monkeypatch):
    """A task that exists only here, to show that one entry is all a task needs."""
    task = Task(
        "v2-binary",
        ("v2",),
        semantic=False,
        takes_prior=False,
        description="v2 only, binary",
        skip_empty_subsets=("v2",),
        shuffle=False,
    )
    monkeypatch.setitem(TASKS, task.name, task)
    return task


def test_a_new_task_is_one_entry(v2_binary, synth_root):
    videos = select_videos(synth_root, "v2-binary", "train")
    assert videos and {v.subset for v in videos} == {"v2"}
    assert isinstance(new_metric("v2-binary", 2), BinaryMetric)
    assert task_labels("v2-binary", ["background", "dog"]) == dict(enumerate(BINARY_CLASSES))
    assert "v2-binary" in task_names() and "v2-binary" in same_kind(semantic=False)

    from aavs.models.presets import task_sizes

    assert task_sizes("v2-binary", "tiny")["num_queries"] == task_sizes("s4", "tiny")["num_queries"]


def test_labels_metric_and_skipped_videos_follow_the_attributes(v2_binary):
    assert isinstance(new_metric("avss", 5), SemanticMetric) and isinstance(new_metric("ms3", 5), BinaryMetric)
    assert task_labels("avss", ["background", "dog"]) == {0: "background", 1: "dog"}
    # One all-empty video of each subset: each task leaves out its own skip_empty_subsets.
    batch = {
        "frames_per_video": [2, 2],
        "subsets": ["v1m", "v2"],
        "annotated": torch.ones(4, dtype=torch.bool),
        "labels": torch.zeros(4, 3, 3, dtype=torch.long),
        "pixel_values": torch.zeros(4, 3, 2, 2),
    }
    for task, kept in (("s4", 4), ("ms3", 2), ("v2-binary", 2)):
        out, loss_frames = training_frames(batch, task)
        assert len(loss_frames) == kept, task
    out, _ = training_frames(batch, "ms3")
    assert len(out["pixel_values"]) == 2
