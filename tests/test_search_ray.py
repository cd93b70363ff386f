"""Stage searchers, schedulers and trackers on a real local Ray: Optuna adapting under Tune, an Optuna
stage killed and resumed with its searcher's state, population-based training exploiting a trial's
state, and TensorBoard and MLflow records of every trial in both modes."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment.search import make_searcher
from aavs.orchestrator.experiment.spec import StageSpec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

COMPUTE = {
    "workers_per_trial": 1,
    "gpus_per_worker": 0,
    "cpus_per_worker": 1,
    "strategy": "plain",
    "mixed_precision": "no",
    "loader_workers": 0,
}


def spec(name: str, tune: dict, epochs: int = 1, **extra) -> dict:
    return {
        "name": name,
        "data": {"synthetic": {"videos_per_split": 2, "seed": 0}},
        "model": {"preset": "tiny"},
        "compute": COMPUTE,
        "stages": [
            {
                "name": "localize",
                "task": "avss-binary",
                "epochs": epochs,
                "max_videos": 1,
                "params": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}},
                "tune": tune,
            }
        ],
        **extra,
    }


def write(folder: Path, raw: dict) -> Path:
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def params(stage_dir: Path) -> dict[str, float]:
    return {d.name: json.loads((d / "params.json").read_text())["lr"] for d in sorted((stage_dir / "trials").iterdir())}


def test_optuna_under_tune_proposes_from_the_results(ray_cluster, tmp_path):
    """Two Optuna stages, same seed, fed different results: the same startup trials, then each its own."""
    from ray import tune

    stage = StageSpec.model_validate(
        {
            "name": "s",
            "task": "avss-binary",
            "params": {"lr": {"loguniform": [1e-4, 1e-2]}},
            "tune": {"search": "optuna", "num_samples": 7, "startup_trials": 3, "seed": 5, "max_concurrent": 1},
        }
    )

    def objective(config):  # a peak at 10 ** config["peak"]; reported under the name the searcher reads
        tune.report({"best/val/miou": -abs(math.log10(config["lr"]) - config["peak"])})

    def search(peak: float) -> list[float]:
        grid = tune.Tuner(
            objective,
            param_space={"peak": peak},
            tune_config=tune.TuneConfig(search_alg=make_searcher(stage), num_samples=7),
            run_config=tune.RunConfig(verbose=0, storage_path=str(tmp_path / f"p{peak}")),
        ).fit()
        by_name = {r.config["trial"]: r.config["lr"] for r in grid}
        return [by_name[name] for name in sorted(by_name)]

    low, high = search(-4.0), search(-2.0)
    assert low[:3] == high[:3]
    assert low[3:] != high[3:]
    assert sum(map(math.log10, low[3:])) / 4 < sum(map(math.log10, high[3:])) / 4


def tensorboard_scalars(folder: Path, tag: str) -> list[float]:
    """The values of one scalar in a folder's TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    values = []
    for events in sorted(folder.glob("events.out.tfevents.*")):
        data = events.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            values += [v.simple_value for v in event.summary.value if v.tag == tag]
    return values


