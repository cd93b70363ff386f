"""The Ray head lost mid-stage: the driver and Tune's controller run there, so the run ends with it.
`aavs resume` against a fresh head, with the same results folder (a cluster's shared storage), continues
every stage: Tune's experiment state of the interrupted stage is restored (its finished trial is not run
again, its running trial continues at its epoch, the rest of the grid is run), the next stage runs, and
the results are the uninterrupted run's.

Both heads are real Ray heads on this machine (``ray.cluster_utils.Cluster``, two CPUs each); the
driver is `aavs run` in a process of its own joined to the first head through ``RAY_ADDRESS`` (as on a
cluster's head node). Losing the head is: the driver's process group SIGKILLed, every process of the
head node killed (GCS, raylet and its workers).

A ``faults`` test (about 2 minutes on 2 cores): `make test` leaves it out, `make test-faults` runs it
(or ``pytest -m faults tests/test_head_loss.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_spec

from aavs.orchestrator.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.subprocess, pytest.mark.faults]

SPEC = tiny_spec(
    name="head-loss",
    stages={
        "localize": {
            "epochs": 3,
            # phase A: epochs 0 and 1, so the trial running when the head is lost resumes inside it
            "params": {"lr": {"grid": [1.0e-3, 3.0e-3, 1.0e-2]}, "adapter_warmup": 0.67},
            "tune": {"metric": "val/miou", "mode": "max", "max_concurrent": 1},  # one trial after another
        }
    },
)


def best_values(folder: Path) -> dict[str, tuple[Any, ...]]:
    out = {}
    for stage in ("localize", "semantic"):
        best = json.loads((folder / stage / "best.json").read_text())
        out[stage] = (best["trial_id"], best["value"], best["checkpoint_sha256"], best["test"])
    return out


def epochs(trial: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (trial / "metrics.jsonl").read_text().splitlines()]


def test_a_lost_head_is_resumed_on_a_fresh_one_to_the_uninterrupted_results(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    spec_file = tmp_path / "head-loss.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    assert main(["run", str(spec_file), "--local", "--results", str(tmp_path / "reference")]) == 0

    folder = tmp_path / "results" / SPEC["name"]
    trials = folder / "localize" / "trials"
    heads = [Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})]
    try:
        env = {**os.environ, "RAY_ADDRESS": heads[0].address}
        driver = subprocess.Popen(
            [sys.executable, "-m", "aavs.orchestrator.cli", "run", str(spec_file), "--results", str(folder.parent)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 600
        while time.time() < deadline and not (trials / "t001" / "metrics.jsonl").is_file():
            assert driver.poll() is None, "the run ended before its head could be lost"
            time.sleep(0.02)
        trial = json.loads((trials / "t001" / "node.json").read_text())["pid"]
        os.kill(trial, signal.SIGSTOP)  # the running trial goes no further while its head is lost
        os.killpg(driver.pid, signal.SIGKILL)
        heads[0].remove_node(heads[0].head_node, allow_graceful=False)  # GCS, raylet, dashboard, workers
        os.kill(trial, signal.SIGKILL)  # (a stopped worker outlives its raylet)
        driver.wait(timeout=60)
        assert json.loads((trials / "t000" / "status.json").read_text())["status"] == "done"
        assert epochs(trials / "t001") == [0], "the head was lost too late"
        assert not (trials / "t002").exists() and not (folder / "localize" / "done.json").exists()
        finished, first_report = (
            (trials / "t000" / "metrics.jsonl").read_bytes(),
            (trials / "t001" / "metrics.jsonl").read_bytes(),
        )

        heads.append(Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}))
        resumed = subprocess.run(
            [sys.executable, "-m", "aavs.orchestrator.cli", "resume", str(folder)],
            env={**os.environ, "RAY_ADDRESS": heads[1].address},
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        for head in heads:
            head.shutdown()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"stage localize: restoring the Tune experiment in {folder / 'localize' / 'tune'}" in resumed.stderr
    assert f"{folder}: taking over the lock of " in resumed.stderr  # the lost driver's
    assert (trials / "t000" / "metrics.jsonl").read_bytes() == finished  # never run again
    assert (trials / "t001" / "metrics.jsonl").read_bytes().startswith(first_report)
    assert f"resumed {trials / 't001'} at epoch 1 (phase A)" in (trials / "t001" / "log.txt").read_text()
    assert sorted(p.name for p in trials.iterdir()) == ["t000", "t001", "t002"]
    assert all(epochs(trials / name) == [0, 1, 2] for name in ("t000", "t001", "t002"))
    assert (folder / "semantic" / "done.json").is_file()
    assert best_values(folder) == best_values(tmp_path / "reference" / SPEC["name"])
