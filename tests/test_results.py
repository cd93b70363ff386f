"""The results folder's records: each round-trips, a newer format is refused, the unversioned
(pre-``format.json``) layout is still read, and provenance is recorded."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np
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
    repo = Path(results.__file__).resolve().parents[2]  # <checkout>/orchestrator/results/__init__.py
    if (repo / ".git").exists():
        assert run.git_commit and len(run.git_commit) == 40
    else:
        assert run.git_commit is None
    on_disk = json.loads((folder / results.PROVENANCE_FILE).read_text())
    assert set(on_disk["runs"][0]) >= {"aavs_version", "git_commit", "packages", "accelerators", "hostname", "python"}


# ------------------------------------------------------------------------------------ ranking
def _ranked_trial(stage: Path, name: str, params: dict, value: float | None, metric: str = "val/miou") -> None:
    trial = stage / "trials" / name
    results.write_params(trial, params)
    if value is not None:
        results.write_checkpoint_metrics(trial / results.BEST, {metric: value, "epoch": 1})


def test_trials_rank_by_their_best_checkpoint_and_configurations_by_their_mean(tmp_path: Path):
    stage = tmp_path / "s"
    # Two configurations of two seeds each: lr 0.1 has the best single trial, lr 0.2 the best mean.
    _ranked_trial(stage, "t000", {"lr": 0.1, "seed": 0}, 0.9)
    _ranked_trial(stage, "t001", {"lr": 0.1, "seed": 1}, 0.1)
    _ranked_trial(stage, "t002", {"lr": 0.2, "seed": 0}, 0.6)
    _ranked_trial(stage, "t003", {"lr": 0.2, "seed": 1}, 0.6)
    _ranked_trial(stage, "t004", {"lr": 0.3, "seed": 0}, None)  # no best checkpoint yet: left out
    _ranked_trial(stage, "t005", {"lr": 0.4, "seed": 0}, 0.99, metric="val/fscore")  # lacks the metric
    (stage / "trials" / "t006").mkdir()  # no params.json: not a proposed trial
    ranked = results.rank_trials(stage, "val/miou", "max")
    assert [r.trial_id for r in ranked] == ["t002", "t003", "t000", "t001"]  # ties: by name
    assert ranked[0].value == 0.6 and ranked[0].params == {"lr": 0.2, "seed": 0}
    assert ranked[0].trial_dir == stage / "trials" / "t002"
    assert ranked[2].configuration_values == (0.9, 0.1) and ranked[2].configuration_mean == pytest.approx(0.5)
    assert ranked[0].configuration_std == 0.0 and ranked[2].configuration_std == pytest.approx(0.5657, abs=1e-4)
    assert [r.trial_id for r in results.rank_trials(stage, "val/miou", "min")] == ["t001", "t000", "t002", "t003"]
    assert [p.name for p in results.trial_dirs(stage)] == [f"t00{i}" for i in range(6)]
    assert results.rank_trials(tmp_path / "nothing", "val/miou", "max") == []
    assert results.configuration_key({"seed": 3, "lr": 0.1}) == results.configuration_key({"lr": 0.1, "seed": 4})


@pytest.mark.parametrize(
    "search, params, tune",
    [
        ("random", {"lr": {"grid": [0.1, 0.2, 0.3]}, "weight_decay": {"choice": [0.0, 0.1]}}, {"num_samples": 2}),
        ("grid", {"lr": {"grid": [0.1, 0.2]}, "weight_decay": {"choice": [0.0, 0.1, 0.2]}}, {"repeats": 3}),
        ("optuna", {"lr": {"loguniform": [1.0e-4, 1.0e-2]}}, {"num_samples": 5}),
        ("random", {"lr": 0.1}, {}),
    ],
)
def test_the_plan_read_from_spec_json_is_the_specs(search: str, params: dict, tune: dict):
    from aavs.orchestrator.experiment.search_space import planned_trials
    from aavs.orchestrator.experiment.spec import parse_spec

    raw = {
        "name": "plan",
        "data": {"synthetic": {}},
        "model": {"preset": "tiny"},
        "stages": [{"name": "s", "task": "s4", "params": params, "tune": {"search": search, **tune}}],
    }
    spec = parse_spec(raw, "test")
    saved = spec.to_dict()["stages"][0]  # what spec.json holds
    assert results.planned_trials(saved) == planned_trials(spec.stages[0])
    assert sorted(results.searched(saved["params"])) == sorted(k for k, v in params.items() if isinstance(v, dict))
    assert set(results.fixed(saved["params"])) == set(saved["params"]) - set(results.searched(saved["params"]))


def test_test_predictions_and_their_samples_round_trip(tmp_path: Path):
    folder = results.stage_test_dir(tmp_path / "s")
    assert folder == tmp_path / "s" / results.TEST_DIR and results.read_test_predictions(folder) is None
    rng = np.random.default_rng(0)
    samples = [
        results.SampleImages(
            uid=f"v{i}",
            subset="v2",
            frame=i,
            image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
            truth=rng.integers(0, 3, (8, 8), dtype=np.uint8),
            pred=rng.integers(0, 3, (8, 8), dtype=np.uint8),
            prior=None if i else rng.integers(0, 256, (8, 8), dtype=np.uint8),
        )
        for i in range(2)
    ]
    per_class = results.PerClass(classes=["bg", "dog", "cat"], iou=[0.9, 0.1, 0], fscore=[1, 0.2, 0], present=[1, 1, 0])
    written = results.write_test_predictions(
        folder, checkpoint="c", checkpoint_sha256="x", videos=4, per_class=per_class, samples=samples
    )
    found = results.read_test_predictions(folder)
    assert found == written and [s.uid for s in found.samples] == ["v0", "v1"] and found.per_class == per_class
    images = results.read_test_samples(folder, found)
    assert [(s.uid, s.subset, s.frame) for s in images] == [("v0", "v2", 0), ("v1", "v2", 1)]
    for got, want in zip(images, samples):
        assert (got.image == want.image).all() and (got.truth == want.truth).all() and (got.pred == want.pred).all()
        assert got.image.dtype == np.uint8
    assert (images[0].prior == samples[0].prior).all() and images[1].prior is None
    (folder / results.SAMPLES_FILE).write_bytes(b"PK\x03\x04torn")  # a torn file: no samples, no error
    assert results.read_test_samples(folder, found) == []
