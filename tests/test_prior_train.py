"""``prior_train``: which prior stage two's training set carries, the true sounding mask (the paper's) or
stage one's exported masks of the training split; a stage parameter, searched like any other, and a
column of the leaderboard when searched.

The trials read the session's tiny run (its data, its stage one's masks and best checkpoint): the masks
are the ones every stage-two trial shares, exported once by stage one's mask task."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from conftest import TINY_SPEC, tiny_spec
from rich.console import Console

from aavs.datasets import masks
from aavs.datasets.errors import InputError
from aavs.datasets.layout import select_videos
from aavs.orchestrator import results
from aavs.orchestrator.experiment.runners.local import LocalRunner
from aavs.orchestrator.experiment.search_space import planned_trials
from aavs.orchestrator.experiment.spec import parse_spec, spec_hash
from aavs.orchestrator.experiment.stage_state import stage_inputs
from aavs.orchestrator.experiment.trial_config import base_trial_config, effective_config
from aavs.orchestrator.recipe import train
from aavs.orchestrator.recipe.config import TrainConfig
from aavs.orchestrator.views.leaderboard import build_leaderboard, render_leaderboard

BOTH = {"grid": ["ground-truth", "stage-one"]}


def test_prior_train_is_a_parameter_of_stages_with_a_prior_only(tmp_path: Path) -> None:
    spec = parse_spec(tiny_spec(), "tiny.yaml")
    localize, semantic = spec.stages
    assert semantic.params["prior_train"] == "ground-truth"  # the paper's, filled in as every default
    assert "prior_train" not in localize.params
    shown = effective_config(spec, tmp_path)["stages"]  # aavs run --print-config
    assert "prior_train" not in shown["localize"] and shown["semantic"]["prior_train"] == "ground-truth"
    searched = parse_spec(tiny_spec(stages={"semantic": {"params": {"prior_train": BOTH}}}), "tiny.yaml")
    assert planned_trials(searched.stages[1]) == 2

    with pytest.raises(InputError, match=r"tiny.yaml: stages.0.params.prior_train: expected no prior_train"):
        parse_spec(tiny_spec(stages={"localize": {"params": {"prior_train": "stage-one"}}}), "tiny.yaml")
    end_to_end = tiny_spec(stages={"semantic": {"prior": None, "params": {"prior_train": "stage-one"}}})
    with pytest.raises(InputError, match=r"stages.1.params.prior_train: expected no prior_train"):
        parse_spec(end_to_end, "tiny.yaml")
    with pytest.raises(InputError, match=r"stages.1.params.prior_train: expected one of 'ground-truth' or 'stage-one'"):
        parse_spec(tiny_spec(stages={"semantic": {"params": {"prior_train": "stage one"}}}), "tiny.yaml")
    trial = {"task": "avss", "data_root": "data", "trial_dir": "t", "prior_train": "stage-one"}  # no masks given
    with pytest.raises(InputError, match=r"training config: prior_train: expected ground-truth without a prior"):
        TrainConfig.load(trial)


def test_the_default_prior_train_leaves_a_completed_stage_complete(tmp_path: Path) -> None:
    """A stage two completed before prior_train existed has the same inputs (so `aavs resume` keeps it);
    stage-one training is another stage."""
    spec = parse_spec(tiny_spec(), "tiny.yaml")
    best = results.BestTrial(
        stage="localize",
        trial_id="t000",
        metric="val/miou",
        mode="max",
        value=0.5,
        checkpoint="c",
        checkpoint_sha256="0" * 64,
        params={},
        data_root=str(tmp_path),
    )
    inputs = stage_inputs(spec, spec.stages[1], tmp_path, {"localize": best})
    assert "prior_train" not in inputs["stage"]["params"]
    other = parse_spec(tiny_spec(stages={"semantic": {"params": {"prior_train": "stage-one"}}}), "tiny.yaml")
    assert spec_hash(stage_inputs(other, other.stages[1], tmp_path, {"localize": best})) != spec_hash(inputs)


def test_a_stage_searching_both_priors_trains_each_trial_on_its_stated_masks(
    tiny_results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two trials, one per value; the files each trial's datasets opened (aavs.datasets.masks.read_gray
    recorded around the real reader): the ground-truth trial opened no stage-one mask of a training
    video, the stage-one trial opened stage one's masks of its training videos; both validated on them."""
    raw = {**TINY_SPEC, "stages": [TINY_SPEC["stages"][0], {**TINY_SPEC["stages"][1], "epochs": 1, "max_videos": 1}]}
    raw["stages"][1]["params"] = {"lr": 1.0e-3, "prior_train": BOTH}
    spec = parse_spec(raw, "tiny.yaml")
    stage = spec.stages[1]
    bests = {"localize": results.read_best(tiny_results / "localize")}
    stage_one_masks = Path(bests["localize"].masks)
    results_dir = tmp_path / "tiny"
    cache = Path(shutil.copytree(tiny_results / results.CACHE_DIR, results_dir / results.CACHE_DIR))
    results.open_results(results_dir, "run")
    results.write_spec(results_dir, spec.to_dict(), spec_hash(spec.to_dict()))

    opened: dict[str, list[Path]] = {}
    trial: list[str] = []
    read_gray, train_func = masks.read_gray, train.train_func

    def recording_read_gray(path, *args, **kwargs):
        opened.setdefault(trial[-1], []).append(Path(path))
        return read_gray(path, *args, **kwargs)

    def recording_train_func(config):
        trial.append(Path(config["trial_dir"]).name)
        return train_func(config)

    monkeypatch.setattr(masks, "read_gray", recording_read_gray)
    monkeypatch.setattr(train, "train_func", recording_train_func)
    base = base_trial_config(spec, stage, tiny_results / results.DATA_DIR, cache, bests)
    LocalRunner(spec, results_dir).run_search(stage, base, results_dir / stage.name)

    params = {t: results.read_params(results_dir / stage.name / "trials" / t) for t in trial}
    by_prior = {p["prior_train"]: t for t, p in params.items()}
    assert sorted(by_prior) == ["ground-truth", "stage-one"]
    train_videos = {(r.subset, r.uid) for r in select_videos(tiny_results / results.DATA_DIR, "avss", "train")}
    val_videos = {(r.subset, r.uid) for r in select_videos(tiny_results / results.DATA_DIR, "avss", "val")}

    def stage_one_files(t: str, videos: set[tuple[str, str]]) -> set[Path]:
        """The stage-one mask files trial ``t`` opened of ``videos``."""
        return {
            p
            for p in opened.get(t, [])
            if p.is_relative_to(stage_one_masks) and (p.parent.parent.name, p.parent.name) in videos
        }

    assert not stage_one_files(by_prior["ground-truth"], train_videos)
    stage_one_training = stage_one_files(by_prior["stage-one"], train_videos)
    assert stage_one_training and {(p.parent.parent.name, p.parent.name) for p in stage_one_training} <= train_videos
    for t in trial:  # both validate on stage one's masks, as the paper does
        assert stage_one_files(t, val_videos)

    text = io.StringIO()
    Console(file=text, width=200).print(render_leaderboard(build_leaderboard(results_dir), stage="semantic"))
    header = next(line for line in text.getvalue().splitlines() if "trial" in line and "status" in line)
    assert "prior_train" in header
    assert "ground-truth" in text.getvalue() and "stage-one" in text.getvalue()
