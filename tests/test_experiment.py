"""Two-stage experiments on a real local Ray (2 CPUs) with synthetic data, and the same in --local.

One shortened demo (conftest.py's tiny_spec with a pre-trained base: tiny preset, 2 videos per subset
and split) runs through ``aavs run`` twice, in --local and on Ray in a process of its own; the tests
check that both compute the same numbers, that the Ray run is quiet on a pipe, the hand-over from
stage one to stage two and skipping of unchanged stages. Two-worker trials: test_faults.py (DDP, a
worker killed) and test_submit.py (DeepSpeed ZeRO-2, in a submitted job). Killed and resumed: test_train.py
(a trial), test_faults.py (the --local driver, a Ray Train worker), test_search_ray.py (a Tune
experiment), test_node_loss.py (a node).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_spec

from aavs.orchestrator.cli import main

# The runs compared here are a --local one and a Ray one in a child process (its own local Ray).
pytestmark = [pytest.mark.slow, pytest.mark.ray]

ANSI = re.compile(r"\x1b\[")
# A shortened demo: two stage-one trials, then one stage-two trial, from a pre-trained base (as the
# demo's), first in, first out, so that --local and Ray run the same trials; one video a step per
# epoch: what is compared is determinism and the hand-over, not learning.
SHORT_DEMO = tiny_spec(name="short-demo", model={"pretrain": {"steps": 2, "images_per_step": 2}})


def write_spec(folder: Path, spec: dict = SHORT_DEMO) -> Path:
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
def runs(tmp_path_factory) -> dict[str, Any]:
    """SHORT_DEMO in --local, then `aavs run` in a process of its own, as a user starts it (its own Ray),
    writing to a pipe: {"local": its results, "ray": its results, "output": what the Ray run printed}."""
    folder = tmp_path_factory.mktemp("short-demo")
    spec_file = write_spec(folder)
    assert main(["run", str(spec_file), "--local", "--results", str(folder / "local")]) == 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never this process's Ray
    proc = subprocess.run(
        [sys.executable, "-m", "aavs.orchestrator.cli", "run", str(spec_file), "--results", str(folder / "ray")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**env, "COLUMNS": "100"},
        timeout=900,
    )
    output = proc.stdout.decode()
    assert proc.returncode == 0, output[-4000:]
    return {"local": folder / "local" / "short-demo", "ray": folder / "ray" / "short-demo", "output": output}


@pytest.fixture(scope="module")
def ray_run(runs: dict[str, Any]) -> Path:
    return runs["ray"]


def test_best_trial_and_its_masks_feed_every_stage_two_trial(ray_run: Path):
    best = json.loads((ray_run / "localize" / "best.json").read_text())
    trials = sorted((ray_run / "localize" / "trials").iterdir())
    assert len(trials) == 2
    assert {json.loads((t / "status.json").read_text())["status"] for t in trials} == {"done"}
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
    assert len(semantic) == 1
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


def test_local_mode_produces_the_same_layout(runs: dict[str, Any]):
    """The --local run writes the files the Ray run writes (Tune's own files aside)."""
    local, ray_run = runs["local"], runs["ray"]

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
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.name in keep and "superseded" not in str(p) and "/tune/" not in str(p)  # Tune's own files
        }

    assert layout(local) == layout(ray_run)
    board = json.loads((local / "leaderboard.json").read_text())
    assert [s["status"] for s in board["stages"]] == ["done", "done"]


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


@pytest.mark.subprocess
def test_local_and_ray_give_the_same_numbers_and_ray_is_quiet_on_a_pipe(runs: dict[str, Any], capsys):
    """One-worker trials compute the same numbers in --local and under Ray (same thread count per trial,
    two trials at once on Ray); the pre-trained base is the same in both modes and every trial starts
    from it. The Ray run on a pipe: one plain line per event and reported epoch, each warning once, no
    Ray worker output, no colours; the trials' and the stage tasks' output is in their log files, and
    `aavs logs` prints it. (A resumed run: test_search_ray.py's Optuna stage killed mid-trial.)"""
    output = runs["output"]
    bases = [runs[mode] / "base" for mode in ("local", "ray")]
    assert len({hashlib.sha256((b / "model.safetensors").read_bytes()).hexdigest() for b in bases}) == 1
    for base in bases:
        configs = sorted(base.parent.glob("*/trials/*/config.json"))
        assert len(configs) == 3
        assert {json.loads(c.read_text())["model"]["pretrained"] for c in configs} == {str(base.resolve())}
    local = trial_numbers(runs["local"])
    assert set(local) == {
        "localize/trials/t000",
        "localize/trials/t001",
        "semantic/trials/t000",
        "localize",
        "semantic",
    }
    assert trial_numbers(runs["ray"]) == local

    lines = output.splitlines()
    assert not [line for line in lines if "pid=" in line or line.startswith("(")], output  # no worker output
    assert not ANSI.search(output)
    events = lines[: lines.index("experiment short-demo (done)")]  # then the final leaderboard's tables
    assert "" not in events, output
    assert "[repeated" not in output and "Setting accelerator" not in output
    warnings = Counter(line.split(" WARNING ", 1)[1] for line in lines if " WARNING " in line)
    assert warnings and max(warnings.values()) == 1, warnings
    assert any("model.vggish in the experiment file" in w for w in warnings)
    assert sum(" epoch " in line for line in events) == 2 * 2 + 2  # each trial's each epoch, once
    ray = runs["ray"]
    for trial in ray.glob("*/trials/*"):
        assert "epoch 1" in (trial / "log.txt").read_text(), trial
    assert "Setting accelerator" in (ray / "localize" / "trials" / "t000" / "log.txt").read_text()
    assert (ray / "localize" / "masks.log.txt").is_file() and (ray / "semantic" / "test.log.txt").is_file()
    capsys.readouterr()
    assert main(["logs", str(ray), "semantic/t000"]) == 0
    assert "epoch 1 (phase" in capsys.readouterr().out


def test_second_run_skips_unchanged_stages(ray_run: Path, caplog):
    """The Ray run's folder run again (--local, the quicker mode: which mode runs is not what is shown)
    with stage two changed: stage one is skipped, stage two's old results are kept aside. (Last in the
    module: it changes the Ray run's stage two.)"""
    spec_file = ray_run.parent.parent / "short-demo.yaml"
    before = {p: p.stat().st_mtime_ns for p in (ray_run / "localize").rglob("*") if p.is_file()}
    sem_before = (ray_run / "semantic" / "best.json").read_text()
    caplog.set_level("INFO")
    # Stage two changes (one more epoch); stage one is unchanged and must not run again.
    args = ["run", str(spec_file), "--local", "--results", str(ray_run.parent), "--set", "stages.semantic.epochs=3"]
    assert main(args) == 0
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
