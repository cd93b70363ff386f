"""A stage as one Ray Tune experiment: each trial a Tune function trial, or a Ray Train ``TorchTrainer``
when it has several workers; the stage's tasks as Ray tasks.

A single-worker trial runs ``train_func`` directly as the Tune function trial: a nested Train run would
add ~25 s of fixed cost per trial for nothing. Mask export and test evaluation run as one Ray task
each, with the resources of one worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from aavs.orchestrator import results
from aavs.orchestrator.experiment import stopping
from aavs.orchestrator.experiment.runners.base import logged_call, logged_trial
from aavs.orchestrator.experiment.runners.trainable import (
    Launch,
    cuda_usable,
    retrain,
    run_trial,
    tune_trial,
    tune_trial_dirname,
)
from aavs.orchestrator.experiment.schedulers import make_scheduler
from aavs.orchestrator.experiment.search import make_searcher, tune_space
from aavs.orchestrator.experiment.search_space import planned_trials
from aavs.orchestrator.experiment.selection import trial_dirs
from aavs.orchestrator.experiment.spec import ExperimentSpec, StageSpec
from aavs.orchestrator.experiment.trackers import tune_callbacks
from aavs.orchestrator.ray_local import local_ray_kwargs

log = logging.getLogger(__name__)


def ray_init_kwargs(quiet: bool) -> dict[str, Any]:
    """``ray.init``'s arguments for ``aavs run``: a Ray of its own on 127.0.0.1, or the cluster that
    ``RAY_ADDRESS`` names (aavs.orchestrator.ray_local). Workers' output stays in their log files
    (quiet); a Ray we join keeps its own setting, and the trials redirect their output themselves
    (output_capture.captured)."""
    return {"log_to_driver": not quiet, "configure_logging": False, **local_ray_kwargs()}


class RayRunner:
    """Each stage a Ray Tune ``Tuner``; a trial with several workers runs a Ray Train ``TorchTrainer``."""

    def __init__(self, spec: ExperimentSpec, results_dir: Path, quiet: bool = True) -> None:
        self.spec, self.results_dir = spec, results_dir
        self.quiet, self.cpus = quiet, spec.compute.cpus_per_worker
        self._backends: dict[tuple[tuple[str, float], ...], str] = {}  # by a stage's custom resources
        # Tune's console output off (with verbose=0, its new engine still prints a header per
        # stage): the live view (aavs.orchestrator.views.live) shows the trials instead.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # Tune saves its experiment state (searcher included) at most this often; a resume restarts
        # from the last save, so keep it short (the state of a few trials is small).
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
        if not ray.is_initialized():
            ray.init(**ray_init_kwargs(quiet))

    def _launch(self, stage: StageSpec, stage_dir: Path) -> Launch:
        c = self.spec.compute
        return Launch(
            workers=c.workers_per_trial,
            cpus=c.cpus_per_worker,
            gpus=c.gpus_per_worker,
            max_failures=c.max_failures,
            storage=str(stage_dir / "train"),
            name=stage.name,
            resources=dict(stage.resources),
            quiet=self.quiet,
            backend=self._backend(stage),
            placement=c.placement.upper(),
        )

    def _backend(self, stage: StageSpec) -> str | None:
        """The process group of the stage's multi-worker trials (None: one worker, none): gloo on the
        CPU; with GPUs, nccl where CUDA works on a node with the workers' resources, else gloo (Ray
        Train's default for workers with GPUs, nccl, fails without CUDA: a node may declare GPUs it
        cannot use, or lack the driver). Asked once per set of resources, of a Ray task with one
        worker's resources (where the workers will run, not where this driver or a trial's actor
        runs), and logged."""
        c = self.spec.compute
        if c.workers_per_trial == 1:
            return None
        if not c.gpus_per_worker:
            return "gloo"
        key = tuple(sorted(stage.resources.items()))
        if key not in self._backends:
            usable = self.call(cuda_usable, resources=stage.resources)
            self._backends[key] = "nccl" if usable else "gloo"
            log.info(
                "stage %s: %d-worker trials on the %s backend (CUDA %s on a node with the workers' resources)",
                stage.name,
                c.workers_per_trial,
                self._backends[key],
                "works" if usable else "is not usable",
            )
        return self._backends[key]

    def run_search(self, stage: StageSpec, base: dict[str, Any], stage_dir: Path) -> None:
        """The stage as one Tune experiment under ``<stage>/tune``; an interrupted one is restored with
        its searcher's and scheduler's state (``Tuner.restore``): finished trials are not run again,
        unfinished ones continue from their last epoch (train_func resumes from the trial folder)."""
        c, launch = self.spec.compute, self._launch(stage, stage_dir)
        if c.workers_per_trial == 1:
            trainable = tune.with_resources(
                tune_trial, {"cpu": c.cpus_per_worker, "gpu": c.gpus_per_worker, **stage.resources}
            )
        else:
            # The trial only drives a TorchTrainer whose workers hold the CPUs and GPUs. Ray refuses
            # an empty request, and any CPU held here would be missing from the workers' placement
            # group (a deadlock on a small machine): the trial asks for a token of memory instead.
            trainable = tune.with_resources(tune_trial, {"memory": 1 << 20})
        param_space: dict[str, Any] = {"base": base, "launch": launch, "stage_dir": str(stage_dir)}
        search_alg: Searcher
        if stage.tune.pbt:
            # Population-based training: Tune takes no searcher with it, so its own variant generator
            # (seeded) samples the population from the real search space, and every report carries
            # the trial's training state for the exploits (TrainConfig.report_checkpoints). States are
            # reported at the exploit interval only and all kept (Tune's num_to_keep deletes states
            # that an exploit still restores from).
            param_space.update(base={**base, "report_checkpoints": stage.tune.pbt.interval}, **tune_space(stage))
            search_alg = BasicVariantGenerator(random_state=stage.tune.seed)  # type: ignore[assignment]
        else:
            search_alg = make_searcher(stage)
        experiment = stage_dir / "tune"
        # Made before the choice: a restored Tuner keeps its own, but making them sets what the trackers
        # need in this process's environment (MLflow's file store) for both.
        callbacks = tune_callbacks(self.spec, stage, self.results_dir)
        if tune.Tuner.can_restore(experiment):
            log.info("stage %s: restoring the Tune experiment in %s", stage.name, experiment)
            tuner = tune.Tuner.restore(str(experiment), trainable, param_space=param_space)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=search_alg,
                    scheduler=make_scheduler(stage),
                    # Tune's variant generator multiplies its grid by num_samples itself.
                    num_samples=stage.tune.num_samples if stage.tune.pbt else planned_trials(stage),
                    trial_dirname_creator=tune_trial_dirname,
                    trial_name_creator=tune_trial_dirname,
                    # A trial's actor takes the stage's next trial (Tune's reset_config): one actor
                    # start, and one import of torch and the model code, per concurrent slot, not per
                    # trial. train_func holds no state between calls (--local runs a stage's trials in
                    # one process too).
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=experiment.name,
                    storage_path=str(experiment.parent),
                    callbacks=[*callbacks, _EndingNodeRecords()],
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=c.max_failures),
                ),
            )
        with _without_tune_trial_tracebacks(self.quiet), stopping.interrupting_tune_on_request(self.results_dir):
            tuner.fit()
        if results.read_stop(self.results_dir) is not None:  # Tune ended the running trials: resumable
            _end_running_trials(stage_dir, results.TrialStatus.INTERRUPTED, "stopped on request")
            raise stopping.ExperimentStopped(self.results_dir)
        _end_running_trials(stage_dir, results.TrialStatus.STOPPED)  # what a scheduler stopped early
        self._train_repaired_trials(stage, stage_dir, launch)

    def _train_repaired_trials(self, stage: StageSpec, stage_dir: Path, launch: Launch) -> None:
        """Trials Tune had finished whose folder a repair reset (aavs.orchestrator.experiment.repair):
        trained again with the config they ran with, outside the Tune experiment."""
        for trial_dir in trial_dirs(stage_dir):
            config = results.read_trial_config(trial_dir)
            if config is None or results.trial_status(trial_dir).ended:
                continue
            log.info("stage %s: training %s again", stage.name, trial_dir.name)
            if launch["workers"] == 1:
                self.call(retrain, str(trial_dir), config, self.quiet, resources=stage.resources)
            else:
                logged_trial(str(trial_dir), self.quiet, run_trial, config, launch, trial_dir.name)

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        resources: dict[str, float] | None = None,
        log_file: Path | None = None,
        cpus: float | None = None,
    ) -> Any:
        """``fn(*args)`` as one Ray task with the resources of one worker (or ``cpus`` CPUs), output in
        ``log_file``."""
        c = self.spec.compute
        options = {
            "num_cpus": cpus or c.cpus_per_worker,
            "num_gpus": c.gpus_per_worker,
            "resources": dict(resources or {}),
        }
        task = ray.remote(logged_call).options(**options)
        return ray.get(task.remote(str(log_file) if log_file else None, self.quiet, cpus or self.cpus, fn, *args))

    def node_cpus(self) -> float:
        """The CPUs of the largest alive node that also has one worker's GPUs."""
        gpus = self.spec.compute.gpus_per_worker
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) >= gpus]
        return max((float(r.get("CPU", 0)) for r in nodes), default=0.0) or float(self.cpus)


