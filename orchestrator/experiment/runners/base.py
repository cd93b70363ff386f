"""The one interface the stage loop drives, whatever runs the trials, and the output capture they share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aavs.orchestrator.experiment.spec import StageSpec
from aavs.orchestrator.recipe.output_capture import captured, mark_failed, trial_log
from aavs.orchestrator.recipe.threads import cpu_threads


class Runner(Protocol):
    """Runs a stage's search and the tasks around it (base pre-training, mask export, test evaluation)."""

    def run_search(self, stage: StageSpec, base: dict[str, Any], stage_dir: Path) -> None:
        """Every trial of the stage, from the trials' shared config ``base``; returns when all have ended."""
        ...

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        resources: dict[str, float] | None = None,
        log_file: Path | None = None,
        cpus: float | None = None,
    ) -> Any:
        """``fn(*args)`` where this runner runs its tasks, with one worker's resources (or ``cpus`` CPUs)
        plus the stage's custom ``resources``, its output in ``log_file``."""
        ...

    def node_cpus(self) -> float:
        """The CPUs of the largest machine a task can run on."""
        ...


def logged_call(log_file: str | None, quiet: bool, cpus: float, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on ``cpus`` torch threads, with its output in ``log_file`` (None: where it goes anyway)."""
    with cpu_threads(cpus), captured(log_file, quiet) if log_file else contextlib.nullcontext():
        return fn(*args)


def logged_trial(trial_dir: str, quiet: bool, fn: Callable[..., Any], *args: Any, rank: int = 0) -> Any:
    """``fn(*args)`` with its output in the trial's log (of ``rank``); a failure also marks the trial failed."""
    with captured(trial_log(trial_dir, rank), quiet):
        try:
            return fn(*args)
        except Exception as err:
            if rank == 0:
                mark_failed(trial_dir, err)
            raise
