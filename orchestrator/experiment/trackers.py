"""Experiment trackers (``loggers:`` in the experiment file): TensorBoard, MLflow, Weights & Biases.

Under Ray, Tune's own logger callbacks get every report of every trial as it is made
(``TBXLoggerCallback``, ``MLflowLoggerCallback``, ``WandbLoggerCallback``). With ``--local`` there is no
Tune run to hook into, so :func:`log_local_trial` sends the same records from the trial's own files
(``params.json``, ``metrics.jsonl``) when the trial ends. Where they go:

    tensorboard  results/<name>/<stage>/tune/<trial>/events.out.tfevents.*  (``tensorboard --logdir results/<name>``)
    mlflow       a file store at results/<name>/mlruns, or ``tracking.mlflow_uri``; one MLflow
                 experiment per stage (``<name>-<stage>``), one run per trial (named like the trial)
    wandb        offline runs under results/<name>/wandb unless ``tracking.wandb_mode`` is online;
                 project ``tracking.wandb_project`` (default: the experiment's name)

Each is an optional extra (``pip install 'aavs[mlflow]'``); asking for one that is not installed is an
error before any trial starts (:func:`require_installed`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from aavs.datasets.errors import InputError
from aavs.orchestrator import results

if TYPE_CHECKING:
    from aavs.orchestrator.experiment.spec import ExperimentSpec, StageSpec

LoggerName = Literal["tensorboard", "mlflow", "wandb"]  # the experiment file's ``loggers`` entries


@dataclass(frozen=True)
class Tracker:
    module: str  # the Python package it needs
    extra: str  # aavs's optional extra that installs it


# The one table of trackers: the schema's choices (LoggerName) and the install check come from it.
TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker("tensorboardX", "tensorboard"),
    "mlflow": Tracker("mlflow", "mlflow"),
    "wandb": Tracker("wandb", "wandb"),
}
assert tuple(TRACKERS) == get_args(LoggerName), "one entry per logger name"


def require_installed(spec: ExperimentSpec) -> None:
    for name in spec.loggers:
        module, extra = TRACKERS[name].module, TRACKERS[name].extra
        if importlib.util.find_spec(module) is None:
            raise InputError(
                f"loggers: {name} needs the Python package {module!r}, which is not installed; "
                f"pip install 'aavs[{extra}]' (or remove {name} from loggers)"
            )


def mlflow_uri(spec: ExperimentSpec, results_dir: Path) -> str:
    """``tracking.mlflow_uri``, or a file store in the results folder. MLflow 3 keeps its file store
    (in maintenance) behind an opt-in; the default takes it, as a store that needs no server."""
    if spec.tracking.mlflow_uri:
        return spec.tracking.mlflow_uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (results_dir / "mlruns").as_uri()


def experiment_name(spec: ExperimentSpec, stage: StageSpec) -> str:
    return f"{spec.name}-{stage.name}"


def tune_callbacks(spec: ExperimentSpec, stage: StageSpec, results_dir: Path) -> list[Any]:
    """Ray Tune's logger callbacks for the stage's Tuner."""
    callbacks: list[Any] = []
    if "tensorboard" in spec.loggers:
        from ray.tune.logger import TBXLoggerCallback  # here: an optional extra, imported only when asked for

        callbacks.append(TBXLoggerCallback())
    if "mlflow" in spec.loggers:
        from ray.air.integrations.mlflow import (
            MLflowLoggerCallback,
        )  # here: an optional extra, imported only when asked for

        callbacks.append(
            MLflowLoggerCallback(
                tracking_uri=mlflow_uri(spec, results_dir),
                experiment_name=experiment_name(spec, stage),
                tags={"aavs.experiment": spec.name, "aavs.stage": stage.name},
                save_artifact=False,
            )
        )
    if "wandb" in spec.loggers:
        from ray.air.integrations.wandb import (
            WandbLoggerCallback,
        )  # here: an optional extra, imported only when asked for

        os.environ.setdefault("WANDB_DIR", str(results_dir))
        callbacks.append(
            WandbLoggerCallback(
                project=spec.tracking.wandb_project or spec.name,
                group=stage.name,
                mode=spec.tracking.wandb_mode,
            )
        )
    return callbacks


def log_local_trial(spec: ExperimentSpec, stage: StageSpec, results_dir: Path, trial_dir: Path) -> None:
    """``--local``: one ended trial's parameters and reports, to every tracker the experiment names."""
    if not spec.loggers:
        return
    params = results.read_params(trial_dir) or {}
    rows = [row.model_dump() for row in results.read_metrics(trial_dir)]
    name = trial_dir.name
    if "tensorboard" in spec.loggers:
        from tensorboardX import SummaryWriter  # here: an optional extra, imported only when asked for

        with SummaryWriter(str(trial_dir.parent.parent / "tune" / name)) as writer:
            for step, row in enumerate(rows, 1):
                for key, value in _numbers(row).items():
                    writer.add_scalar(f"ray/tune/{key}", value, global_step=step)
            last = _numbers(rows[-1]) if rows else {}
            writer.add_hparams(_flat_params(params), {f"ray/tune/{k}": v for k, v in last.items()})
    if "mlflow" in spec.loggers:
        import mlflow  # here: an optional extra, imported only when asked for

        mlflow.set_tracking_uri(mlflow_uri(spec, results_dir))
        mlflow.set_experiment(experiment_name(spec, stage))
        tags = {"aavs.experiment": spec.name, "aavs.stage": stage.name, "trial_name": name}
        with mlflow.start_run(run_name=name, tags=tags):
            mlflow.log_params(params)
            for step, row in enumerate(rows, 1):
                mlflow.log_metrics(_numbers(row), step=step)
    if "wandb" in spec.loggers:
        import wandb  # here: an optional extra, imported only when asked for

        run = wandb.init(
            project=spec.tracking.wandb_project or spec.name,
            group=stage.name,
            name=name,
            config=params,
            mode=spec.tracking.wandb_mode,
            dir=str(results_dir),
            reinit="create_new",
        )
        for step, row in enumerate(rows, 1):
            run.log(_numbers(row), step=step)
        run.finish()


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
