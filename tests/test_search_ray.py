"""Stage searchers, schedulers and trackers on a real local Ray: Optuna adapting under Tune, an Optuna
stage killed mid-trial and its Tune experiment restored with the searcher's state (the Ray layer of
kill and resume), population-based training exploiting a trial's state, and TensorBoard and MLflow
records of every trial in both modes."""

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
from conftest import tiny_spec

from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment.search import make_searcher
from aavs.orchestrator.experiment.spec import StageSpec

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def spec(name: str, tune: dict, epochs: int = 1, params: dict | None = None, **extra) -> dict:
    """Stage one alone, its learning rate searched on a log scale."""
    params = {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, **(params or {})}
    stage = {"epochs": epochs, "params": params, "tune": tune}
    return tiny_spec(name=name, stages={"localize": stage, "semantic": None}, **extra)


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
            "tune": {"search": "optuna", "num_samples": 6, "startup_trials": 3, "seed": 5, "max_concurrent": 1},
        }
    )

    def objective(config):  # a peak at 10 ** config["peak"]; reported under the name the searcher reads
        tune.report({"best/val/miou": -abs(math.log10(config["lr"]) - config["peak"])})

    def search(peak: float) -> list[float]:
        grid = tune.Tuner(
            objective,
            param_space={"peak": peak},
            tune_config=tune.TuneConfig(search_alg=make_searcher(stage), num_samples=6),
            run_config=tune.RunConfig(verbose=0, storage_path=str(tmp_path / f"p{peak}")),
        ).fit()
        by_name = {r.config["trial"]: r.config["lr"] for r in grid}
        return [by_name[name] for name in sorted(by_name)]

    low, high = search(-4.0), search(-2.0)
    assert low[:3] == high[:3]
    assert low[3:] != high[3:]
    assert sum(map(math.log10, low[3:])) / 3 < sum(map(math.log10, high[3:])) / 3


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
    histories: dict[str, list[float]] = {}
    # In the order they started: a trial restored after its driver was killed has a second run of its name.
    for r in sorted(client.search_runs([found.experiment_id]), key=lambda r: r.info.start_time):
        history = sorted(client.get_metric_history(r.info.run_id, metric), key=lambda m: m.step)
        histories.setdefault(r.info.run_name, []).extend(m.value for m in history)
    return histories


def reported(trial_dir: Path) -> list[tuple[int, float, float, float]]:
    """(epoch, training loss, val mIoU, val F-score) of each of the trial's reports."""
    rows = [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["train/loss"], r["val/miou"], r["val/fscore"]) for r in rows]


