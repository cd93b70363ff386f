"""``results/<name>/report/`` of a real tiny run (the session's ``tiny_run`` of conftest.py) and
``aavs report`` on copies of it. The report draws what each stage's test evaluation left in
``<stage>/test/`` (aavs.orchestrator.recipe.test_outputs) and runs no network itself."""

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
from aavs.models import registry
from aavs.orchestrator import results
from aavs.orchestrator.cli import main
from aavs.orchestrator.recipe.test_outputs import evaluate_test_split
from aavs.orchestrator.views import figures

CELL, HEADER = 224, 28
STAGES = {"localize": "avss-binary", "semantic": "avss"}


def picture(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def cell(grid: np.ndarray, row: int, column: int) -> np.ndarray:
    top = HEADER + row * CELL
    return grid[top : top + CELL, column * CELL : (column + 1) * CELL]


def run_test_evaluations(results_dir: Path, cache: Path) -> dict[str, dict[str, float]]:
    """Each stage's test evaluation as the driver runs it (the best checkpoint; stage two with stage
    one's masks as its prior), writing ``<stage>/test/``; its metrics per stage."""
    model = results.require_spec(results_dir).spec["model"]
    found = {}
    for stage, task in STAGES.items():
        best = results.read_best(results_dir / stage)
        prior = results.read_best(results_dir / "localize").masks if stage == "semantic" else None
        found[stage] = evaluate_test_split(
            best.checkpoint,
            best.checkpoint_sha256,
            best.data_root,
            task,
            results.stage_test_dir(results_dir / stage),
            prior=prior,
            vggish=model.get("vggish"),
            vggish_pca=model.get("vggish_pca"),
            cache_dir=cache,
        )
    return found


@pytest.fixture(scope="module")
def evaluated(tiny_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the tiny run whose stages' test evaluations ran here, then ``aavs report`` (on a fresh
    report folder); and the metrics those evaluations returned."""
    copy = copy_results(tiny_run[0], tmp_path_factory.mktemp("evaluated"))
    shutil.rmtree(copy / results.REPORT_DIR, ignore_errors=True)
    metrics = run_test_evaluations(copy, tiny_run[0] / results.CACHE_DIR)
    assert main(["report", str(copy)]) == 0
    return copy, metrics


@pytest.fixture
def reported(evaluated: tuple[Path, dict]) -> Path:
    return evaluated[0]


def test_the_test_evaluation_gives_best_json_test_metrics(tiny_results: Path, evaluated: tuple[Path, dict]):
    for stage in STAGES:
        test = read(tiny_results / stage / "best.json")["test"]
        assert evaluated[1][stage] == pytest.approx(test, abs=1e-9)  # one pass: the stage's test metrics


def test_pictures_exist_open_and_have_the_expected_size(reported: Path):
    expected = {
        "localize": {"curves.png": (800, 450), "samples.png": (3 * CELL, 4 * CELL + HEADER)},
        "semantic": {
            "curves.png": (800, 450),
            "per_class.png": (1000, 450),
            "samples.png": (4 * CELL, 4 * CELL + HEADER),
        },
    }  # + stage one's prior column
    for stage, files in expected.items():
        folder = reported / "report" / stage
        assert sorted(p.name for p in folder.glob("*.png")) == sorted(files)
        for name, size in files.items():
            with Image.open(folder / name) as image:
                image.load()
                assert (image.format, image.size) == ("PNG", size)
            assert picture(folder / name).std() > 0  # something was drawn


def test_per_class_scores_are_those_of_the_best_checkpoint_on_test(reported: Path, tiny_results: Path):
    best = read(reported / "semantic" / "best.json")
    found = read(reported / "report" / "semantic" / "predictions.json")
    assert found == read(reported / "semantic" / "test" / "predictions.json")  # drawn from the test evaluation's
    assert found["checkpoint_sha256"] == best["checkpoint_sha256"]
    iou, fscore = np.asarray(found["per_class"]["iou"]), np.asarray(found["per_class"]["fscore"])
    # One score per class of the data's label2idx.json (the synthetic set's 9), named as it names them.
    assert found["per_class"]["classes"] == list(class_names(tiny_results / "data"))
    assert iou.shape == fscore.shape == (9,)
    # Averaged over the 9 classes they are exactly the stage's test mIoU and F-score.
    assert iou.mean() == pytest.approx(best["test"]["miou"], abs=1e-12)
    assert fscore.mean() == pytest.approx(best["test"]["fscore"], abs=1e-12)
    assert found["per_class"]["present"][0] and sum(found["per_class"]["present"]) > 1
    assert read(reported / "report" / "localize" / "predictions.json")["per_class"] is None  # binary stage


def test_sample_grid_shows_frame_truth_prediction_and_prior(reported: Path, tiny_results: Path):
    data = tiny_results / "data"
    colours = {tuple(c) for c in palette(9)}  # the synthetic data's classes only
    prior = read(reported / "localize" / "best.json")["masks"]
    for stage in STAGES:
        grid = picture(reported / "report" / stage / "samples.png")
        samples = read(reported / "report" / stage / "predictions.json")["samples"]
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


def test_aavs_report_draws_what_is_new_and_runs_no_network(reported: Path, tmp_path: Path, monkeypatch):
    copy = Path(shutil.copytree(reported, tmp_path / "tiny"))
    monkeypatch.setattr(registry, "load", lambda *args, **kwargs: pytest.fail("the report loaded a network"))
    (copy / "report" / "semantic" / "samples.png").unlink()
    old_curves = (copy / "report" / "localize" / "curves.png").stat().st_mtime_ns
    kept = (copy / "report" / "localize" / "samples.png").stat().st_mtime_ns
    assert main(["report", str(copy)]) == 0
    assert (copy / "report" / "semantic" / "samples.png").is_file()
    assert (copy / "report" / "localize" / "curves.png").stat().st_mtime_ns != old_curves  # curves always redrawn
    assert (copy / "report" / "localize" / "samples.png").stat().st_mtime_ns == kept  # current: not drawn again


def test_a_stage_without_its_test_predictions_gets_curves_only(reported: Path, tmp_path: Path):
    copy = Path(shutil.copytree(reported, tmp_path / "tiny"))
    shutil.rmtree(copy / "report")
    shutil.rmtree(copy / "semantic" / "test")  # an older folder, or a test evaluation of another checkpoint
    assert main(["report", str(copy)]) == 0
    assert sorted(p.name for p in (copy / "report" / "semantic").iterdir()) == ["curves.png"]
    assert (copy / "report" / "localize" / "samples.png").is_file()


def test_report_of_a_run_with_failed_and_running_trials(reported: Path, tmp_path: Path):
    copy = make_unfinished(reported, tmp_path)
    shutil.rmtree(copy / "report" / "semantic")
    assert main(["report", str(copy)]) == 0
    assert sorted(p.name for p in (copy / "report" / "semantic").iterdir()) == ["curves.png"]  # no best yet
    with Image.open(copy / "report" / "semantic" / "curves.png") as image:
        assert image.size == (800, 450)
    curves = json.loads((copy / "report" / "localize" / "predictions.json").read_text())
    assert curves["checkpoint_sha256"] == read(copy / "localize" / "best.json")["checkpoint_sha256"]


def test_the_run_left_each_stage_its_test_predictions_and_pictures(tiny_results: Path):
    """``aavs run`` itself: each stage's test evaluation wrote ``<stage>/test/`` for its best checkpoint,
    and the report at the stage's end drew it."""
    for stage in STAGES:
        best = read(tiny_results / stage / "best.json")
        found = results.read_test_predictions(results.stage_test_dir(tiny_results / stage))
        assert found is not None and found.checkpoint_sha256 == best["checkpoint_sha256"]
        assert results.read_predictions(tiny_results / "report" / stage) == found
        assert (tiny_results / "report" / stage / "samples.png").is_file()


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
