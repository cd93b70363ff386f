"""``--local``: a stage's trials one after another in this process, with no Ray."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aavs.orchestrator import results
from aavs.orchestrator.experiment import stopping
from aavs.orchestrator.experiment.runners.base import logged_call, logged_trial
from aavs.orchestrator.experiment.search import drive_locally, make_searcher
from aavs.orchestrator.experiment.selection import last_report
from aavs.orchestrator.experiment.spec import ExperimentSpec, StageSpec
from aavs.orchestrator.experiment.trackers import log_local_trial
from aavs.orchestrator.experiment.trial_config import trial_config

log = logging.getLogger(__name__)


class LocalRunner:
    """Trials one after another in this process. Schedulers do not apply.

    ``quiet``: a trial's or task's output goes to its log file only (aavs.orchestrator.recipe.output_capture);
    otherwise also to this terminal. A trial that fails is reported by the live view (its status.json).
    Tasks use ``cpus`` torch threads, as a Ray task given that many CPUs would (``cpu_threads``).
    """

    def __init__(self, spec: ExperimentSpec, results_dir: Path, quiet: bool = True) -> None:
        self.spec, self.results_dir = spec, results_dir
        self.quiet, self.cpus = quiet, spec.compute.cpus_per_worker

    def run_search(self, stage: StageSpec, base: dict[str, Any], stage_dir: Path) -> None:
        """The stage's searcher driven here (aavs.orchestrator.experiment.search.drive_locally): the
        same proposals, in the same order and with the same names, as under Ray with one trial at a time."""
        # here, not at the top: the recipe imports torch, transformers and accelerate
        from aavs.orchestrator.recipe.train import TrainingDiverged, TrialStopped, train_func

        base = {**base, "stop_file": str(self.results_dir / results.STOP_FILE)}

        def run(name: str, suggestion: dict[str, Any]) -> dict[str, Any] | None:
            config = trial_config(base, stage_dir, suggestion)
            trial_dir = Path(config["trial_dir"])
            if not results.trial_status(trial_dir).ended:
                log.debug("stage %s: trial %s", stage.name, name)
                try:
                    logged_trial(str(trial_dir), self.quiet, train_func, config)
                except TrainingDiverged:
                    pass  # status.json says so; the search goes on with the other trials
                except TrialStopped:
                    raise stopping.ExperimentStopped(self.results_dir) from None
                log_local_trial(self.spec, stage, self.results_dir, trial_dir)
            return last_report(trial_dir)

        for _ in drive_locally(make_searcher(stage), run):
            pass

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        resources: dict[str, float] | None = None,
        log_file: Path | None = None,
        cpus: float | None = None,
    ) -> Any:
        """``fn(*args)`` in this process (``resources`` place Ray tasks only), output in ``log_file``, on
        ``cpus`` torch threads (default: one worker's)."""
        return logged_call(str(log_file) if log_file else None, self.quiet, cpus or self.cpus, fn, *args)

    def node_cpus(self) -> float:
        """The CPUs of this machine."""
        return float(os.cpu_count() or 1)
