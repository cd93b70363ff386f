"""Experiment files (``experiments/*.yaml``): one schema, :class:`ExperimentSpec`, from the file to each trial.

The file's ``model`` and ``compute`` sections and a stage's ``params`` are the models a trial's
:class:`~aavs.orchestrator.recipe.config.TrainConfig` is made of, under the same names. Every error
names the file, the key path and what was expected; unknown keys are errors. A key left out takes its
default, shown by :func:`json_schema` (``aavs schema``); the task-dependent ones (a stage's
``shuffle`` and its ``adapter_warmup`` and ``grad_clip``) are filled in from the stage's task, so the
parsed spec, and the ``spec.yaml`` a run saves, hold every value the trials run with.

A stage's ``params`` are a search space (:mod:`aavs.orchestrator.experiment.search_space` has the
syntax); its ``tune.search`` decides how trials are drawn from it (random, grid, optuna, hyperopt:
:mod:`aavs.orchestrator.experiment.search`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml
from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, Tag, WrapValidator, model_validator

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import TASKS
from aavs.orchestrator.experiment.search_space import (
    Params,
    SearchName,
    search_problem,
    searched,
)
from aavs.orchestrator.experiment.trackers import LoggerName
from aavs.orchestrator.recipe.config import (
    ComputeConfig,
    Expected,
    Hyperparameters,
    LocalPath,
    Metric,
    ModelConfig,
    Strict,
    TaskName,
    task_defaults,
    validated,
)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Names become folder names under results/ (a stage's also with ".superseded-<hash>" appended), so
# they are single path components of a length every filesystem takes: never "..", "a/b" or 300 chars.
MAX_NAME = 100


def _plain_name(name: str) -> str:
    if not NAME.match(name) or len(name) > MAX_NAME:
        raise Expected(f"a plain name (letters, digits, . _ -; at most {MAX_NAME} characters)")
    return name


Name = Annotated[str, AfterValidator(_plain_name)]


def scheduler_problem(tune: TuneSpec, params: Mapping[str, Any]) -> str | None:
    """Why a population-based scheduler can't run this stage (None: it can)."""
    if tune.pbt is None:
        return None
    name = tune.scheduler_name
    if tune.search not in ("random", "grid"):
        return f"scheduler: {name} explores by perturbing running trials; Tune runs it with random or grid search only"
    if tune.repeats > 1:
        return f"scheduler: {name} trains a population that exchanges weights; repeats do not apply"
    kinds = {k: next(iter(v)) for k, v in searched(params).items()}
    if name == "pb2" and not any(kind in ("loguniform", "uniform") for kind in kinds.values()):
        return "scheduler: pb2 needs a continuous distribution (loguniform or uniform) in params to perturb"
    if not kinds:
        return f"scheduler: {name} needs a distribution in params to perturb (e.g. lr: {{loguniform: [...]}})"
    return None


# ------------------------------------------------------------------------------------- sections
class SyntheticData(Strict):
    videos_per_split: int = Field(8, ge=1)  # of each subset in each split
    seed: int = Field(0, ge=0)
    eval_videos_per_split: int | None = Field(None, ge=1)  # in val and test instead, when given


class DataSpec(Strict):
    """An AVSBench data root, or a synthetic set generated into the results folder."""

    root: LocalPath | None = None
    synthetic: SyntheticData | None = None

    @model_validator(mode="before")
    @classmethod
    def _synthetic_defaults(cls, data: Any) -> Any:
        """``synthetic:`` alone (no root): the synthetic set's defaults. A saved spec writes the source it
        does not use as null (``root: ..., synthetic: null``), which stays unused."""
        if isinstance(data, Mapping) and data.get("synthetic", 0) is None and data.get("root") is None:
            return {**data, "synthetic": {}}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.root is None) == (self.synthetic is None):
            raise Expected("exactly one of 'root' or 'synthetic'", got=self.model_dump(exclude_defaults=True))
        return self


class AshaConfig(Strict):
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=1)


class Asha(Strict):
    asha: AshaConfig = AshaConfig()


class PbtConfig(Strict):
    """Population-based training: every ``interval`` epochs a trial in the bottom ``quantile`` takes
    the whole training state of one in the top quantile and perturbs its searched parameters."""

    interval: int = Field(2, ge=1)  # epochs between exploit/explore decisions
    quantile: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)  # pbt: resample instead of perturbing


class Pbt(Strict):
    pbt: PbtConfig = PbtConfig()


