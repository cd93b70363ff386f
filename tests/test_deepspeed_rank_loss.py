"""One rank of a two-worker DeepSpeed ZeRO-2 trial SIGKILLed after its first epoch (as
test_faults.py's DDP test kills a DDP worker): Ray Train restarts the worker group
(``compute.max_failures``), ``train_func`` resumes from ``checkpoints/last`` (DeepSpeed's engine state
through accelerate), every epoch is reported once, and it ends with the numbers of the same trial run
without a kill (two uninterrupted runs are bit for bit the same): each rank resumes its own RNG states
(``rng_rank<r>.pt``; accelerate's own file is named by a process index that is 0 on every rank here).

A ``faults`` test (about 2 minutes on 2 cores: the uninterrupted reference and the killed run, each a
two-process DeepSpeed trial): `make test` leaves it out, `make test-faults` runs it (or
``pytest -m faults tests/test_deepspeed_rank_loss.py``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from aavs.orchestrator.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.faults]

SPEC: dict[str, Any] = {
    "name": "rank-kill",
    "data": {"synthetic": {"videos_per_split": 2, "seed": 0}},
    "model": {"preset": "tiny"},
    "compute": {
        "workers_per_trial": 2,
        "cpus_per_worker": 1,
        "loader_workers": 0,
        "strategy": "deepspeed",
        "deepspeed": {"zero_stage": 2},
        "max_failures": 1,
    },
    # Four epochs, phase A the first two: the kill after epoch 0 resumes inside phase A, from DeepSpeed's
    # engine state (optimizer partitions included); one trial of two training videos, one a rank.
    "stages": [{"name": "localize", "task": "avss-binary", "epochs": 4, "max_videos": 2, "params": {"lr": 1.0e-3}}],
}


def trial_record(results: Path) -> tuple[list[tuple[int, str, float, float]], dict[str, Any]]:
    """(epoch, phase, val mIoU, val F) of every report of the trial, and the stage's best.json."""
    folder = results / SPEC["name"] / "localize"
    rows = [json.loads(line) for line in (folder / "trials" / "t000" / "metrics.jsonl").read_text().splitlines()]
    best = json.loads((folder / "best.json").read_text())
    return [(r["epoch"], r["phase"], r["val/miou"], r["val/fscore"]) for r in rows], best


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(uninterrupted run, killed run): the killed one's rank SIGKILLed once epoch 0 is reported."""
    from ray.util.state import list_actors

    folder = tmp_path_factory.mktemp("rank-kill")
    spec_file = folder / "rank-kill.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    assert main(["run", str(spec_file), "--results", str(folder / "reference")]) == 0

    trial = folder / "results" / SPEC["name"] / "localize" / "trials" / "t000"
    killed: list[int] = []

    def kill_a_rank_after_the_first_epoch() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not (trial / "metrics.jsonl").is_file():
            time.sleep(0.05)
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        os.kill(workers[-1].pid, signal.SIGKILL)
        killed.append(workers[-1].pid)

    killer = threading.Thread(target=kill_a_rank_after_the_first_epoch)
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
