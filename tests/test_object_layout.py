"""AVSBench-object's release layout (S4 and MS3 folders, binary masks, files named by the video and
numbered from 1) behind the same data set interface: written by ``aavs data synth --layout
avsbench-object``, checked by ``aavs data check`` (a missing frame and an unreadable mask named by
path), read frame for frame as the AVSBench-semantic layout reads the same synthetic videos, and
trained through ``experiments/s4.yaml`` with a ``--set`` to it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aavs.datasets.avsbench import read_class_map, read_frames
from aavs.datasets.check import check_data_root
from aavs.datasets.layout import ObjectVideoRecord, select_videos
from aavs.datasets.synth import write_synthetic_avsbench
from aavs.orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def object_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_avsbench(
        tmp_path_factory.mktemp("object") / "data", videos_per_split=2, seed=0, layout="avsbench-object"
    )


def test_the_object_layout_reads_as_the_semantic_layout_of_the_same_videos(object_root, synth_root):
    assert check_data_root(object_root) == []
    s4, ms3 = select_videos(object_root, "s4", "train"), select_videos(object_root, "ms3", "val")
    assert [r.uid for r in s4] == [r.uid for r in select_videos(synth_root, "s4", "train")]
    assert all(isinstance(r, ObjectVideoRecord) for r in s4 + ms3) and s4[0].annotated_frames == (0,)
    assert s4[0].frame_path(object_root, 0).name == "syn-v1s-train-0000_1.png"
    assert (
        ms3[0].frame_path(object_root, 4)
        == object_root / "Multi-sources/ms3_data/visual_frames/syn-v1m-val-0000.mp4_5.png"
    )
    semantic = {r.uid: r for r in select_videos(synth_root, "ms3", "val")}
    for record in ms3:
        frames = range(record.num_frames)
        ours, theirs = (
            read_frames(object_root, record, 64, frames),
            read_frames(synth_root, semantic[record.uid], 64, frames),
        )
        assert np.array_equal(ours, theirs)  # PNG of the same pixels the JPEG decodes to
        truth = read_class_map(object_root, record, frames)
        assert np.array_equal(truth, read_class_map(synth_root, semantic[record.uid], frames) > 0)
    with pytest.raises(Exception, match="avsbench-semantic"):
        write_synthetic_avsbench(object_root.parent / "x", layout="avsbench-objects")


def test_data_check_names_what_is_wrong_in_the_object_layout(object_root, tmp_path, capsys):
    import shutil

    root = Path(shutil.copytree(object_root, tmp_path / "data"))
    record = select_videos(root, "ms3", "test")[0]
    record.frame_path(root, 2).unlink()
    record.mask_path(root, 1).write_bytes(b"not a png")
    assert main(["data", "check", str(root), "--json"]) == 2
    problems = {p["path"]: p["message"] for p in json.loads(capsys.readouterr().out)["problems"]}
    assert problems[str(record.frame_path(root, 2))] == "frame missing (v1m test needs 5 frames)"
    assert problems[str(record.mask_path(root, 1))].startswith("mask not readable as an image")
    assert len(problems) == 2


@pytest.mark.slow
def test_s4_yaml_trains_on_the_object_layout(object_root, tmp_path, one_torch_thread):
    overrides = {
        "data.root": str(object_root),
        "model.pretrained": "null",
        "model.preset": "tiny",
        "model.vggish": "null",
        "compute.gpus_per_worker": 0,
        "compute.loader_workers": 0,
        "stages.s4.epochs": 1,
    }
    args = [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]
    assert main(["run", str(REPO / "experiments" / "s4.yaml"), "--local", "--results", str(tmp_path), *args]) == 0
    best = json.loads((tmp_path / "s4" / "s4" / "best.json").read_text())
    assert best["data_root"] == str(object_root) and 0 <= best["test"]["miou"] <= 1
    rows = (tmp_path / "s4" / "s4" / "trials" / "t000" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["val/miou"] == pytest.approx(best["value"])
