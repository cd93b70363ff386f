"""A stage's Tune trial scheduler (``tune.scheduler``), beside its searcher (:mod:`.search`). The
schedulers' settings are the experiment file's (:mod:`.spec`); FIFO is no scheduler at all."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining, TrialScheduler

from aavs.orchestrator.experiment.search import tune_space
from aavs.orchestrator.experiment.search_space import CONTINUOUS, searched
from aavs.orchestrator.experiment.spec import StageSpec


def make_scheduler(stage: StageSpec) -> TrialScheduler | None:
    """Tune's trial scheduler for the stage (None: FIFO, every trial runs all its epochs)."""
    t = stage.tune
    if t.asha:
        return ASHAScheduler(
            metric=t.metric,
            mode=t.mode,
            time_attr="training_iteration",
            max_t=stage.epochs,
            grace_period=t.asha.grace_period,
            reduction_factor=t.asha.reduction_factor,
        )
    if t.pbt and t.scheduler_name == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            metric=t.metric,
            mode=t.mode,
            perturbation_interval=t.pbt.interval,
            hyperparam_mutations=tune_space(stage),
            quantile_fraction=t.pbt.quantile,
            resample_probability=t.pbt.resample_probability,
        )
    if t.pbt:
        from ray.tune.schedulers.pb2 import PB2  # here, not at the top: it imports the optional GPy

        bounds: dict[str, Any] = {
            k: next(iter(v.values())) for k, v in searched(stage.params).items() if next(iter(v)) in CONTINUOUS
        }
        return PB2(
            time_attr="training_iteration",
            metric=t.metric,
            mode=t.mode,
            perturbation_interval=t.pbt.interval,
            hyperparam_bounds=bounds,
            quantile_fraction=t.pbt.quantile,
        )
    return None
