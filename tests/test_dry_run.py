"""``aavs run --dry-run`` refuses exactly what ``aavs run`` refuses before its first trial: the same
message on stderr and exit status 2, and neither writes a results folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from aavs.orchestrator.cli import main

SPEC: dict[str, Any] = {
    "name": "dry",
    "data": {"synthetic": {"videos_per_split": 1}},
    "model": {"preset": "tiny"},
    "compute": {"workers_per_trial": 1, "gpus_per_worker": 0, "cpus_per_worker": 1},
    "stages": [{"name": "a", "task": "avss-binary", "epochs": 1, "params": {"lr": {"choice": [1e-3, 2e-3]}}}],
}

CASES = {
    # --local cannot run a scheduler that stops or mutates running trials
    "asha-local": (["--set", "stages.0.tune.scheduler=asha"], "asha stops or mutates trials while others run"),
    # a tracker whose package is not installed (wandb is in no extra the tests install)
    "tracker": (["--set", "loggers=[wandb]"], "loggers: wandb needs the Python package 'wandb'"),
    # results storage that is not a file system
    "s3": (["--results", "s3://bucket/results"], "s3:// URIs are not supported"),
    # a data root without metadata.csv
    "data-root": (["--set", "data={root: NOWHERE}"], "has no metadata.csv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dry_run_refuses_what_run_refuses(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    if case == "tracker" and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "NOWHERE").mkdir()
    spec = tmp_path / "x.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    extra, expected = CASES[case]
    results = [] if "--results" in extra else ["--results", str(tmp_path / "results")]
    args = ["run", str(spec), "--local", *results, *extra]

    assert main([*args, "--dry-run"]) == 2
    dry = capsys.readouterr()
    assert main(args) == 2
    run = capsys.readouterr()

    assert expected in run.err
    assert dry.err == run.err, (dry.err, run.err)
    assert "valid" not in dry.out
    assert not (tmp_path / "results").exists()


def test_dry_run_says_valid_to_what_run_would_start(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "x.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    assert main(["run", str(spec), "--local", "--results", str(tmp_path / "results"), "--dry-run"]) == 0
    assert capsys.readouterr().out == f"{spec}: valid\n"
    assert not (tmp_path / "results").exists()