class Pb2(Strict):
    pb2: PbtConfig = PbtConfig()


SCHEDULERS = {"asha": Asha, "pbt": Pbt, "pb2": Pb2}


def _spoken(names: list[str]) -> str:
    """``a, b or c``."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def _scheduler_kind(value: Any) -> str | None:
    if value == "fifo":
        return "fifo"
    for name, model in SCHEDULERS.items():
        if isinstance(value, model) or isinstance(value, Mapping) and list(value) == [name]:
            return name
    return None


def _bare_scheduler(value: Any) -> Any:
    """``scheduler: asha`` (or pbt, pb2): that scheduler with its defaults."""
    return {value: {}} if isinstance(value, str) and value in SCHEDULERS else value


Scheduler = Annotated[
    Annotated[Literal["fifo"], Tag("fifo")]
    | Annotated[Asha, Tag("asha")]
    | Annotated[Pbt, Tag("pbt")]
    | Annotated[Pb2, Tag("pb2")],
    Discriminator(
        _scheduler_kind,
        custom_error_type="scheduler",
        custom_error_message=f"{_spoken(['fifo', *SCHEDULERS])}, or one of "
        + ", ".join(f"{{{name}: {{...}}}}" for name in SCHEDULERS),
    ),
    BeforeValidator(_bare_scheduler),
]


class TuneSpec(Strict):
    metric: Metric = "val/miou"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(1, ge=1)
    max_concurrent: int = Field(0, ge=0)  # 0: as many as the cluster fits
    scheduler: Scheduler = "fifo"
    search: SearchName = "random"  # search_space.SEARCHERS; built by aavs.orchestrator.experiment.search
    seed: int = 0  # of the searcher
    startup_trials: int = Field(10, ge=1)  # optuna, hyperopt: random proposals before the model's
    repeats: int = Field(1, ge=1)  # trials per configuration, seeds seed, seed + 1, ... (mean ± std)

    @property
    def scheduler_name(self) -> str:
        return self.scheduler if isinstance(self.scheduler, str) else next(iter(type(self.scheduler).model_fields))

    @property
    def pbt(self) -> PbtConfig | None:
        """The population-based training settings of a pbt or pb2 scheduler."""
        if isinstance(self.scheduler, Pbt):
            return self.scheduler.pbt
        return self.scheduler.pb2 if isinstance(self.scheduler, Pb2) else None

    @property
    def asha(self) -> AshaConfig | None:
        return self.scheduler.asha if isinstance(self.scheduler, Asha) else None


RESERVED_RESOURCES = ("cpu", "gpu", "memory", "object_store_memory", "custom_resources")


def _custom_resource(name: str) -> str:
    if not name or name.lower() in RESERVED_RESOURCES:
        raise Expected("a custom resource name (CPUs and GPUs are set under compute)")
    return name


def _resource_mapping(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise Expected("a mapping of custom Ray resource names to amounts, e.g. {node_a: 0.01}")
    return value


# Custom Ray resources each trial (and the stage's mask export and test evaluation) requests, e.g.
# {node_a: 0.01} to keep the stage on the nodes that advertise node_a. Placement only: not part of
# the stage's inputs, so moving a stage never re-runs it.
Resources = Annotated[
    dict[Annotated[str, AfterValidator(_custom_resource)], Annotated[float, Field(gt=0)]],
    BeforeValidator(_resource_mapping),
]


def _in_written_order(params: Any, handler: Any) -> Any:
    """The file's order of the keys, which decides the order in which the trials are sampled."""
    checked = handler(params)
    return {key: checked[key] for key in params} if isinstance(params, Mapping) else checked


