"""`aavs score` and `aavs features`, in-process and through the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aavs.datasets.errors import InputError
from aavs.datasets.layout import select_videos
from aavs.datasets.masks import read_colour, write_binary_masks, write_class_masks
from aavs.datasets.metrics import BinaryMetric, SemanticMetric
from aavs.datasets.score import score_predictions
from aavs.orchestrator.cli import main


def _truth(root, record):
    out = np.zeros((record.num_frames, 224, 224), dtype=np.int64)
    for i in record.annotated_frames:
        out[i] = read_colour(record.mask_path(root, i))
    return out


def _shift(class_map, k):
    return np.roll(class_map, k, axis=-1)  # a plausible, imperfect prediction


def _write_predictions(root, out, task, split, shift):
    preds = {}
    for n, record in enumerate(select_videos(root, task, split)):
        pred = _shift(_truth(root, record), shift * (n % 2))  # every other video is off by `shift` pixels
        if task == "avss":
            write_class_masks(out, record, pred)
        else:
            write_binary_masks(out, record, pred != 0)
        preds[record] = pred
    return preds


@pytest.mark.parametrize("task", ["s4", "ms3", "avss-binary"])
def test_binary_scores_match_the_metric_on_the_arrays(synth_root, tmp_path, task):
    preds = _write_predictions(synth_root, tmp_path, task, "test", shift=9)
    metric = BinaryMetric()
    for record, pred in preds.items():
        frames = list(record.annotated_frames)
        hard = pred[frames] != 0
        metric.update(hard, hard.astype(np.float32), _truth(synth_root, record)[frames] != 0)
    scores = score_predictions(tmp_path, synth_root, task, "test")
    assert set(scores) == {"miou", "fscore"}
    assert scores == pytest.approx(metric.compute(), abs=1e-12)
    assert 0.3 < scores["miou"] < 0.99  # the shifted videos lose, the others are perfect


def test_semantic_scores_and_perfect_predictions(synth_root, tmp_path):
    preds = _write_predictions(synth_root, tmp_path / "shifted", "avss", "val", shift=15)
    metric = SemanticMetric(9)  # the synthetic data's classes: background + 8 sources
    for record, pred in preds.items():
        metric.update(pred, _truth(synth_root, record))
    scores = score_predictions(tmp_path / "shifted", synth_root, "avss", "val")
    assert set(scores) == {"miou", "fscore", "miou_no_bg", "fscore_no_bg"}
    assert scores == pytest.approx(metric.compute(), abs=1e-12)

    _write_predictions(synth_root, tmp_path / "perfect", "avss", "val", shift=0)
    perfect = score_predictions(tmp_path / "perfect", synth_root, "avss", "val")
    seen = set().union(*(np.unique(_truth(synth_root, r)).tolist() for r in preds))
    assert perfect["miou"] == pytest.approx(len(seen) / 9) and perfect["fscore"] == pytest.approx(len(seen) / 9)
    assert perfect["miou_no_bg"] == pytest.approx((len(seen) - 1) / 8)


def test_semantic_scores_are_over_the_data_classes(synth_copy, tmp_path):
    """The metrics average over the data's label2idx.json classes; a predicted class it lacks is an error."""
    preds = _write_predictions(synth_copy, tmp_path / "perfect", "avss", "val", shift=0)
    seen = set().union(*(np.unique(_truth(synth_copy, r)).tolist() for r in preds))
    label2idx = synth_copy / "label2idx.json"
    label2idx.write_text(json.dumps({"background": 0, **{f"c{i}": i for i in range(1, 12)}}))  # 12 classes
    perfect = score_predictions(tmp_path / "perfect", synth_copy, "avss", "val")
    assert perfect["miou"] == pytest.approx(len(seen) / 12)
    assert perfect["miou_no_bg"] == pytest.approx((len(seen) - 1) / 11)
    record = next(iter(preds))
    wrong = preds[record].copy()
    wrong[:, :3, :3] = 12  # a class of the palette the data does not have
    write_class_masks(tmp_path / "perfect", record, wrong)
    with pytest.raises(
        InputError,
        match=r"0\.png: colour \(\d+, \d+, \d+\) \(9 pixels\) is not in the AVSBench "
        r"palette of 12 classes",
    ):
        score_predictions(tmp_path / "perfect", synth_copy, "avss", "val")


