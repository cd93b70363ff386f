"""Two-stage experiments on a real local Ray (2 CPUs) with synthetic data, and the same in --local.

One small spec (tiny preset, 2 videos per subset and split) runs through ``aavs run``; the tests
check the hand-over from stage one to stage two, skipping of unchanged stages, resume after a kill
during stage two, and multi-worker trials through Ray Train (DDP and DeepSpeed ZeRO-2 on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aavs.orchestrator.cli import main

# Every test here runs on a real local Ray (conftest.py's ray_cluster, one per module).
pytestmark = [pytest.mark.slow, pytest.mark.ray]

FIFO = {"metric": "val/miou", "mode": "max", "num_samples": 1, "max_concurrent": 2}
SPEC = {
    "name": "two-stage",
    "data": {"synthetic": {"videos_per_split": 2, "seed": 0}},
    "model": {"preset": "tiny"},
    "compute": {"workers_per_trial": 1, "cpus_per_worker": 1, "loader_workers": 0},
    "stages": [
        {
            "name": "localize",
            "task": "avss-binary",
            "epochs": 2,
            "max_videos": 3,
            "params": {"lr": {"grid": [3.0e-4, 1.0e-3, 3.0e-3]}},
            "tune": {
                "metric": "val/miou",
                "mode": "max",
                "num_samples": 1,
                "max_concurrent": 2,
                "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
            },
        },
        {
            "name": "semantic",
            "task": "avss",
            "prior": "localize",
            "init_from": "localize",
            "epochs": 2,
            "max_videos": 3,
            "params": {"lr": {"grid": [1.0e-3, 3.0e-3]}},
            "tune": {"metric": "val/miou", "mode": "max", "num_samples": 1, "max_concurrent": 2},
        },
    ],
}


def write_spec(folder: Path, spec: dict = SPEC) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tree_digest(folder: Path) -> str:
    """Content hash of every file under ``folder`` (mask PNGs)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*.png")):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def best_value(trial_dir: Path, metric: str) -> float:
    return json.loads((trial_dir / "best" / "metrics.json").read_text())[metric]


@pytest.fixture(scope="module")
def ray_run(ray_cluster, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray-run")
    assert main(["run", str(write_spec(folder)), "--results", str(folder / "results")]) == 0
    return folder / "results" / "two-stage"


def test_best_trial_and_its_masks_feed_every_stage_two_trial(ray_run: Path):
    best = json.loads((ray_run / "localize" / "best.json").read_text())
    trials = sorted((ray_run / "localize" / "trials").iterdir())
    assert len(trials) == 3
    # ASHA may stop a trial after its first epoch; every trial ends in a final state either way.
    statuses = {json.loads((t / "status.json").read_text())["status"] for t in trials}
    assert statuses <= {"done", "stopped"}
    values = {t.name: best_value(t, "val/miou") for t in trials}
    assert best["trial_id"] == max(values, key=values.get) and best["value"] == max(values.values())
    assert {"stage", "trial_id", "metric", "mode", "value", "checkpoint", "data_root", "masks"} <= set(best)
    assert all(Path(best[k]).is_absolute() for k in ("checkpoint", "data_root", "masks"))
    # The masks folder was written by exactly the best checkpoint (recorded hash = file hash) ...
    ckpt_sha = hashlib.sha256((Path(best["checkpoint"]) / "model.safetensors").read_bytes()).hexdigest()
    success = json.loads((Path(best["masks"]) / "_SUCCESS.json").read_text())
    assert success["checkpoint_sha256"] == ckpt_sha == best["checkpoint_sha256"]
    # ... and re-exporting from that checkpoint gives byte-identical masks (with the single intra-op
    # thread of a 1-CPU Ray task: summation order otherwise flips the odd pixel at a near-tie).
    import torch

    from aavs.orchestrator.recipe.evaluation import export_masks

    again = ray_run.parent / "re-exported"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_masks(best["checkpoint"], best["data_root"], again)
    finally:
        torch.set_num_threads(threads)
    assert tree_digest(again) == tree_digest(Path(best["masks"]))
    # Every stage-two trial trained with those masks and that checkpoint's weights.
    semantic = sorted((ray_run / "semantic" / "trials").iterdir())
    assert len(semantic) == 2
    for trial in semantic:
        config = json.loads((trial / "config.json").read_text())
        assert config["prior"] == best["masks"] and config["init_from"] == best["checkpoint"]
        rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1]
        assert all(0.0 <= r["val/miou"] <= 1.0 and "val/miou_no_bg" in r for r in rows)
    two = json.loads((ray_run / "semantic" / "best.json").read_text())
    assert set(two["test"]) == {"miou", "fscore", "miou_no_bg", "fscore_no_bg"}


