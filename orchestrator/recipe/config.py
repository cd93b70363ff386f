"""One training run's configuration (one stage of one trial), and the sections it shares with the experiment file.

``train_func`` receives a plain ``dict`` (Ray Train and Tune pass dicts around); :meth:`TrainConfig.load`
validates it once, and every later line of the recipe can trust it. The experiment file's schema
(:mod:`aavs.orchestrator.experiment.spec`) is built from the same models: its ``model`` and ``compute``
sections are :class:`ModelConfig` and :class:`ComputeConfig`, and a stage's ``params`` are the fields
of :class:`Hyperparameters`. A trial's config is therefore the stage's values under the same names.

Validation is pydantic's, strict (``"3"`` is not 3, ``"no"`` is not false, unknown keys are errors);
:func:`validated` turns its errors into InputErrors that name the file, the key path and what was
expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import TASKS, get_task
from aavs.models.registry import DEFAULT_TYPE, get_model_type, model_presets, model_types

if TYPE_CHECKING:  # a Literal of the registered names, made at run time: a checker sees a str
    TaskName = str
else:
    TaskName = Literal[tuple(TASKS)]
STRICT = ConfigDict(extra="forbid", strict=True)


class Strict(BaseModel):
    """Unknown keys are errors, and no value is converted to another type. A key written without a
    value (YAML's null) takes its default, as leaving it out does, unless None is one of its values."""

    model_config = STRICT

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        fields = cls.model_fields
        return {
            k: v
            for k, v in data.items()
            if v is not None or k not in fields or type(None) in get_args(fields[k].annotation)
        }


class Expected(ValueError):
    """A validator's error: what the key ``at`` (below the validated object) should be, and what it is."""

    def __init__(self, expected: str, at: tuple[str | int, ...] = (), got: Any = ...) -> None:
        super().__init__(expected)
        self.at, self.got = at, got


def _local_path(value: str) -> str:
    return str(Path(value).expanduser().resolve())


def _registered_model_type(name: str) -> str:
    if name not in model_types():
        raise Expected(f"one of {list(model_types())} (aavs.models.registry)")
    return name


def _validation_metric(name: str) -> str:
    if not name.startswith("val/"):
        raise Expected("a validation metric (val/miou, val/fscore, ...)")
    return name


# Relative paths are resolved against the current directory (where ``aavs run`` starts; under
# ``ray job submit``, the uploaded working directory).
LocalPath = Annotated[str, AfterValidator(_local_path)]
Metric = Annotated[str, AfterValidator(_validation_metric)]


class BasePretraining(Strict):
    """Pre-train the preset's Mask2Former before the first stage, on synthetic still images with every
    object labelled (:mod:`aavs.orchestrator.recipe.base_pretraining`): the stand-in for the ADE20k base
    a preset lacks. The stages then start from it and keep it frozen, as the method keeps its pre-trained
    base."""

    steps: int = Field(600, ge=1)
    images_per_step: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0


class ModelConfig(Strict):
    """The network: a registered ``type`` on a ``preset`` (random weights), a local Hugging Face
    Mask2Former folder (``pretrained``), or both (the preset's architecture on a folder pre-trained for
    it); plus the audio front end's VGGish files.

    ``pretrain`` (experiment files only, with a preset) makes that folder first: the run pre-trains the
    preset into ``<results>/<name>/base`` and hands it to every trial as ``pretrained``."""

    type: Annotated[str, AfterValidator(_registered_model_type)] = DEFAULT_TYPE
    preset: str | None = None  # one of the type's presets (aavs.models.registry)
    pretrained: LocalPath | None = None
    pretrain: BasePretraining | None = None
    vggish: LocalPath | None = None  # None: random VGGish weights (a warning says so)
    vggish_pca: LocalPath | None = None  # AudioSet PCA on top of the raw embeddings (docs/method.md §2)
    overrides: dict[str, Any] = {}  # the network's configuration fields, e.g. {num_queries: 7}

    @model_validator(mode="after")
    def _one_base(self) -> ModelConfig:
        if self.preset is not None and self.preset not in model_presets(self.type):
            raise Expected(
                f"a preset of model type {self.type}: one of {list(model_presets(self.type))}",
                at=("preset",),
                got=self.preset,
            )
        if self.preset is None and self.pretrained is None:
            raise Expected("'preset', 'pretrained' or both", got=self.model_dump(exclude_defaults=True))
        if self.pretrain is not None and (self.preset is None or self.pretrained is not None):
            raise Expected(
                "'pretrain' with a 'preset' and no 'pretrained' (it pre-trains the preset's own base)",
                got=self.model_dump(exclude_defaults=True),
            )
        return self

    @property
    def trains_base(self) -> bool:
        """Whether the whole Mask2Former trains: only a preset's random one (without ``pretrain``)."""
        return bool(
            self.overrides.get("train_base", self.preset == "tiny" and not self.pretrained and not self.pretrain)
        )


class DeepSpeedConfig(Strict):
    # ZeRO-3 partitions the parameters themselves; saving and evaluating the trainable parts would
    # need gathering we have not built yet, so only stages 1 and 2 are accepted.
    zero_stage: Literal[1, 2] = 2


class ComputeConfig(Strict):
    """Where and how each trial trains: its Ray resources, the parallel strategy and the precision."""

    workers_per_trial: int = Field(1, ge=1)  # training processes (Ray Train workers) per trial
    gpus_per_worker: float = Field(0, ge=0)  # 0: the CPU, even where a GPU is visible
    cpus_per_worker: float = Field(1, ge=0)
    strategy: Literal["plain", "ddp", "deepspeed"] = "plain"  # plain: one device; deepspeed: ZeRO via accelerate
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # torch.compile the model in each phase (accelerate's inductor backend; the first steps compile)
    compile: bool = False
    loader_workers: int = Field(2, ge=0)  # DataLoader worker processes per training process
    # A split too large for the loader's in-memory cache is decoded once into a memory-mapped store on
    # the node's disk, $AAVS_CACHE_DIR/frames (aavs.datasets.frame_store: the same bytes, no JPEG
    # decoding per epoch).
    frame_store: bool = True
    max_failures: int = Field(1, ge=0)  # Ray retries a failed trial from its last checkpoint this many times
    # How a multi-worker trial's workers are placed (its Ray Train placement group's strategy): pack,
    # Ray's default, fills a node before the next (DDP over local links); spread puts them on as many
    # nodes as it can. A one-worker trial is one bundle, where either is the same.
    placement: Literal["pack", "spread"] = "pack"

    @model_validator(mode="after")
    def _parallel_strategy(self) -> ComputeConfig:
        if self.workers_per_trial > 1 and self.strategy == "plain":
            raise Expected("'ddp' or 'deepspeed' when workers_per_trial > 1", at=("strategy",), got=self.strategy)
        return self

    @property
    def cpu(self) -> bool:
        """Train on the CPU, even where a GPU is visible (``gpus_per_worker: 0``)."""
        return self.gpus_per_worker == 0


class Hyperparameters(Strict):
    """What a stage's ``params`` may search. The defaults are the paper's recipe; ``adapter_warmup``
    and ``grad_clip`` default to the task's (:mod:`aavs.datasets.tasks`, docs/method.md §4)."""

    lr: float = Field(1e-3, gt=0)  # phase A
    lr_b: float | None = Field(
        None, gt=0
    )  # phase B; None: lr / 10 (1e-3 -> 1e-4 as in the paper), or lr without a warm-up
    weight_decay: float = Field(0.05, ge=0)
    adapter_warmup: float = Field(0.5, ge=0, lt=1)  # the fraction of the epochs in phase A
    grad_clip: float | None = Field(0.01, gt=0)  # max gradient norm; None: no clipping
    batch_size: int = Field(1, ge=1)  # videos per step per worker
    grad_accum: int = Field(1, ge=1)
    seed: int = 3407
    # A stage with a prior (stage two): the prior its training set carries. ground-truth, the paper's, is
    # the true sounding mask; stage-one is stage one's exported masks of the training split, the prior
    # it is validated and tested on. Filled in only for a stage with a prior (StageSpec).
    prior_train: Literal["ground-truth", "stage-one"] = "ground-truth"


def task_defaults(task: str) -> dict[str, Any]:
    """The reference's recipe for ``task`` where it differs between tasks (docs/method.md §4): phase A
    is half of stage one and a third of stage two, gradients are clipped in stage one only, and stage
    two runs its videos in file order (v1s, v1m, v2) where the others shuffle."""
    task_ = get_task(task)
    return {"adapter_warmup": task_.adapter_warmup, "grad_clip": task_.grad_clip, "shuffle": task_.shuffle}


class TrainConfig(Hyperparameters):
    """One training run: its stage's settings, its trial's hyperparameters, and where things are."""

    task: TaskName
    data_root: str
    trial_dir: str
    model: ModelConfig = ModelConfig(preset="tiny")
    audio_cache: str | None = None  # embeddings cache folder (default: $AAVS_CACHE_DIR or ~/.cache/aavs)
    prior: str | None = None  # stage two: stage one's masks for val/test, and for training with prior_train stage-one
    init_from: str | None = None  # a checkpoint folder whose matching trainable weights start this run
    epochs: int = Field(60, ge=1)
    metric: Metric = "val/miou"
    mode: Literal["max", "min"] = "max"
    max_videos: int | None = Field(None, ge=1)  # cap on training videos per epoch (smoke tests, demos)
    shuffle: bool = True  # a new order of the training videos every epoch; default: the task's
    compute: ComputeConfig = ComputeConfig()
    # Under Ray Tune: every this many epochs a report carries the trial's training state as a Tune
    # checkpoint, for population-based training to hand to other trials (0: never; reporter.py).
    report_checkpoints: int = Field(0, ge=0)
    # Where a running epoch stands (step, frames/s, ETAs) goes to status.json and the trial's log at
    # most this often: a swin-base epoch on AVSBench takes many minutes.
    progress_interval_s: float = Field(30.0, gt=0)
    # --local: a file whose appearance (``aavs stop``, Ctrl-C) ends the trial after its current step
    # (aavs.orchestrator.experiment.stopping); under Ray, Tune ends trials itself.
    stop_file: str | None = None

    @model_validator(mode="after")
    def _task_defaults(self) -> TrainConfig:
        for key, value in task_defaults(self.task).items():
            if key not in self.model_fields_set:
                setattr(self, key, value)
        return self

    @model_validator(mode="after")
    def _stage_one_prior_needs_masks(self) -> TrainConfig:
        if self.prior_train == "stage-one" and self.prior is None:
            raise Expected("ground-truth without a prior (stage-one trains on its masks)", at=("prior_train",))
        return self

    @classmethod
    def load(cls, config: Mapping[str, Any]) -> TrainConfig:
        return validated(cls, config, "training config")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def phase_a_epochs(self) -> int:
        """``floor(epochs * adapter_warmup)``: with 1/2 and 1/3 exactly the reference's ``epochs // 2``
        (stage one) and ``epochs // 3`` (stage two), docs/method.md §4; 0 for a model type without a
        warm-up phase (aavs.models.registry).
        The 1e-9 keeps a product that floating point puts just under a whole number (100 * 0.29 is
        28.999999999999996) on it."""
        if not get_model_type(self.model.type).warmup:
            return 0
        return math.floor(self.epochs * self.adapter_warmup + 1e-9)

    @property
    def learning_rate_b(self) -> float:
        """Phase B's rate: ``lr_b``; by default a tenth of ``lr`` after a warm-up, ``lr`` itself for a
        model type without one (whose every epoch is phase B)."""
        if self.lr_b is not None:
            return self.lr_b
        return self.lr / 10.0 if get_model_type(self.model.type).warmup else self.lr

    def phase_of(self, epoch: int) -> str:
        return "A" if epoch < self.phase_a_epochs else "B"


# ------------------------------------------------------------------------------- error messages
M = TypeVar("M", bound=BaseModel)

# What pydantic's error types expect, in the words of our messages (others: pydantic's own words).
EXPECTATIONS = {
    "missing": "this key (it is required)",
    "bool_type": "true or false",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "literal_error": "one of {expected}",
    "greater_than": "a number > {gt:g}",
    "greater_than_equal": "a number >= {ge:g}",
    "less_than": "a number < {lt:g}",
    "too_short": "at least {min_length} item(s)",
}
# Steps pydantic adds to an error's location that are no key of the file: a tagged union's member, a
# mapping's key (as opposed to its value).
_NOT_KEYS = ("value", "[key]")


def validated(model: type[M], data: Any, source: str) -> M:
    """``model`` validated from ``data``; errors as one InputError, a line per problem, each naming
    ``source``, the key path and what was expected."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        schema = model.model_json_schema()
        raise InputError("\n".join(_message(e, schema, source) for e in err.errors())) from None


def _message(error: Any, schema: dict[str, Any], source: str) -> str:
    loc = [step for step in error["loc"] if step not in _NOT_KEYS]
    loc = [step for i, step in enumerate(loc) if i == 0 or step != loc[i - 1]]  # a tag, then its key
    got, ctx = error["input"], error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, Expected):
        loc, expected = loc + list(cause.at), str(cause)
        got = got if cause.got is ... else cause.got
    elif error["type"] == "extra_forbidden":
        expected, got = f"one of the keys {_keys(schema, loc[:-1])} (unknown key)", ...
    elif error["type"] in EXPECTATIONS:
        expected = EXPECTATIONS[error["type"]].format(**ctx)
        got = ... if error["type"] == "missing" else got
    else:
        expected = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    tail = "" if got is ... else f", got {got!r}"
    return f"{source}: {'.'.join(map(_key_text, loc)) or '(top level)'}: expected {expected}{tail}"


def _key_text(step: str | int) -> str:
    """A key as written, or quoted when it holds a line break or another unprintable character (the
    message stays one line a key)."""
    text = str(step)
    return text if text.isprintable() else repr(text)


def _keys(schema: dict[str, Any], loc: list[str | int]) -> list[str]:
    """The keys the JSON Schema allows at ``loc``."""
    node = _resolve(schema, schema)
    for step in loc:
        if isinstance(step, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(step) or node.get("additionalProperties") or {}
        node = _resolve(schema, node)
    return list(node.get("properties", {}))


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its references followed and, of a union, the member that is a mapping."""
    while "$ref" in node or "anyOf" in node or "oneOf" in node:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        else:
            members = node.get("anyOf") or node["oneOf"]
            node = next((m for m in members if "$ref" in m or "properties" in m), members[0])
    return node