def mlflow_histories(uri: str, experiment: str, metric: str) -> dict[str, list[float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([found.experiment_id])
    return {
        r.info.run_name: [
            m.value for m in sorted(client.get_metric_history(r.info.run_id, metric), key=lambda m: m.step)
        ]
        for r in runs
    }


def assert_trackers_hold_every_trial(results: Path, stage_dir: Path) -> None:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    history = mlflow_histories((results / "mlruns").as_uri(), f"{results.name}-localize", "val/miou")
    for trial in sorted((stage_dir / "trials").iterdir()):
        reported = [json.loads(line)["val/miou"] for line in (trial / "metrics.jsonl").read_text().splitlines()]
        assert tensorboard_scalars(stage_dir / "tune" / trial.name, "ray/tune/val/miou")[-len(reported) :] == (
            pytest.approx(reported)
        )
        assert history[trial.name][-len(reported) :] == pytest.approx(reported)


@pytest.mark.slow
@pytest.mark.subprocess
def test_optuna_stage_killed_after_three_trials_resumes_its_search(ray_cluster, tmp_path):
    """Killed after 3 finished trials, `aavs resume` restores the Tune experiment: 4 trials in all, the
    finished ones untouched; --local proposes the same first trial; both modes fill the trackers."""
    tune = {"search": "optuna", "num_samples": 4, "startup_trials": 2, "seed": 11, "max_concurrent": 1}
    raw = spec("optuna-resume", tune, loggers=["tensorboard", "mlflow"])
    spec_file = write(tmp_path, raw)
    results = tmp_path / "ray"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aavs.orchestrator.cli", "run", str(spec_file), "--results", str(results)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stage_dir = results / raw["name"] / "localize"

    def finished() -> list[Path]:
        return [
            s.parent for s in stage_dir.glob("trials/*/status.json") if json.loads(s.read_text())["status"] == "done"
        ]

    deadline = time.time() + 600
    while time.time() < deadline and len(finished()) < 3:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    before = {d.name: (d / "metrics.jsonl").read_bytes() for d in finished()}
    assert len(before) >= 3 and not (stage_dir / "done.json").exists()

    assert main(["resume", str(results / raw["name"])]) == 0
    lrs = params(stage_dir)
    assert sorted(lrs) == ["t000", "t001", "t002", "t003"]
    assert len(set(lrs.values())) == 4
    for name, rows in before.items():  # never run again
        assert (stage_dir / "trials" / name / "metrics.jsonl").read_bytes() == rows
    for name in lrs:
        assert len((stage_dir / "trials" / name / "metrics.jsonl").read_text().splitlines()) == 1
    board = json.loads((results / raw["name"] / "leaderboard.json").read_text())
    assert board["stages"][0]["planned_trials"] == 4
    assert_trackers_hold_every_trial(results / raw["name"], stage_dir)

    local = tmp_path / "local"
    one = spec("optuna-resume", {**tune, "num_samples": 1}, loggers=["tensorboard", "mlflow"])
    (tmp_path / "l").mkdir()
    assert main(["run", str(write(tmp_path / "l", one)), "--local", "--results", str(local)]) == 0
    local_lrs = params(local / raw["name"] / "localize")
    assert local_lrs["t000"] == lrs["t000"]  # the same first trial in both modes
    assert_trackers_hold_every_trial(local / raw["name"], local / raw["name"] / "localize")


@pytest.mark.slow
def test_population_based_training_exploits_a_trials_state(ray_cluster, tmp_path):
    """Two trials, an exploit decision every epoch: the worse one continues from the better one's state
    with a perturbed learning rate, and its schedule.json says from which epoch which rate held."""
    raw = spec("pbt", {"num_samples": 2, "seed": 0, "scheduler": {"pbt": {"interval": 1, "quantile": 0.5}}}, epochs=4)
    assert main(["run", str(write(tmp_path, raw)), "--results", str(tmp_path / "r")]) == 0
    stage_dir = tmp_path / "r" / "pbt" / "localize"
    schedules = {
        d.name: json.loads((d / "schedule.json").read_text())["spans"] for d in (stage_dir / "trials").iterdir()
    }
    assert sorted(schedules) == ["t000", "t001"]
    exploits = [(name, span) for name, spans in schedules.items() for span in spans[1:]]
    assert exploits, f"no exploit in {schedules}"
    name, span = exploits[0]
    assert span["exploited"] in schedules and span["exploited"] != name
    assert 0 < span["from_epoch"] < 4
    assert span["params"]["lr"] != schedules[name][0]["params"]["lr"]
    log = (stage_dir / "trials" / name / "log.txt").read_text()
    assert f"{name} continues from {span['exploited']} after its epoch {span['from_epoch']}" in log
    config = json.loads((stage_dir / "trials" / name / "config.json").read_text())
    assert config["lr"] == span["params"]["lr"]  # what it trained with after the exploit
    rows = [json.loads(line) for line in (stage_dir / "trials" / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