class StageSpec(Strict):
    name: Name
    task: TaskName
    epochs: int = Field(60, ge=1)
    params: Annotated[Params, WrapValidator(_in_written_order)] = {}
    tune: TuneSpec = TuneSpec()
    prior: str | None = None  # an earlier stage: its best checkpoint's masks are this stage's prior
    init_from: str | None = None  # an earlier stage: its best checkpoint's weights start every trial
    max_videos: int | None = Field(None, ge=1)  # cap on training videos per epoch (smoke tests, demos)
    shuffle: bool = True  # a new video order every epoch; default: the task's (stage two: file order)
    resources: Resources = {}

    @model_validator(mode="after")
    def _task_defaults(self) -> StageSpec:
        """The method's defaults for the task, written into the spec (docs/method.md §4)."""
        if self.prior is not None and not TASKS[self.task].takes_prior:
            takers = [name for name, task in TASKS.items() if task.takes_prior]
            raise Expected(f"a prior only on a stage whose task takes one ({takers})", at=("prior",), got=self.prior)
        problem = search_problem(self.tune.search, self.params)
        if problem:
            raise Expected(problem, at=("tune", "search"), got=self.tune.search)
        problem = scheduler_problem(self.tune, self.params)
        if problem:
            raise Expected(problem, at=("tune", "scheduler"), got=self.tune.scheduler_name)
        defaults = {**Hyperparameters().model_dump(), **task_defaults(self.task)}
        if self.prior is None:  # prior_train chooses among a prior's sources: a stage without one has none
            if "prior_train" in self.params:
                raise Expected(
                    "no prior_train on a stage without a prior (it says which masks stage two trains on)",
                    at=("params", "prior_train"),
                    got=dict(self.params)["prior_train"],
                )
            del defaults["prior_train"]
        shuffle = defaults.pop("shuffle")
        if "shuffle" not in self.model_fields_set:
            self.shuffle = shuffle
        filled = {**self.params, **{k: v for k, v in defaults.items() if k not in self.params}}
        self.params = cast(Params, filled)  # every key is a Hyperparameters field
        return self


class Tracking(Strict):
    """Where the trackers of ``loggers`` write (aavs.orchestrator.experiment.trackers)."""

    mlflow_uri: str | None = None  # default: a file store at results/<name>/mlruns
    wandb_project: str | None = None  # default: the experiment's name
    wandb_mode: Literal["offline", "online"] = "offline"


class ExperimentSpec(Strict):
    name: Name
    data: DataSpec
    model: ModelConfig
    compute: ComputeConfig = ComputeConfig()
    stages: list[StageSpec] = Field(min_length=1)
    loggers: list[LoggerName] = []  # experiment trackers, in both modes (trackers.TRACKERS)
    tracking: Tracking = Tracking()

    @model_validator(mode="after")
    def _stage_references(self) -> ExperimentSpec:
        earlier: list[str] = []
        for i, stage in enumerate(self.stages):
            if stage.name in earlier:
                raise Expected("a name not used by an earlier stage", at=("stages", i, "name"), got=stage.name)
            for key in ("prior", "init_from"):
                ref = getattr(stage, key)
                if ref is not None and ref not in earlier:
                    raise Expected(
                        f"the name of an earlier stage ({earlier or 'none yet'})", at=("stages", i, key), got=ref
                    )
            earlier.append(stage.name)
            if stage.tune.pbt and self.compute.workers_per_trial > 1:
                raise Expected(
                    "scheduler fifo or asha when compute.workers_per_trial > 1 (population-based training "
                    "exchanges one-worker trials' states)",
                    at=("stages", i, "tune", "scheduler"),
                    got=stage.tune.scheduler_name,
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def json_schema() -> dict[str, Any]:
    """The experiment file's JSON Schema (for editors and docs; ``aavs schema`` prints it)."""
    return ExperimentSpec.model_json_schema()


# -------------------------------------------------------------------------------------- loading
def parse_spec(raw: Any, source: str) -> ExperimentSpec:
    return validated(ExperimentSpec, raw, source)


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """``--set a.b=value`` (value parsed as YAML; list indices for stages: ``stages.0.epochs=2``,
    or a stage by name: ``stages.localize.epochs=2``)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY.PATH=VALUE")
        path, text = item.split("=", 1)
        value = yaml.safe_load(text)
        keys = path.split(".")
        node: Any = raw
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                index = key if not key.isdigit() else int(key)
                if isinstance(index, str):
                    matches = [i for i, s in enumerate(node) if isinstance(s, Mapping) and s.get("name") == key]
                    if not matches:
                        raise InputError(f"--set {item}: {source} has no stage named {key!r}")
                    index = matches[0]
                if not 0 <= index < len(node):
                    raise InputError(f"--set {item}: index {index} out of range in {'.'.join(keys[:depth]) or 'top'}")
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise InputError(f"--set {item}: {'.'.join(keys[:depth])} is not a mapping or list in {source}")
    return raw


def load_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[ExperimentSpec, dict[str, Any]]:
    """Read, override and validate an experiment file; returns the spec and the raw (overridden) dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such experiment file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    raw = apply_overrides(raw or {}, overrides or [], str(path))
    return parse_spec(raw, str(path)), raw


def spec_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