def assert_trackers_hold_every_trial(results: Path, stage_dir: Path, interrupted: dict[str, int] | None = None) -> None:
    """TensorBoard and MLflow hold every trial's reported val mIoU. ``interrupted``: a trial that was running
    when its driver was killed, and how many reports it had made: those may be lost with the driver
    (TensorBoard writes its file when it flushes or closes it); every report after the resume is there."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    history = mlflow_histories((results / "mlruns").as_uri(), f"{results.name}-localize", "val/miou")
    for trial in sorted((stage_dir / "trials").iterdir()):
        reported = [json.loads(line)["val/miou"] for line in (trial / "metrics.jsonl").read_text().splitlines()]
        reported = reported[(interrupted or {}).get(trial.name, 0) :]
        assert tensorboard_scalars(stage_dir / "tune" / trial.name, "ray/tune/val/miou")[-len(reported) :] == (
            pytest.approx(reported)
        )
        assert history[trial.name][-len(reported) :] == pytest.approx(reported)


@pytest.mark.subprocess
def test_optuna_stage_killed_mid_trial_resumes_its_search_and_ends_as_uninterrupted(ray_cluster, tmp_path):
    """A Ray run (on a pre-trained base) killed, its running trial with it, once its first trial has
    finished and its second has reported an epoch: `aavs resume`, on Ray as the run was started, reuses
    the base and restores the Tune experiment with its searcher's state: the finished trial untouched,
    the second continued from its last epoch (every epoch reported once), a third proposed, no learning
    rate twice. The trials end with the numbers of an uninterrupted --local run, whose Optuna proposes
    the same (seeded) startup trials; both modes fill the trackers with every report."""
    tune = {"search": "optuna", "num_samples": 3, "startup_trials": 2, "seed": 11, "max_concurrent": 1}
    extra = {
        "model": {"pretrain": {"steps": 2, "images_per_step": 2}},
        "loggers": ["tensorboard", "mlflow"],
        "params": {"adapter_warmup": 0.67},  # phase A: epochs 0 and 1, so the trial resumes inside it
    }
    raw = spec("optuna-resume", tune, epochs=3, **extra)
    spec_file = write(tmp_path, raw)
    results = tmp_path / "ray"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aavs.orchestrator.cli", "run", str(spec_file), "--results", str(results)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stage_dir = results / raw["name"] / "localize"
    first, second = stage_dir / "trials" / "t000", stage_dir / "trials" / "t001"

    deadline = time.time() + 600
    while time.time() < deadline and not (second / "metrics.jsonl").is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    trial = json.loads((second / "node.json").read_text())["pid"]
    os.kill(trial, signal.SIGSTOP)  # the trial goes no further while the driver records its report
    time.sleep(1.0)  # (in TensorBoard and MLflow: a file store that a kill mid-write leaves unreadable)
    os.killpg(proc.pid, signal.SIGKILL)
    os.kill(trial, signal.SIGKILL)  # (else it outlives its Ray a moment)
    proc.wait(timeout=60)
    assert json.loads((first / "status.json").read_text())["status"] == "done"
    assert len((second / "metrics.jsonl").read_text().splitlines()) == 1, "killed too late"
    finished, first_report = (first / "metrics.jsonl").read_bytes(), (second / "metrics.jsonl").read_bytes()
    base_record = results / raw["name"] / "base" / "pretraining.json"
    pretrained_at = base_record.stat().st_mtime_ns
    assert not (stage_dir / "done.json").exists()

    assert main(["resume", str(results / raw["name"])]) == 0
    assert base_record.stat().st_mtime_ns == pretrained_at  # the base is not trained again
    lrs = params(stage_dir)
    assert sorted(lrs) == ["t000", "t001", "t002"] and len(set(lrs.values())) == 3
    assert (first / "metrics.jsonl").read_bytes() == finished  # never run again
    assert (second / "metrics.jsonl").read_bytes().startswith(first_report)
    assert f"resumed {second} at epoch 1 (phase A)" in (second / "log.txt").read_text()
    for name in lrs:
        assert [epoch for epoch, *_ in reported(stage_dir / "trials" / name)] == [0, 1, 2]
    board = json.loads((results / raw["name"] / "leaderboard.json").read_text())
    assert board["stages"][0]["planned_trials"] == 3
    assert_trackers_hold_every_trial(results / raw["name"], stage_dir, interrupted={"t001": 1})

    local = tmp_path / "local"
    (tmp_path / "l").mkdir()
    two = spec("optuna-resume", {**tune, "num_samples": 2}, epochs=3, **extra)
    assert main(["run", str(write(tmp_path / "l", two)), "--local", "--results", str(local)]) == 0
    local_dir = local / raw["name"] / "localize"
    assert params(local_dir) == {name: lrs[name] for name in ("t000", "t001")}  # the same startup trials
    for name in ("t000", "t001"):  # the same numbers, the resumed trial's too
        assert reported(local_dir / "trials" / name) == reported(stage_dir / "trials" / name)
    bases = [root / raw["name"] / "base" for root in (results, local)]
    assert (bases[0] / "model.safetensors").read_bytes() == (bases[1] / "model.safetensors").read_bytes()
    for base in bases:  # every trial starts from its run's base
        configs = base.parent.glob("localize/trials/*/config.json")
        assert {json.loads(c.read_text())["model"]["pretrained"] for c in configs} == {str(base.resolve())}
    assert_trackers_hold_every_trial(local / raw["name"], local_dir)


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
