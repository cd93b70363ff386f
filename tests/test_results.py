"""The results folder's records: each round-trips, a newer format is refused, the unversioned
(pre-``format.json``) layout is still read, and provenance is recorded."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import pytest
import yaml

from aavs.datasets.errors import InputError
from aavs.orchestrator import results
from aavs.orchestrator.cli import main
from aavs.orchestrator.recipe.output_capture import experiment_done, log_files, mark_failed
from aavs.orchestrator.results import StageStatus, TrialStatus
from aavs.orchestrator.views.leaderboard import build_leaderboard, load_leaderboard, write_leaderboard

SPEC = {
    "name": "old",
    "model": {"preset": "tiny", "vggish": None, "vggish_pca": None},
    "stages": [
        {
            "name": "localize",
            "task": "avss-binary",
            "epochs": 2,
            "prior": None,
            "init_from": None,
            "params": {"lr": {"grid": [0.001, 0.003]}},
            "tune": {"metric": "val/miou", "mode": "max", "num_samples": 1, "seed": 0},
        },
        {
            "name": "semantic",
            "task": "avss",
            "epochs": 2,
            "prior": "localize",
            "init_from": "localize",
            "params": {"lr": 0.001},
            "tune": {"metric": "val/miou", "mode": "max", "num_samples": 1, "seed": 0},
        },
    ],
}


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def old_folder(root: Path) -> Path:
    """A finished stage one and a running stage two, each file in the JSON shape aavs wrote before
    results were versioned (no format.json, no provenance.json), built by hand."""
    folder = root / "old"
    _write(folder / "spec.json", {"hash": "h", "spec": SPEC})
    (folder / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    _write(folder / "run.json", {"mode": "local"})
    one = folder / "localize"
    _write(one / "inputs.json", {"inputs_hash": "i1", "inputs": {"stage": {"name": "localize"}}})
    for tid, lr, values in (("t000", 0.001, [0.3, 0.5]), ("t001", 0.003, [0.2, 0.4])):
        trial = one / "trials" / tid
        _write(trial / "params.json", {"lr": lr})
        _write(trial / "config.json", {"epochs": 2, "prior": None, "init_from": None, "lr": lr})
        _write(trial / "node.json", {"node_id": None})
        _write(
            trial / "status.json",
            {"status": "done", "time": 1.0, "epoch": 2, "epochs": 2, "best": {"val/miou": max(values), "epoch": 1}},
        )
        (trial / "metrics.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "epoch": e,
                        "phase": "AB"[e],
                        "train/loss": 1.0 / (e + 1),
                        "val/miou": v,
                        "val/fscore": v,
                        "time": 2.0 + e,
                        "checkpoint": str(trial / "best"),
                    }
                )
                + "\n"
                for e, v in enumerate(values)
            )
            + '{"epoch": 2, "val/mi'
        )  # a torn last line: ignored
        _write(trial / "best" / "metrics.json", {"val/miou": max(values), "val/fscore": max(values), "epoch": 1})
    best = {
        "trial_id": "t000",
        "metric": "val/miou",
        "mode": "max",
        "value": 0.5,
        "checkpoint": str(one / "trials" / "t000" / "best"),
        "checkpoint_sha256": "a" * 64,
        "params": {"lr": 0.001},
        "stage": "localize",
        "data_root": str(root / "data"),
        "masks": str(one / "masks"),
        "test": {"miou": 0.45, "fscore": 0.5},
    }
    _write(one / "best.json", best)
    _write(
        one / "masks" / "_SUCCESS.json",
        {
            "checkpoint": best["checkpoint"],
            "checkpoint_sha256": "a" * 64,
            "node_id": None,
            "scores": {"test": {"miou": 0.45, "fscore": 0.5}},
        },
    )
    _write(one / "done.json", {"inputs_hash": "i1"})
    trial = folder / "semantic" / "trials" / "t000"
    _write(trial / "params.json", {"lr": 0.001})
    _write(trial / "config.json", {"epochs": 2, "prior": str(one / "masks"), "init_from": best["checkpoint"]})
    _write(trial / "status.json", {"status": "running", "time": 1.0, "epoch": 0, "epochs": 2})
    _write(
        folder / "report" / "localize" / "predictions.json",
        {
            "checkpoint": best["checkpoint"],
            "checkpoint_sha256": "a" * 64,
            "videos": 4,
            "per_class": None,
            "samples": [{"uid": "v1", "subset": "v1s", "frame": 0}],
        },
    )
    return folder


# ------------------------------------------------------------------------------- round trips
def test_each_record_round_trips(tmp_path: Path):
    stage, trial = tmp_path / "s", tmp_path / "s" / "trials" / "t000"
    results.write_spec(tmp_path, SPEC, "h")
    assert results.read_spec(tmp_path) == results.SpecRecord(hash="h", spec=SPEC)
    assert results.read_spec(tmp_path).stage_names == ["localize", "semantic"]
    results.write_run(tmp_path, "local")
    assert results.read_run(tmp_path).mode == "local"
    assert json.loads((tmp_path / results.RUN_FILE).read_text()) == {"mode": "local"}
    results.write_inputs(stage, "i", {"a": [1, 2]})
    assert results.read_inputs(stage) == results.InputsRecord(inputs_hash="i", inputs={"a": [1, 2]})
    results.write_done(stage, "i")
    assert results.read_done(stage).inputs_hash == "i"
    best = results.BestTrial(
        stage="s",
        trial_id="t000",
        metric="val/miou",
        mode="max",
        value=0.5,
        checkpoint="c",
        checkpoint_sha256="x",
        params={"lr": 0.1},
        data_root="d",
        test={"miou": 0.4},
    )
    results.write_best(stage, best)
    assert results.read_best(stage) == best
    masks = results.MasksRecord(checkpoint="c", checkpoint_sha256="x", scores={"val": {"miou": 0.3}}, node_id="n")
    results.write_masks_success(stage / "masks", masks)
    assert results.read_masks_success(stage / "masks") == masks
    results.write_params(trial, {"lr": 0.1, "seed": 3})
    assert results.read_params(trial) == {"lr": 0.1, "seed": 3}
    results.write_trial_config(trial, {"epochs": 2})
    assert results.read_trial_config(trial) == {"epochs": 2}
    results.write_node(trial, None)
    assert results.read_node(trial).node_id is None
    status = results.StatusRecord(status=TrialStatus.DONE, time=1.0, epoch=2, epochs=2, best={"val/miou": 0.5})
    results.write_status(trial, status)
    assert results.read_status(trial) == status and results.trial_status(trial) is TrialStatus.DONE
    rows = [
        {"epoch": 0, "phase": "A", "val/miou": 0.25, "train/loss": math.nan, "time": 1.0},
        {"epoch": 1, "phase": "B", "val/miou": 0.5},
    ]
    for row in rows:
        results.append_metrics(trial, row)
    read = results.read_metrics(trial)
    assert [r["val/miou"] for r in read] == [0.25, 0.5] and math.isnan(read[0]["train/loss"])
    assert [r.to_json() for r in read][1] == rows[1]  # the keys written, no others
    results.keep_metrics_through(trial, 0)
    assert [r.epoch for r in results.read_metrics(trial)] == [0]
    results.clear_metrics(trial)
    assert results.read_metrics(trial) == []
    results.write_checkpoint_metrics(trial / "best", {"val/miou": 0.5, "epoch": 1})
    metrics = results.read_checkpoint_metrics(trial / "best")
    assert metrics.epoch == 1 and metrics["val/miou"] == 0.5 and "val/miou" in metrics and "val/f" not in metrics
    predictions = results.Predictions(
        checkpoint="c",
        checkpoint_sha256="x",
        videos=2,
        per_class={"classes": ["bg", "dog"], "iou": [0.9, 0.1], "fscore": [0.9, 0.2], "present": [True, False]},
        samples=[{"uid": "u", "subset": "v2", "frame": 3}],
    )
    results.write_predictions(tmp_path / "report", predictions)
    assert results.read_predictions(tmp_path / "report") == predictions


def test_a_file_that_is_not_its_record_is_named(tmp_path: Path):
    _write(tmp_path / "s" / "best.json", {"checkpoint": "c"})
    with pytest.raises(InputError, match=r"s/best\.json: not a BestTrial record"):
        results.read_best(tmp_path / "s")
    _write(tmp_path / "t" / "status.json", {"status": "exploded"})
    with pytest.raises(InputError, match=r"status\.json: not a StatusRecord record"):
        results.read_status(tmp_path / "t")


def test_statuses_are_typed():
    assert [s for s in TrialStatus if s.ended] == [TrialStatus.DONE, TrialStatus.STOPPED, TrialStatus.FAILED]
    assert [s for s in StageStatus if s.ended] == [StageStatus.DONE, StageStatus.FAILED]
    assert TrialStatus("stopped") == "stopped" and f"{TrialStatus.FAILED}" == "failed"
    assert json.dumps({"s": TrialStatus.RUNNING}) == '{"s": "running"}'


def test_mark_failed_keeps_the_status_record(tmp_path: Path):
    results.write_status(tmp_path, results.StatusRecord(status="running", epoch=1, epochs=3))
    mark_failed(tmp_path, ValueError("bad\nsecond line"))
    status = results.read_status(tmp_path)
    assert (status.status, status.error, status.epoch) == (TrialStatus.FAILED, "ValueError: bad", 1)
    assert status.log == str(tmp_path / "log.txt")


# ----------------------------------------------------------------------------- format version
def test_a_newer_format_is_refused_by_every_reader(tmp_path: Path, capsys):
    folder = old_folder(tmp_path)
    _write(folder / results.FORMAT_FILE, {"format_version": results.FORMAT_VERSION + 1})
    message = (
        f"{folder}: results format version {results.FORMAT_VERSION + 1} is newer than this aavs "
        rf"\(.*\) reads \(format version {results.FORMAT_VERSION}\); upgrade aavs"
    )
    for read in (results.check_format, results.read_spec, build_leaderboard, load_leaderboard, log_files):
        with pytest.raises(InputError, match=message):
            read(folder)
    with pytest.raises(InputError, match=message):
        results.open_results(folder, "resume")
    assert not (folder / results.PROVENANCE_FILE).exists()  # refused before writing anything
    assert main(["resume", str(folder), "--local"]) == 2
    assert f"results format version {results.FORMAT_VERSION + 1}" in capsys.readouterr().err
    assert main(["leaderboard", str(folder)]) == 2


def test_the_unversioned_layout_is_still_read(tmp_path: Path):
    folder = old_folder(tmp_path)
    assert results.folder_version(folder) == 1 == results.check_format(folder)
    board = write_leaderboard(folder)  # the driver's view of an upgraded run: reads every old file
    one, two = board["stages"]
    assert board["status"] == StageStatus.RUNNING and board["progress"] == {
        "trials_done": 2,
        "trials": 3,
        "epochs_done": 4,
        "epochs": 6,
    }
    assert one["status"] == "done" and one["best"]["test"] == {"miou": 0.45, "fscore": 0.5}
    assert [(t["trial_id"], t["rank"], t["best"], t["best_epoch"]) for t in one["trials"]] == [
        ("t000", 1, 0.5, 1),
        ("t001", 2, 0.4, 1),
    ]
    assert one["trials"][0]["history"]["epoch"] == [0, 1]  # the torn line is left out
    assert two["status"] == "running" and two["trials"][0]["status"] == TrialStatus.RUNNING
    assert two["trials"][0]["fed_by"]["prior"] == {
        "stage": "localize",
        "trial_id": "t000",
        "epoch": 1,
        "checkpoint": one["best"]["checkpoint"],
    }
    assert load_leaderboard(folder) == json.loads((folder / results.LEADERBOARD_FILE).read_text())
    assert results.read_best(folder / "localize").masks == str(folder / "localize" / "masks")
    assert results.read_predictions(folder / "report" / "localize").per_class is None
    assert results.read_run(folder).mode == "local" and not experiment_done(folder)
    assert [(f.label, f.status) for f in log_files(folder)] == []  # no logs yet, but the folder reads


def test_open_results_records_format_and_provenance(tmp_path: Path):
    folder = old_folder(tmp_path)
    results.open_results(folder, "resume")
    results.open_results(folder, "resume")
    assert json.loads((folder / results.FORMAT_FILE).read_text()) == {"format_version": results.FORMAT_VERSION}
    runs = results.read_provenance(folder).runs
    assert [r.command for r in runs] == ["resume", "resume"]
    run = runs[-1]
    assert run.format_version == results.FORMAT_VERSION and run.aavs_version == results.aavs_version()
    assert run.python == platform.python_version() and run.hostname
    assert set(run.packages) == {"torch", "transformers", "ray", "accelerate", "deepspeed"}
    assert run.packages["torch"] and run.packages["ray"]  # installed here
    assert isinstance(run.accelerators, list) and all(isinstance(a, str) for a in run.accelerators)
    repo = Path(results.__file__).resolve().parent.parent
    if (repo / ".git").exists():
        assert run.git_commit and len(run.git_commit) == 40
    else:
        assert run.git_commit is None
    on_disk = json.loads((folder / results.PROVENANCE_FILE).read_text())
    assert set(on_disk["runs"][0]) >= {"aavs_version", "git_commit", "packages", "accelerators", "hostname", "python"}