def test_only_annotated_frames_are_needed(synth_root, tmp_path):
    for record in select_videos(synth_root, "s4", "train"):  # v1s train: only frame 0 labelled
        full = _truth(synth_root, record) != 0
        write_binary_masks(tmp_path, record, full)
        for i in range(1, 5):
            (tmp_path / "v1s" / record.uid / f"{i}.png").unlink()
    assert score_predictions(tmp_path, synth_root, "s4", "train")["miou"] == pytest.approx(1.0)


def test_missing_prediction(synth_root, tmp_path, capsys):
    _write_predictions(synth_root, tmp_path, "ms3", "test", shift=0)
    record = select_videos(synth_root, "ms3", "test")[1]
    missing = tmp_path / "v1m" / record.uid / "2.png"
    missing.unlink()
    with pytest.raises(InputError, match=rf"{record.uid}/2\.png: mask file missing"):
        score_predictions(tmp_path, synth_root, "ms3", "test")
    assert main(["score", str(tmp_path), "--data", str(synth_root), "--task", "ms3", "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aavs: error: ") and str(missing) in err and err.count("\n") == 1
    assert main(["score", str(tmp_path / "none"), "--data", str(synth_root), "--task", "s4"]) == 2
    assert "predictions folder missing" in capsys.readouterr().err


def test_score_cli_table_and_json(synth_root, tmp_path, capsys):
    _write_predictions(synth_root, tmp_path, "s4", "val", shift=5)
    expected = score_predictions(tmp_path, synth_root, "s4", "val")
    assert main(["score", str(tmp_path), "--data", str(synth_root), "--task", "s4", "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected)
    assert main(["score", str(tmp_path), "--data", str(synth_root), "--task", "s4", "--split", "val"]) == 0
    table = capsys.readouterr().out
    assert "miou" in table and f"{100 * expected['miou']:.2f}" in table


def test_features_cli(synth_copy, tmp_path, capsys):
    lines = (synth_copy / "metadata.csv").read_text().splitlines()
    (synth_copy / "metadata.csv").write_text("\n".join(lines[:1] + [x for x in lines if ",test," in x]) + "\n")
    cache = tmp_path / "cache"
    args = ["features", str(synth_copy), "--cache", str(cache), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["videos"] == 6 and first["computed"] == 6 and first["cached"] == 0
    assert first["weights"] == "random-init-v1" and Path(first["cache_dir"]).parent == cache
    assert len(list(cache.rglob("*.npy"))) == 6
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["computed"], again["cached"]) == (0, 6)
    assert main(["features", str(synth_copy), "--vggish", str(tmp_path / "w.pth")]) == 2
    assert "w.pth: VGGish weights file missing" in capsys.readouterr().err
    assert main(["features", str(synth_copy), "--vggish-pca", str(tmp_path / "p.pth")]) == 2
    assert "without VGGish weights" in capsys.readouterr().err


def test_console_script_synth_check_score(tmp_path):
    aavs = Path(sys.executable).with_name("aavs")
    env = {**os.environ, "AAVS_CACHE_DIR": str(tmp_path / "cache")}
    data = tmp_path / "data"

    def run(*args):
        return subprocess.run([str(aavs), *args], capture_output=True, text=True, env=env, timeout=120)

    synth = run("data", "synth", str(data), "--videos-per-split", "1", "--seed", "3")
    assert synth.returncode == 0, synth.stderr
    check = run("data", "check", str(data), "--json")
    assert check.returncode == 0 and json.loads(check.stdout) == {"data": str(data), "problems": []}
    _write_predictions(data, tmp_path / "pred", "avss", "test", shift=0)
    score = run("score", str(tmp_path / "pred"), "--data", str(data), "--task", "avss", "--split", "test", "--json")
    assert score.returncode == 0, score.stderr
    decoder = json.JSONDecoder()
    obj, end = decoder.raw_decode(score.stdout)
    assert score.stdout[end:].strip() == ""  # exactly one JSON object on stdout
    assert set(obj) == {"miou", "fscore", "miou_no_bg", "fscore_no_bg"} and 0 < obj["miou"] <= 1
