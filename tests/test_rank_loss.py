"""A rank of a two-worker trial SIGKILLed after its first epoch, as test_faults.py's DeepSpeed test
does it, for what that test leaves out. DeepSpeed ZeRO-2: Ray Train restarts the worker group
(``compute.max_failures``), ``train_func`` resumes from ``checkpoints/last`` (DeepSpeed's engine state
through accelerate), every epoch is reported once, and it ends with the numbers of the same trial run
without a kill (two uninterrupted runs are bit for bit the same): each rank resumes its own RNG states
(``rng_rank<r>.pt``; accelerate's own file is named by a process index that is 0 on every rank here).

DDP: the same kill and restart of a two-worker DDP trial.

``faults`` tests (about 3 minutes on 2 cores: for DeepSpeed the uninterrupted reference and the killed
run, for DDP the killed run): `make test` leaves them out, `make test-faults` runs them (or
``pytest -m faults tests/test_rank_loss.py``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import kill_a_rank_once_reported, tiny_spec

from aavs.orchestrator.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.faults]

# Four epochs, phase A the first two: the kill after epoch 0 resumes inside phase A, from DeepSpeed's
# engine state (optimizer partitions included); one trial of two training videos, one a rank.
SPEC = tiny_spec(
    name="rank-kill",
    compute={"workers_per_trial": 2, "strategy": "deepspeed", "deepspeed": {"zero_stage": 2}, "max_failures": 1},
    stages={"localize": {"epochs": 4, "max_videos": 2, "params": {"lr": 1.0e-3}}, "semantic": None},
)


def trial_record(results: Path) -> tuple[list[tuple[int, str, float, float]], dict[str, Any]]:
    """(epoch, phase, val mIoU, val F) of every report of the trial, and the stage's best.json."""
    folder = results / SPEC["name"] / "localize"
    rows = [json.loads(line) for line in (folder / "trials" / "t000" / "metrics.jsonl").read_text().splitlines()]
    best = json.loads((folder / "best.json").read_text())
    return [(r["epoch"], r["phase"], r["val/miou"], r["val/fscore"]) for r in rows], best


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(uninterrupted run, killed run): the killed one's rank SIGKILLed once epoch 0 is reported."""
    folder = tmp_path_factory.mktemp("rank-kill")
    spec_file = folder / "rank-kill.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    assert main(["run", str(spec_file), "--results", str(folder / "reference")]) == 0

    trial = folder / "results" / SPEC["name"] / "localize" / "trials" / "t000"
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_rank_once_reported, args=(trial, killed))
    killer.start()
    assert main(["run", str(spec_file), "--results", str(folder / "results")]) == 0
    killer.join()
    assert killed
    return folder / "reference", folder / "results"


def test_a_deepspeed_rank_killed_restarts_the_train_run_from_its_last_epoch(runs: tuple[Path, Path]) -> None:
    trial = runs[1] / SPEC["name"] / "localize" / "trials" / "t000"
    rows, best = trial_record(runs[1])
    assert [r[0] for r in rows] == [0, 1, 2, 3]  # every epoch reported once
    assert f"resumed {trial} at epoch 1 (phase A)" in (trial / "log.txt").read_text()
    assert "All optimizer states loaded successfully" in (trial / "log.txt").read_text()  # DeepSpeed's engine state
    assert json.loads((trial / "status.json").read_text())["status"] == "done"
    state = trial / "checkpoints" / "last" / "accelerate"
    assert len(list(state.rglob("*optim_states.pt"))) == 2  # both ranks' ZeRO partitions, after the restart
    assert rows[0] == trial_record(runs[0])[0][0]  # the epoch before the kill is the uninterrupted run's
    assert best["trial_id"] == "t000" and best["value"] == max(r[2] for r in rows)


def test_a_deepspeed_rank_killed_ends_with_the_uninterrupted_runs_numbers(runs: tuple[Path, Path]) -> None:
    rows, best = trial_record(runs[1])
    reference_rows, reference_best = trial_record(runs[0])
    assert rows == reference_rows
    assert (best["value"], best["checkpoint_sha256"]) == (reference_best["value"], reference_best["checkpoint_sha256"])


def test_one_of_two_ddp_workers_killed_restarts_the_train_run_from_its_last_epoch(ray_cluster, tmp_path):
    """A two-worker DDP trial through Ray Train, one worker process SIGKILLed after the first epoch: Ray
    Train restarts the worker group (compute.max_failures) and train_func resumes from checkpoints/last;
    rank 0 alone reports, every epoch once, and the trial's best epoch is the stage's best."""
    raw = tiny_spec(
        name="ddp-kill",
        compute={"workers_per_trial": 2, "strategy": "ddp", "max_failures": 1},
        stages={"localize": {"epochs": 4, "max_videos": 2, "params": {"lr": 1.0e-3}}, "semantic": None},
    )
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    trial = tmp_path / "results" / "ddp-kill" / "localize" / "trials" / "t000"
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_rank_once_reported, args=(trial, killed))
    killer.start()
    assert main(["run", str(tmp_path / "ddp.yaml"), "--results", str(tmp_path / "results")]) == 0
    killer.join()
    assert killed
    rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert f"resumed {trial} at epoch " in (trial / "log.txt").read_text()
    assert json.loads((trial / "status.json").read_text())["status"] == "done"
    best = json.loads((tmp_path / "results" / "ddp-kill" / "localize" / "best.json").read_text())
    assert best["trial_id"] == "t000" and best["value"] == max(r["val/miou"] for r in rows)
