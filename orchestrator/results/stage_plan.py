"""What a stage of ``spec.json`` plans, read from its saved dict: which ``params`` are searched and
which fixed, and how many trials it runs. The views need these without the experiment's schema
(aavs.orchestrator.experiment.search_space states the same rules on the parsed StageSpec;
tests/test_results.py checks that the two agree)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid")
# Searchers that propose each trial from the results so far: num_samples trials, grids not allowed.
ADAPTIVE_SEARCHERS = ("optuna", "hyperopt")
# Searchers that enumerate every combination of the listed values, choice lists included.
ENUMERATING_SEARCHERS = ("grid",)


def is_distribution(value: Any) -> bool:
    """Whether a ``params`` entry is searched (``{loguniform: [...]}`` and the like), not a fixed value."""
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def searched(params: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a stage's ``params`` that are searched (a distribution, not a fixed value)."""
    return {k: v for k, v in params.items() if is_distribution(v)}


def fixed(params: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a stage's ``params`` that every trial shares."""
    return {k: v for k, v in params.items() if not is_distribution(v)}


def planned_trials(stage: Mapping[str, Any]) -> int:
    """The trials a stage of ``spec.json`` runs: ``num_samples`` configurations, times every grid's size
    for random and grid search (as Tune's grid_search), each ``repeats`` times. A key a format-1 spec
    lacks takes its default (random search, one repeat)."""
    tune = stage.get("tune") or {}
    search = tune.get("search", "random")
    configurations = int(tune.get("num_samples", 1))
    if search not in ADAPTIVE_SEARCHERS:
        for value in searched(stage.get("params") or {}).values():
            if "grid" in value or ("choice" in value and search in ENUMERATING_SEARCHERS):
                configurations *= len(next(iter(value.values())))
    return configurations * int(tune.get("repeats", 1))