def test_best_value_is_reproduced_by_aavs_evaluate(ray_run: Path, capsys):
    best = json.loads((ray_run / "localize" / "best.json").read_text())
    assert main(["evaluate", best["checkpoint"], "--data", best["data_root"], "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(best["value"], abs=1e-6)


def test_second_run_skips_unchanged_stages(ray_run: Path, caplog):
    spec_file = ray_run.parent.parent / "two-stage.yaml"
    before = {p: p.stat().st_mtime_ns for p in (ray_run / "localize").rglob("*") if p.is_file()}
    sem_before = (ray_run / "semantic" / "best.json").read_text()
    caplog.set_level("INFO")
    # Stage two changes (one more epoch); stage one is unchanged and must not run again.
    assert main(["run", str(spec_file), "--results", str(ray_run.parent), "--set", "stages.semantic.epochs=3"]) == 0
    assert "stage localize: unchanged since it completed; skipping" in caplog.text
    after = {p: p.stat().st_mtime_ns for p in (ray_run / "localize").rglob("*") if p.is_file()}
    assert after == before
    rows = (ray_run / "semantic" / "trials" / "t000" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1, 2]
    assert list(ray_run.parent.glob("semantic.superseded-*")) == []  # superseded folders live beside the stage
    assert list(ray_run.glob("semantic.superseded-*"))  # the 2-epoch results were kept aside, not deleted
    old = next(ray_run.glob("semantic.superseded-*"))
    assert json.loads((old / "best.json").read_text()) == json.loads(sem_before)
    assert json.loads((ray_run / "semantic" / "done.json").read_text()) != json.loads((old / "done.json").read_text())


def test_local_mode_produces_the_same_layout(ray_run: Path, tmp_path):
    spec = {
        **SPEC,
        "stages": [
            # ASHA needs Ray: --local runs the same trials first in, first out
            dict(SPEC["stages"][0], params={"lr": {"grid": [1.0e-3, 3.0e-3]}}, tune=FIFO),
            dict(SPEC["stages"][1], params={"lr": 1.0e-3}),
        ],
    }
    assert main(["run", str(write_spec(tmp_path, spec)), "--local", "--results", str(tmp_path / "results")]) == 0
    local = tmp_path / "results" / "two-stage"

    def layout(root: Path) -> set[str]:
        keep = {
            "spec.yaml",
            "spec.json",
            "leaderboard.json",
            "best.json",
            "done.json",
            "inputs.json",
            "metrics.jsonl",
            "status.json",
            "params.json",
            "config.json",
            "_SUCCESS.json",
            "model.safetensors",
        }
        return {
            str(p.relative_to(root)).replace("t001", "t000").replace("t002", "t000")
            for p in root.rglob("*")
            if p.name in keep and "superseded" not in str(p) and "/tune/" not in str(p)  # Tune's own files
        }

    assert layout(local) == layout(ray_run)
    board = json.loads((local / "leaderboard.json").read_text())
    assert [s["status"] for s in board["stages"]] == ["done", "done"]


@pytest.mark.subprocess
def test_resume_after_kill_during_stage_two(ray_cluster, tmp_path):
    spec_file = write_spec(
        tmp_path,
        {
            **SPEC,
            "stages": [
                dict(SPEC["stages"][0], params={"lr": 1.0e-3}, tune=FIFO),
                dict(SPEC["stages"][1], epochs=4, max_videos=6, params={"lr": 1.0e-3}),
            ],
        },
    )
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aavs.orchestrator.cli", "run", str(spec_file), "--local", "--results", str(results)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    trial = results / "two-stage" / "semantic" / "trials" / "t000"
    deadline = time.time() + 600
    while time.time() < deadline and not (trial / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    stage_one = {p: p.stat().st_mtime_ns for p in (results / "two-stage" / "localize").rglob("*") if p.is_file()}
    assert not (results / "two-stage" / "semantic" / "done.json").exists()

    assert json.loads((results / "two-stage" / "run.json").read_text()) == {"mode": "local"}
    assert main(["resume", str(results / "two-stage"), "--ray"]) == 0  # on Ray, this time, by request
    assert {
        p: p.stat().st_mtime_ns for p in (results / "two-stage" / "localize").rglob("*") if p.is_file()
    } == stage_one
    rows = [json.loads(r) for r in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert json.loads((results / "two-stage" / "semantic" / "best.json").read_text())["trial_id"] == "t000"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", pytest.param("deepspeed", marks=pytest.mark.deepspeed)])
def test_two_worker_trial_through_ray_train(ray_cluster, tmp_path, strategy):
    spec = {
        **SPEC,
        "name": f"two-workers-{strategy}",
        "compute": {
            "workers_per_trial": 2,
            "cpus_per_worker": 1,
            "loader_workers": 0,
            "strategy": strategy,
            "deepspeed": {"zero_stage": 2},
        },
        "stages": [dict(SPEC["stages"][0], params={"lr": 1.0e-3})],
    }
    assert main(["run", str(write_spec(tmp_path, spec)), "--results", str(tmp_path / "results")]) == 0
    trial = tmp_path / "results" / spec["name"] / "localize" / "trials" / "t000"
    rows = [json.loads(r) for r in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # rank 0 alone writes: no duplicated lines
    assert json.loads((trial / "status.json").read_text())["status"] == "done"
    if strategy == "deepspeed":  # both ranks' optimizer partitions are in the checkpoint
        shards = list((trial / "checkpoints" / "last" / "accelerate").rglob("*optim_states.pt"))
        assert len(shards) == 2
    best = json.loads((tmp_path / "results" / spec["name"] / "localize" / "best.json").read_text())
    assert best["trial_id"] == "t000" and 0.0 <= best["value"] <= 1.0


# A shortened demo: two stage-one trials, one stage-two trial, FIFO, so that --local and Ray run the same trials.
SHORT_DEMO = {  # the demo's shape, one video a step per epoch: what is compared is determinism, not learning
    **SPEC,
    "name": "short-demo",
    "model": {"preset": "tiny", "pretrain": {"steps": 2, "images_per_step": 2}},
    "stages": [
        dict(SPEC["stages"][0], params={"lr": {"grid": [1.0e-3, 3.0e-3]}}, tune={"num_samples": 1}, max_videos=1),
        {
            **{k: v for k, v in SPEC["stages"][1].items() if k != "init_from"},  # from the base, as the demo
            "params": {"lr": 1.0e-3},
            "tune": {"num_samples": 1},
            "max_videos": 1,
        },
    ],
}


def trial_numbers(results: Path) -> dict[str, list[float]]:
    """Every trial's val scores per epoch, and each stage's best.json value and test scores."""
    numbers = {}
    for rows in sorted(results.glob("*/trials/*/metrics.jsonl")):
        trial = str(rows.parent.relative_to(results))
        numbers[trial] = [json.loads(r)[k] for r in rows.read_text().splitlines() for k in ("val/miou", "val/fscore")]
    for best in sorted(results.glob("*/best.json")):
        record = json.loads(best.read_text())
        numbers[best.parent.name] = [record["value"], *(record["test"][k] for k in sorted(record["test"]))]
    return numbers


@pytest.mark.slow
@pytest.mark.subprocess
def test_local_and_ray_give_the_same_numbers_and_a_resumed_run_ends_the_same(ray_cluster, tmp_path):
    """One-worker trials compute the same numbers in --local and under Ray (same thread count per trial,
    two trials at once on Ray); a Ray run killed in stage one and resumed (in the mode it started in)
    ends with the uninterrupted run's values. The pre-trained base is the same in both modes, every
    trial starts from it, and a resume reuses it."""
    spec_file = write_spec(tmp_path, SHORT_DEMO)
    assert main(["run", str(spec_file), "--local", "--results", str(tmp_path / "local")]) == 0
    assert main(["run", str(spec_file), "--results", str(tmp_path / "ray")]) == 0
    bases = [tmp_path / mode / "short-demo" / "base" for mode in ("local", "ray")]
    assert len({hashlib.sha256((b / "model.safetensors").read_bytes()).hexdigest() for b in bases}) == 1
    for base in bases:
        configs = sorted(base.parent.glob("*/trials/*/config.json"))
        assert len(configs) == 3
        assert {json.loads(c.read_text())["model"]["pretrained"] for c in configs} == {str(base.resolve())}
    local = trial_numbers(tmp_path / "local" / "short-demo")
    assert set(local) == {
        "localize/trials/t000",
        "localize/trials/t001",
        "semantic/trials/t000",
        "localize",
        "semantic",
    }
    assert trial_numbers(tmp_path / "ray" / "short-demo") == local

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aavs.orchestrator.cli", "run", str(spec_file), "--results", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    first_epoch = killed / "short-demo" / "localize" / "trials" / "t000" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not first_epoch.exists():
        assert proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "short-demo" / "localize" / "done.json").exists()
    record = killed / "short-demo" / "base" / "pretraining.json"
    pretrained_at = record.stat().st_mtime_ns
    assert main(["resume", str(killed / "short-demo")]) == 0  # on Ray, as it was started
    assert record.stat().st_mtime_ns == pretrained_at  # the base is not trained again
    assert trial_numbers(killed / "short-demo") == local