class _EndingNodeRecords(tune.Callback):
    """The end of a trial that Tune ended from outside, in its ranks' node records: a scheduler's stop
    (ASHA's at the last epoch too) ends the trial's process before the ranks can write when they ended
    (aavs.orchestrator.experiment.stage_tasks.recording_node). The time is Tune's decision: after the
    trial's last report, on which it blocked (a function trial reports synchronously), and before its
    resources go to another trial."""

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _end_node_records(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _end_node_records(trial)


def _end_node_records(trial: Any) -> None:
    trial_dir = Path(trial.config["stage_dir"]) / "trials" / tune_trial_dirname(trial)
    end = time.time()
    for rank in range(trial.config["launch"]["workers"]):
        results.end_node(trial_dir, rank, end)


def _end_running_trials(stage_dir: Path, status: results.TrialStatus, error: str | None = None) -> None:
    """After Tune's run: the trials whose status.json still says running end ``status``, or done when they
    reported their last epoch: a scheduler whose limit is the stage's epochs (ASHA's ``max_t``) stops a
    trial on that report, before train_func writes that it is done."""
    for trial_dir in trial_dirs(stage_dir):
        record = results.read_status(trial_dir)
        if record is None or record.status != results.TrialStatus.RUNNING:
            continue
        rows = results.read_metrics(trial_dir)
        best = results.read_checkpoint_metrics(trial_dir / results.BEST)
        if record.epochs and rows and rows[-1].epoch == record.epochs - 1 and best is not None:
            record.status, record.epoch, record.best = results.TrialStatus.DONE, record.epochs, best.to_json()
            record.progress = None
        else:
            record.status, record.error = status, error or record.error
        results.write_status(trial_dir, record)


class _TrialTaskFailed(logging.Filter):
    """Tune's "Trial task failed" record: its traceback is in the trial's log, and the live view reports
    the failure once, with the log's last lines and its path."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Trial task failed")


@contextlib.contextmanager
def _without_tune_trial_tracebacks(quiet: bool) -> Iterator[None]:
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    drop = _TrialTaskFailed()
    if quiet:
        logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
