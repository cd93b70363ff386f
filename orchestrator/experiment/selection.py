"""A stage's best trial, by the one ranking rule (:func:`aavs.orchestrator.results.ranking.rank_trials`)
that the leaderboard and ``aavs leaderboard --json`` use too."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from aavs.datasets import atomic
from aavs.models import registry
from aavs.orchestrator import results
from aavs.orchestrator.experiment.spec import StageSpec
from aavs.orchestrator.results.ranking import rank_trials, trial_dirs


class StageFailed(RuntimeError):
    """No trial of a stage produced a checkpoint."""


def pick_best(stage: StageSpec, stage_dir: Path, data_root: Path) -> results.BestTrial:
    """The trial with the best value of the stage's metric among those with a best checkpoint; with
    ``repeats``, the best seed of the configuration with the best mean."""
    for trial_dir in trial_dirs(stage_dir):  # every trial has ended: a best/ commit a kill cut short, finished
        atomic.settle(trial_dir / results.BEST)
    ranked = rank_trials(stage_dir, stage.tune.metric, stage.tune.mode)
    if not ranked:
        raise StageFailed(f"stage {stage.name}: no trial produced a checkpoint (see the trials' status.json)")
    best = ranked[0]
    checkpoint = best.trial_dir / results.BEST
    values = best.configuration_values
    return results.BestTrial(
        stage=stage.name,
        trial_id=best.trial_id,
        metric=stage.tune.metric,
        mode=stage.tune.mode,
        value=best.value,
        checkpoint=str(checkpoint),
        checkpoint_sha256=registry.checkpoint_digest(checkpoint),
        params=best.params,
        data_root=str(data_root),
        repeats=len(values),
        configuration_mean=best.configuration_mean,
        configuration_std=statistics.stdev(values) if len(values) > 1 else 0.0,
    )


def last_report(trial_dir: Path) -> dict[str, Any] | None:
    """What a searcher learns from an ended trial: its last report (None: it failed or never reported)."""
    status = results.read_status(trial_dir)
    if status is None or status.status == results.TrialStatus.FAILED:
        return None
    rows = results.read_metrics(trial_dir)
    return rows[-1].model_dump() if rows else None


__all__ = ["StageFailed", "last_report", "pick_best", "trial_dirs"]
