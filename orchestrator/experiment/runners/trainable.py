"""What runs inside a Ray Tune trial: the searcher's proposal made a training config, then one
``train_func`` run, direct (one worker) or through a Ray Train ``TorchTrainer`` (several workers).

Everything here is pickled by reference into Ray's workers, so it lives at module level.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Any, TypedDict

import ray.train
import ray.tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from aavs.orchestrator import results
from aavs.orchestrator.experiment.runners.base import logged_trial
from aavs.orchestrator.experiment.search_space import trial_name
from aavs.orchestrator.experiment.stage_tasks import recording_node
from aavs.orchestrator.experiment.trial_config import trial_config
from aavs.orchestrator.recipe import checkpointing

log = logging.getLogger(__name__)


class Launch(TypedDict):
    """How a stage's trials are launched (the same for each of its trials)."""

    workers: int
    cpus: float
    gpus: float
    max_failures: int
    storage: str  # Ray Train runs of multi-worker trials
    name: str  # the stage's
    resources: dict[str, float]  # the stage's custom Ray resources
    quiet: bool
    backend: str | None  # a multi-worker trial's process group (nccl, gloo; RayRunner._backend); None: one worker
    placement: str  # its placement group's strategy: PACK or SPREAD (compute.placement)


def tune_trial(config: dict[str, Any]) -> None:
    """A Ray Tune function trial: the searcher's proposal (``config``'s keys other than the stage's
    ``base``, ``launch`` and ``stage_dir``) made a training config, then one ``train_func`` run,
    direct or through a ``TorchTrainer``, its output in the trial's log."""
    launch: Launch = config["launch"]
    suggestion = {k: v for k, v in config.items() if k not in ("base", "launch", "stage_dir")}
    suggestion.setdefault("trial", Path(ray.tune.get_context().get_trial_dir()).name)
    train_config = trial_config(config["base"], Path(config["stage_dir"]), suggestion)
    logged_trial(train_config["trial_dir"], launch["quiet"], run_trial, train_config, launch, suggestion["trial"])


def tune_trial_dirname(trial: Any) -> str:
    """Tune's name and folder (under ``<stage>/tune``) of a trial: the searcher's name, ``t000``; under
    Tune's own variant generator (population-based training), from the number it gives each trial."""
    return str(trial.config.get("trial") or trial_name(int(trial.experiment_tag.split("_", 1)[0])))


def run_trial(train_config: dict[str, Any], launch: Launch, trial_id: str) -> None:
    """One trial's training: ``train_func`` here (one worker) or on a ``TorchTrainer``'s workers."""
    from aavs.orchestrator.recipe.train import train_func  # here, not at the top: torch, transformers

    if launch["workers"] == 1:
        with recording_node(train_config["trial_dir"]):
            if train_config["report_checkpoints"]:
                _continue_from_exchanged_state(Path(train_config["trial_dir"]), ray.tune.get_checkpoint())
            train_func(train_config)
        return
    trainer = TorchTrainer(
        functools.partial(_train_func_recording_node, quiet=launch["quiet"]),
        train_loop_config=train_config,
        torch_config=TorchConfig(backend=launch["backend"]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=launch["workers"],
            use_gpu=launch["gpus"] > 0,
            resources_per_worker={
                "CPU": launch["cpus"],
                **({"GPU": launch["gpus"]} if launch["gpus"] else {}),
                **launch["resources"],
            },
            placement_strategy=launch["placement"],
        ),
        run_config=ray.train.RunConfig(
            name=f"{launch['name']}-{trial_id}",
            storage_path=launch["storage"],
            failure_config=ray.train.FailureConfig(max_failures=launch["max_failures"]),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item] # a Train callback, typed as Tune's
        ),
    )
    try:
        trainer.fit()
    except Exception as err:
        # Seen on 2 CPUs: Ray Train's controller actor is destroyed with its placement group after
        # the workers finished, and fit() raises ActorDiedError although every epoch was trained,
        # reported and saved. A trial whose status.json says done keeps its results.
        status = results.read_status(train_config["trial_dir"])
        if status is None or status.status != results.TrialStatus.DONE:
            raise
        log.warning("%s: Ray Train ended with %s after the trial finished; its results are complete", trial_id, err)


def retrain(trial_dir: str, config: dict[str, Any], quiet: bool) -> None:
    """A one-worker trial trained again outside its Tune experiment (a repair reset it)."""
    from aavs.orchestrator.recipe.train import TrainingDiverged, train_func  # here: torch, transformers

    with contextlib.suppress(TrainingDiverged), recording_node(trial_dir):  # status.json says so
        logged_trial(trial_dir, quiet, train_func, config)


def _continue_from_exchanged_state(trial_dir: Path, checkpoint: Any) -> None:
    """Population-based training: a trial Tune (re)starts with another trial's checkpoint continues from
    that trial's whole training state; ``schedule.json`` records from which epoch which parameters held."""
    params = results.read_params(trial_dir) or {}
    schedule = results.read_schedule(trial_dir) or results.Schedule()
    origin = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            origin = checkpointing.adopt_exchanged_state(Path(folder), trial_dir)
    if origin is not None:
        schedule.spans.append(
            results.ScheduleEntry(from_epoch=origin["epoch"] + 1, params=params, exploited=origin["trial"])
        )
        log.info("%s continues from %s after its epoch %d", trial_dir.name, origin["trial"], origin["epoch"] + 1)
    elif not schedule.spans:
        schedule.spans.append(results.ScheduleEntry(from_epoch=0, params=params))
    results.write_schedule(trial_dir, schedule)


def cuda_usable() -> bool:
    """Whether CUDA works in this process (a Ray task with a trial worker's resources: on a node that
    has them)."""
    import torch  # here, not at the top: only where the task runs

    return torch.cuda.is_available()


def _train_func_recording_node(config: dict[str, Any], quiet: bool = True) -> Any:
    """``train_func`` on a Ray Train worker, output in the trial's log of its rank; each rank records its
    node (aavs.orchestrator.experiment.stage_tasks.recording_node)."""
    import torch  # here, not at the top: Ray Train has imported it in its workers

    from aavs.orchestrator.recipe.train import train_func  # here, not at the top: torch, transformers

    if not torch.cuda.is_available():
        # Ray Train points accelerate at the GPU it assigned (ACCELERATE_TORCH_DEVICE=cuda:N) whether
        # or not CUDA works here; without it accelerate takes the CPU, as pick_device does.
        os.environ.pop("ACCELERATE_TORCH_DEVICE", None)
    rank = ray.train.get_context().get_world_rank()
    with recording_node(config["trial_dir"], rank):
        return logged_trial(config["trial_dir"], quiet, train_func, config, rank=rank)
