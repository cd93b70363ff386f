"""``results/<name>/report/`` of a real tiny run (the session's ``tiny_run`` of conftest.py, which
``aavs run`` reported at the end of each stage), and ``aavs report`` on copies of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_leaderboard import copy_results, make_unfinished, read

from aavs.datasets.avsbench import read_class_map, read_frames
from aavs.datasets.layout import VideoRecord, class_names
from aavs.datasets.masks import read_binary_masks
from aavs.datasets.palette import encode_class_map, palette
from aavs.orchestrator.cli import main
from aavs.orchestrator.views import figures

CELL, HEADER = 224, 28


def picture(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def cell(grid: np.ndarray, row: int, column: int) -> np.ndarray:
    top = HEADER + row * CELL
    return grid[top : top + CELL, column * CELL : (column + 1) * CELL]


def test_pictures_exist_open_and_have_the_expected_size(tiny_results: Path):
    expected = {
        "localize": {"curves.png": (800, 450), "samples.png": (3 * CELL, 4 * CELL + HEADER)},
        "semantic": {
            "curves.png": (800, 450),
            "per_class.png": (1000, 450),
            "samples.png": (4 * CELL, 4 * CELL + HEADER),
        },
    }  # + stage one's prior column
    for stage, files in expected.items():
        folder = tiny_results / "report" / stage
        assert sorted(p.name for p in folder.glob("*.png")) == sorted(files)
        for name, size in files.items():
            with Image.open(folder / name) as image:
                image.load()
                assert (image.format, image.size) == ("PNG", size)
            assert picture(folder / name).std() > 0  # something was drawn


def test_per_class_scores_are_those_of_the_best_checkpoint_on_test(tiny_results: Path):
    best = read(tiny_results / "semantic" / "best.json")
    found = read(tiny_results / "report" / "semantic" / "predictions.json")
    assert found["checkpoint_sha256"] == best["checkpoint_sha256"]
    iou, fscore = np.asarray(found["per_class"]["iou"]), np.asarray(found["per_class"]["fscore"])
    # One score per class of the data's label2idx.json (the synthetic set's 9), named as it names them.
    assert found["per_class"]["classes"] == list(class_names(tiny_results / "data"))
    assert iou.shape == fscore.shape == (9,)
    # Averaged over the 9 classes they are exactly the stage's test mIoU and F-score.
    assert iou.mean() == pytest.approx(best["test"]["miou"], abs=1e-12)
    assert fscore.mean() == pytest.approx(best["test"]["fscore"], abs=1e-12)
    assert found["per_class"]["present"][0] and sum(found["per_class"]["present"]) > 1
    assert read(tiny_results / "report" / "localize" / "predictions.json")["per_class"] is None  # binary stage


def test_sample_grid_shows_frame_truth_prediction_and_prior(tiny_results: Path):
    data = tiny_results / "data"
    colours = {tuple(c) for c in palette(9)}  # the synthetic data's classes only
    prior = read(tiny_results / "localize" / "best.json")["masks"]
    for stage in ("localize", "semantic"):
        grid = picture(tiny_results / "report" / stage / "samples.png")
        samples = read(tiny_results / "report" / stage / "predictions.json")["samples"]
        assert len(samples) == 4 and len({s["uid"] for s in samples}) == 4
        for row, sample in enumerate(samples):
            record = VideoRecord(sample["uid"], sample["subset"], "val")
            truth = read_class_map(data, record, [sample["frame"]])[0]
            if stage == "localize":
                expected = np.repeat((255 * (truth > 0)).astype(np.uint8)[..., None], 3, axis=-1)
            else:
                expected = encode_class_map(truth)
            # Pixel for pixel, the ground truth in the palette's colours (white on black when binary).
            assert (cell(grid, row, 1) == expected).all(axis=-1).mean() > 0.995
            assert (truth > 0).any()  # the frame shown is one with something labelled
            frame = read_frames(data, record, CELL, [sample["frame"]])[0]
            lower = slice(CELL // 2, None)  # below the label drawn into the frame's corner
            assert np.abs(cell(grid, row, 0)[lower].astype(int) - frame[lower]).mean() < 2
            predicted = {tuple(c) for c in cell(grid, row, 2).reshape(-1, 3)}
            assert predicted <= (colours if stage == "semantic" else {(0, 0, 0), (255, 255, 255)})
            if stage == "semantic":
                mask = read_binary_masks(prior, record, [sample["frame"]])[0]
                grey = np.repeat((255 * mask).round().astype(np.uint8)[..., None], 3, axis=-1)
                assert (cell(grid, row, 3) == grey).all(axis=-1).mean() > 0.995


def test_aavs_report_computes_predictions_once_per_checkpoint(tiny_results: Path, tmp_path: Path, monkeypatch):
    copy = copy_results(tiny_results, tmp_path)
    (copy / "report" / "semantic" / "samples.png").unlink()
    old_curves = (copy / "report" / "localize" / "curves.png").stat().st_mtime_ns
    calls = []
    predict = figures.stage_predictions

    def counted(*args):
        calls.append(args[2])
        return predict(*args)

    monkeypatch.setattr(figures, "stage_predictions", counted)
    assert main(["report", str(copy)]) == 0
    assert calls == ["avss"]  # stage one's pictures were there for its checkpoint already
    assert (copy / "report" / "semantic" / "samples.png").is_file()
    assert (copy / "report" / "localize" / "curves.png").stat().st_mtime_ns != old_curves  # curves always redrawn
    assert main(["report", str(copy)]) == 0
    assert calls == ["avss"]


def test_report_of_a_run_with_failed_and_running_trials(tiny_results: Path, tmp_path: Path, monkeypatch):
    copy = make_unfinished(tiny_results, tmp_path)
    shutil.rmtree(copy / "report" / "semantic")
    monkeypatch.setattr(
        figures, "stage_predictions", lambda *args: pytest.fail("no new best checkpoint to predict with")
    )
    assert main(["report", str(copy)]) == 0
    assert sorted(p.name for p in (copy / "report" / "semantic").iterdir()) == ["curves.png"]  # no best yet
    with Image.open(copy / "report" / "semantic" / "curves.png") as image:
        assert image.size == (800, 450)
    curves = json.loads((copy / "report" / "localize" / "predictions.json").read_text())
    assert curves["checkpoint_sha256"] == read(copy / "localize" / "best.json")["checkpoint_sha256"]


def test_per_class_chart_names_and_colours_the_data_classes():
    classes = ["background", "violin", "dog", "piano"]
    per_class = {
        "classes": classes,
        "iou": [0.9, 0.2, 0.0, 0.6],
        "fscore": [0.9, 0.3, 0.0, 0.7],
        "present": [True, True, False, True],
    }
    (ax,) = figures.per_class_figure(per_class, "semantic t000").axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["background", "piano", "violin"]  # best first
    bars = [tuple(round(255 * v) for v in bar.get_facecolor()[:3]) for bar in ax.patches]
    assert bars == [tuple(int(v) for v in palette()[c]) for c in (0, 3, 1)]
    assert "over all 4 classes, 3 present" in ax.get_title()
