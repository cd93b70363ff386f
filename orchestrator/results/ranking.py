"""The one ranking rule for a stage's trials: the driver's best trial (``best.json``), the leaderboard's
ranks and its ``--json`` all come from :func:`rank_trials`.

A trial's value is its best checkpoint's metric (``best/metrics.json``), not the best line of its
``metrics.jsonl``: after a population-based training exploit a trial's ``best/`` is the state it took
over, while its ``metrics.jsonl`` still holds what it reported before. With ``repeats``, trials that
differ only in their seed are one configuration; configurations are ranked by the mean of their
trials' values, then each trial by its own value, then by name.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aavs.datasets import atomic
from aavs.datasets.errors import InputError
from aavs.orchestrator.results.names import BEST, CHECKPOINT_METRICS_FILE, PARAMS_FILE
from aavs.orchestrator.results.trial_files import read_checkpoint_metrics, read_params


@dataclass(frozen=True)
class RankedTrial:
    """One trial with a best checkpoint, and where its configuration stands."""

    trial_id: str
    trial_dir: Path
    value: float  # the stage metric in best/metrics.json
    params: dict[str, Any]  # params.json ({} if absent)
    configuration_mean: float  # mean value over the trials of its configuration
    configuration_values: tuple[float, ...]  # the values of its configuration's trials (repeats), in name order

    @property
    def configuration_std(self) -> float:
        """The standard deviation over its configuration's trials (0 for a configuration of one)."""
        values = self.configuration_values
        return statistics.stdev(values) if len(values) > 1 else 0.0


def configuration_key(params: Mapping[str, Any]) -> str:
    """One configuration's trials (``repeats``) differ only in their seed: this is what they share."""
    return json.dumps({k: v for k, v in params.items() if k != "seed"}, sort_keys=True)


def trial_dirs(stage_dir: Path) -> list[Path]:
    """The stage's trial folders that a searcher proposed (they hold params.json), in name order."""
    root = Path(stage_dir) / "trials"
    return sorted(p for p in root.iterdir() if (p / PARAMS_FILE).is_file()) if root.is_dir() else []


def rank_trials(stage_dir: Path, metric: str, mode: Literal["max", "min"]) -> list[RankedTrial]:
    """The stage's trials, best first (see the module docstring); trials whose ``best/metrics.json``
    is missing or lacks ``metric`` are left out."""
    candidates: list[tuple[str, Path, float, dict[str, Any]]] = []
    for trial_dir in trial_dirs(stage_dir):
        best = atomic.readable(trial_dir / BEST)  # a commit may be under way
        metrics = read_checkpoint_metrics(best)
        if metrics is not None and metric in metrics:
            value = metrics[metric]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{best / CHECKPOINT_METRICS_FILE}: {metric} is {value!r}, not a number")
            candidates.append((trial_dir.name, trial_dir, float(value), read_params(trial_dir) or {}))
    groups: dict[str, list[float]] = {}
    for _, _, value, params in candidates:
        groups.setdefault(configuration_key(params), []).append(value)
    means = {key: statistics.fmean(values) for key, values in groups.items()}
    ranked = [
        RankedTrial(
            trial_id=trial_id,
            trial_dir=trial_dir,
            value=value,
            params=params,
            configuration_mean=means[configuration_key(params)],
            configuration_values=tuple(groups[configuration_key(params)]),
        )
        for trial_id, trial_dir, value, params in candidates
    ]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(ranked, key=lambda t: (sign * t.configuration_mean, sign * t.value, t.trial_id))
