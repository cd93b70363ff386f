"""A stage's search: which trials run, with which parameters, named how.

Every searcher is a Ray Tune :class:`~ray.tune.search.Searcher`, so the same object runs in both modes:
under Ray, Tune drives it (``TuneConfig(search_alg=...)``, its state saved with the experiment and
restored by ``aavs resume``); with ``--local``, :func:`drive_locally` calls the same ``suggest`` /
``on_trial_complete`` in this process, one trial after another.

``search:`` in a stage's ``tune`` section:

    random    Tune's variant generator (the one behind Tune's default search), seeded: distributions
              sampled, ``grid`` entries enumerated. The same trials on every run for the same seed.
    grid      every combination of the ``choice`` and ``grid`` values (no continuous distributions).
    optuna    Optuna's TPE (``OptunaSearch``): ``startup_trials`` random trials, then each proposal
              from the results so far.
    hyperopt  HyperOpt's TPE (``HyperOptSearch``), the same way.

Wrappers, outermost first: :class:`NumberedSearcher` (names the trials ``t000``, ``t001``, ... in the
order they are proposed, the same names in both modes), Tune's ``ConcurrencyLimiter``
(``max_concurrent``), Tune's ``Repeater`` (``repeats``: each configuration with several seeds; the
searcher learns from their mean).

The searcher proposes on ``best/<metric>``, the best value a trial reached so far: what the stage
ranks trials by (aavs.orchestrator.results.ranking.rank_trials).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Repeater, Searcher
from ray.tune.search.variant_generator import generate_variants

from aavs.orchestrator.experiment.search_space import planned_trials, searched, trial_name
from aavs.orchestrator.experiment.spec import StageSpec


def tune_space(stage: StageSpec) -> dict[str, Any]:
    """The searched parameters as Ray Tune's domains (``tune.loguniform``, ``tune.choice``, ...)."""
    as_grid = stage.tune.search == "grid"
    space: dict[str, Any] = {}
    for key, value in searched(stage.params).items():
        kind, arg = next(iter(value.items()))
        if kind == "loguniform":
            space[key] = tune.loguniform(*arg)
        elif kind == "uniform":
            space[key] = tune.uniform(*arg)
        elif kind == "grid" or as_grid:
            space[key] = tune.grid_search(list(arg))
        else:
            space[key] = tune.choice(list(arg))
    return space


def make_searcher(stage: StageSpec) -> Searcher:
    """The stage's searcher, wrapped to name its trials, cap concurrency and repeat configurations."""
    t, metric = stage.tune, f"best/{stage.tune.metric}"
    searcher: Searcher
    if t.search == "optuna":
        # here, not at the top: each searcher's package is imported only by the stages that use it
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=t.seed, n_startup_trials=t.startup_trials)
        space = OptunaSearch.convert_search_space(tune_space(stage))
        searcher = OptunaSearch(space, metric=metric, mode=t.mode, sampler=sampler)
    elif t.search == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch  # here: as optuna above

        searcher = HyperOptSearch(
            HyperOptSearch.convert_search_space(tune_space(stage)),
            metric=metric,
            mode=t.mode,
            n_initial_points=t.startup_trials,
            random_state_seed=t.seed,
        )
    else:
        searcher = SeededVariants(tune_space(stage), t.num_samples, t.seed, metric=metric, mode=t.mode)
    if t.repeats > 1:
        searcher = Repeater(searcher, repeat=t.repeats, set_index=True)
    if t.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=max(t.max_concurrent, t.repeats))
    return NumberedSearcher(searcher, total=planned_trials(stage))


class SeededVariants(Searcher):
    """Tune's variant generation (distributions sampled, ``grid_search`` enumerated) as a Searcher.

    The variants are drawn once, from one generator seeded with ``seed``, so the i-th proposal is
    the same on every run and in both modes; the state to save is how many were handed out."""

    def __init__(self, space: dict[str, Any], num_samples: int, seed: int, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        rng = np.random.default_rng(seed)
        self._variants = [
            _plain(variant)
            for _ in range(num_samples)
            for _, variant in generate_variants(dict(space), random_state=rng)
        ]
        self._next = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override] # Tune returns its FINISHED sentinel too
        if self._next >= len(self._variants):
            return Searcher.FINISHED
        self._next += 1
        return dict(self._variants[self._next - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # proposals do not depend on results

    def get_state(self) -> dict[str, Any]:
        return {"next": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        self._next = state["next"]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, encoding="utf-8") as f:
            self.set_state(json.load(f))


class NumberedSearcher(Searcher):
    """Names each proposal ``t000``, ``t001``, ... (key ``trial``) in the order it is made; the
    folders, the leaderboard and both modes use these names. Finishes after ``total`` trials."""

    def __init__(self, searcher: Searcher, total: int):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.total, self.count = searcher, total, 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override] # Tune returns its FINISHED sentinel too
        if self.count >= self.total:
            return Searcher.FINISHED
        config = self.searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        self.count += 1
        return {**config, "trial": trial_name(self.count - 1)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        return {"count": self.count, "total": self.total}

    def set_state(self, state: dict[str, Any]) -> None:
        self.count, self.total = state["count"], state["total"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def _plain(variant: Mapping[str, Any]) -> dict[str, Any]:
    """numpy scalars from Tune's sampling as Python numbers (they go into JSON files)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in variant.items()}


def drive_locally(
    searcher: Searcher, run_trial: Callable[[str, dict[str, Any]], dict[str, Any] | None]
) -> Iterator[str]:
    """``--local``: the searcher's proposals one at a time, each run by ``run_trial(name, config)``,
    which returns the trial's last report (None: the trial failed); yields each trial's name.

    Run again on a stage that was interrupted, the same calls replay: a deterministic searcher proposes
    the same trials from the same results, and ``run_trial`` returns a finished trial's record at once."""
    searcher.set_search_properties(None, None, {})
    index = 0
    while True:
        tune_id = f"local{index:05d}"
        config = searcher.suggest(tune_id)
        if config is None or config == Searcher.FINISHED:
            return
        result = run_trial(config["trial"], config)
        searcher.on_trial_complete(tune_id, result=result, error=result is None)
        index += 1
        yield config["trial"]
