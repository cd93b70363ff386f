"""From the experiment file to each trial's ``train_func`` config, and ``aavs run --print-config``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aavs.orchestrator import results
from aavs.orchestrator.experiment.search_space import TRIAL_INDEX, fixed
from aavs.orchestrator.experiment.spec import ExperimentSpec, StageSpec
from aavs.orchestrator.recipe.config import Hyperparameters, TrainConfig


def stage_config(
    spec: ExperimentSpec, stage: StageSpec, data_root: Path, cache: Path, prior: str | None, init_from: str | None
) -> dict[str, Any]:
    """A stage's ``train_func`` config before the sampled parameters: its sections and settings under
    their own names (``prior`` and ``init_from`` become the earlier stages' masks and checkpoint)."""
    return {
        "task": stage.task,
        "data_root": str(data_root),
        "model": spec.model,
        "audio_cache": str(cache),
        "epochs": stage.epochs,
        "metric": stage.tune.metric,
        "mode": stage.tune.mode,
        "max_videos": stage.max_videos,
        "shuffle": stage.shuffle,
        "prior": prior,
        "init_from": init_from,
        "compute": spec.compute,
    }


def base_trial_config(
    spec: ExperimentSpec, stage: StageSpec, data_root: Path, cache: Path, bests: dict[str, results.BestTrial]
) -> dict[str, Any]:
    """What every trial of the stage shares: the stage's config and its fixed parameters (plain JSON)."""
    config = stage_config(
        spec,
        stage,
        data_root,
        cache,
        prior=bests[stage.prior].masks if stage.prior else None,
        init_from=bests[stage.init_from].checkpoint if stage.init_from else None,
    )
    config = {**config, "model": spec.model.model_dump(mode="json"), "compute": spec.compute.model_dump(mode="json")}
    return {**config, **fixed(stage.params)}


def trial_config(base: Mapping[str, Any], stage_dir: Path, suggestion: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's ``train_func`` config: the stage's, then the searcher's proposal (named ``trial``; a
    repeat's index under Tune's ``__trial_index__`` adds to the seed). Records ``params.json`` (every
    hyperparameter, fixed or proposed) first, so a trial's parameters are known from the moment it starts."""
    params = {k: v for k, v in {**base, **suggestion}.items() if k in Hyperparameters.model_fields}
    repeat = int(suggestion.get(TRIAL_INDEX, 0))
    if repeat:
        params["seed"] = int(params.get("seed", base["seed"])) + repeat
    trial_dir = stage_dir / "trials" / suggestion["trial"]
    results.write_params(trial_dir, params)
    return TrainConfig.load({**base, **params, "trial_dir": str(trial_dir)}).to_dict()


def effective_config(spec: ExperimentSpec, results_root: str | Path = "results") -> dict[str, Any]:
    """What ``aavs run --print-config`` shows: every stage's training config with the method's defaults
    filled in (before sampling: ``params`` are the search space), and notes on what is not the paper's."""
    results_dir = results.results_path(results_root) / spec.name
    data_root = results_dir / "data" if spec.data.synthetic else Path(spec.data.root or "")
    stages = {}
    for stage in spec.stages:
        config = stage_config(
            spec,
            stage,
            data_root,
            results_dir / "cache",
            prior=f"<masks of {stage.prior}'s best trial>" if stage.prior else None,
            init_from=f"<best checkpoint of {stage.init_from}>" if stage.init_from else None,
        )
        given = fixed(stage.params)
        resolved = TrainConfig.load({**config, **given, "trial_dir": "<trial folder>"})
        # The search spaces as written; model and compute are the experiment's, shown once below.
        hidden = {"trial_dir", "model", "compute"} | (set() if stage.prior else {"prior_train"})  # no prior, no choice
        shown = {**resolved.model_dump(mode="json", exclude=hidden), **stage.params}
        if stage.params.get("lr_b") is None:  # the task defaults fill it in: None means lr / 10
            shown["lr_b"] = resolved.learning_rate_b if "lr" in given else "lr / 10"
        if "adapter_warmup" in given:
            shown["phase_b_from_epoch"] = resolved.phase_a_epochs
        stages[stage.name] = {**shown, "num_samples": stage.tune.num_samples}
    return {
        "name": spec.name,
        "model": {**spec.to_dict()["model"], "train_base": bool(spec.model.trains_base)},
        "compute": spec.to_dict()["compute"],
        "stages": stages,
        "notes": _notes(spec, results_dir),
    }


def _notes(spec: ExperimentSpec, results_dir: Path) -> list[str]:
    """Where the run is not the paper's."""
    notes = []
    if spec.model.trains_base:
        notes.append(
            f"model.preset {spec.model.preset} has random weights: its whole Mask2Former trains too "
            "(train_base), where the method keeps a pre-trained base frozen (docs/method.md §8)"
        )
    if spec.model.pretrain:
        notes.append(
            f"model.pretrain: the {spec.model.preset} preset's base is first pre-trained on synthetic still "
            f"images ({results_dir / results.BASE_DIR}), the stand-in for the method's "
            "ADE20k base; the stages keep it frozen (docs/method.md §8)"
        )
    if spec.compute.mixed_precision != "no":
        notes.append(f"compute.mixed_precision {spec.compute.mixed_precision}: the paper trains in fp32")
    return notes
