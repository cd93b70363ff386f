"""Experiment files (``experiments/*.yaml``): parsed once, validated into typed objects.

Every error names the file, the key path and what was expected; unknown keys are errors. Relative
paths are resolved against the current directory (where ``aavs run`` is started; under
``ray job submit`` that is the uploaded working directory).

Search-space syntax of a stage's ``params`` (each key a hyperparameter of the training run)::

    lr: 1.0e-3                          # a fixed value
    lr: {loguniform: [1.0e-4, 3.0e-3]}  # sampled log-uniformly
    adapter_warmup: {uniform: [0.3, 0.6]}
    batch_size: {choice: [1, 2]}        # sampled from the list
    weight_decay: {grid: [0.0, 0.05]}   # every value, times num_samples (as Ray Tune's grid_search)

Trials are sampled here, deterministically from ``tune.seed``, so that a trial's id and parameters
are the same every time the experiment is run or resumed.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from aavs.datasets.errors import InputError
from aavs.orchestrator.recipe.config import PRECISIONS, STRATEGIES, TASKS

SEARCHABLE = ("lr", "lr_b", "weight_decay", "adapter_warmup", "grad_clip", "batch_size", "grad_accum", "seed")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class DataSpec:
    root: str | None = None
    synthetic: dict[str, int] | None = None  # {videos_per_split, seed}: generated into the results folder


@dataclass
class ModelSpec:
    preset: str | None = None
    pretrained: str | None = None
    vggish: str | None = None
    vggish_pca: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ComputeSpec:
    workers_per_trial: int = 1
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    strategy: str = "plain"
    zero_stage: int = 2
    mixed_precision: str = "no"
    loader_workers: int = 2
    max_failures: int = 1  # Ray retries a failed trial from its last checkpoint this many times


@dataclass
class TuneSpec:
    metric: str = "val/miou"
    mode: str = "max"
    num_samples: int = 1
    max_concurrent: int = 0  # 0: as many as the cluster fits
    scheduler: str = "fifo"
    grace_period: int = 1
    reduction_factor: int = 2
    seed: int = 0


@dataclass
class StageSpec:
    name: str
    task: str
    epochs: int
    params: dict[str, Any]
    tune: TuneSpec
    prior: str | None = None
    init_from: str | None = None
    max_videos: int | None = None
    shuffle: bool | None = None  # a new video order every epoch; None: the task's default (stage two: no)
    # Custom Ray resources each trial (and the stage's mask export and test evaluation) requests,
    # e.g. {node_a: 0.01} to keep the stage on the nodes that advertise node_a. Placement only:
    # not part of the stage's inputs, so moving a stage never re-runs it.
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class ExperimentSpec:
    name: str
    data: DataSpec
    model: ModelSpec
    compute: ComputeSpec
    stages: list[StageSpec]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("source")
        return out

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)


class _Where:
    """The file and key path an error is about."""

    def __init__(self, source: str, path: str = ""):
        self.source, self.path = source, path

    def __truediv__(self, key: Any) -> "_Where":
        return _Where(self.source, f"{self.path}.{key}" if self.path else str(key))

    def error(self, expected: str, got: Any = ...) -> InputError:
        tail = "" if got is ... else f", got {got!r}"
        return InputError(f"{self.source}: {self.path or '(top level)'}: expected {expected}{tail}")


def _mapping(where: _Where, value: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, Mapping):
        raise where.error(f"a mapping with keys {list(allowed)}", value)
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise (where / unknown[0]).error(f"one of the keys {list(allowed)} (unknown key)")
    for key in required:
        if key not in value:
            raise (where / key).error("this key (it is required)")
    return dict(value)


def _typed(where: _Where, value: Any, kind: type | tuple, expected: str) -> Any:
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise where.error(expected, value)
    if not isinstance(value, kind):
        raise where.error(expected, value)
    return value


def _int(where: _Where, value: Any, minimum: int = 0) -> int:
    _typed(where, value, int, f"an integer >= {minimum}")
    if value < minimum:
        raise where.error(f"an integer >= {minimum}", value)
    return value


def _choice(where: _Where, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise where.error(f"one of {list(allowed)}", value)
    return value


def _path(where: _Where, value: Any) -> str:
    _typed(where, value, str, "a path")
    return str(Path(value).expanduser().resolve())


# --------------------------------------------------------------------------------- search space
DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid")


def _param(where: _Where, value: Any) -> Any:
    if isinstance(value, Mapping):
        if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
            raise where.error(f"a value or one of {{{', '.join(DISTRIBUTIONS)}: ...}}", dict(value))
        kind, arg = next(iter(value.items()))
        if kind in ("loguniform", "uniform"):
            if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, (int, float)) for x in arg)
                    and arg[0] < arg[1] and (kind == "uniform" or arg[0] > 0)):
                raise (where / kind).error("[low, high] with low < high" + (" and low > 0" if kind == "loguniform" else ""), arg)
        elif not (isinstance(arg, list) and arg):
            raise (where / kind).error("a non-empty list of values", arg)
        return {kind: list(arg)}
    return value


def sample_trials(params: Mapping[str, Any], num_samples: int, seed: int) -> list[dict[str, Any]]:
    """Concrete parameter sets: the grid's product, each repeated ``num_samples`` times with the
    random distributions sampled from a generator seeded by ``seed`` (same trials every time)."""
    rng = random.Random(seed)
    grid_keys = [k for k, v in params.items() if isinstance(v, Mapping) and "grid" in v]
    grids = list(itertools.product(*(params[k]["grid"] for k in grid_keys))) or [()]
    trials = []
    for _ in range(num_samples):
        for combo in grids:
            trial = dict(zip(grid_keys, combo))
            for key, value in params.items():
                if key in trial:
                    continue
                if isinstance(value, Mapping):
                    kind, arg = next(iter(value.items()))
                    if kind == "loguniform":
                        value = math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1])))
                    elif kind == "uniform":
                        value = rng.uniform(arg[0], arg[1])
                    else:  # choice
                        value = rng.choice(arg)
                trial[key] = value
            trials.append(trial)
    return trials


# -------------------------------------------------------------------------------------- parsing
def _parse_stage(where: _Where, raw: Any, earlier: list[str]) -> StageSpec:
    raw = _mapping(where, raw, ("name", "task", "epochs", "params", "tune", "prior", "init_from", "max_videos",
                                "shuffle", "resources"), required=("name", "task"))
    name = _typed(where / "name", raw["name"], str, "a plain name (letters, digits, . _ -)")
    if not NAME.match(name):
        raise (where / "name").error("a plain name (letters, digits, . _ -)", name)
    if name in earlier:
        raise (where / "name").error("a name not used by an earlier stage", name)
    task = _choice(where / "task", raw["task"], TASKS)
    epochs = _int(where / "epochs", raw.get("epochs", 60), 1)
    params_raw = raw.get("params") or {}
    params = _mapping(where / "params", params_raw, SEARCHABLE)
    params = {k: _param(where / "params" / k, v) for k, v in params.items()}
    tune_raw = _mapping(where / "tune", raw.get("tune") or {},
                        ("metric", "mode", "num_samples", "max_concurrent", "scheduler", "seed"))
    scheduler = tune_raw.pop("scheduler", "fifo")
    sched: dict[str, Any] = {}
    if isinstance(scheduler, Mapping):
        sw = where / "tune" / "scheduler"
        body = _mapping(sw, scheduler, ("asha", "fifo"))
        if len(body) != 1:
            raise sw.error("exactly one of 'asha' or 'fifo'", dict(scheduler))
        kind, opts = next(iter(body.items()))
        opts = _mapping(sw / kind, opts or {}, ("grace_period", "reduction_factor"))
        sched = {"scheduler": kind, **{k: _int(sw / kind / k, v, 1) for k, v in opts.items()}}
    else:
        sched = {"scheduler": _choice(where / "tune" / "scheduler", scheduler, ("fifo", "asha"))}
    tune = TuneSpec(**{**tune_raw, **sched})
    _choice(where / "tune" / "mode", tune.mode, ("max", "min"))
    _int(where / "tune" / "num_samples", tune.num_samples, 1)
    _int(where / "tune" / "max_concurrent", tune.max_concurrent, 0)
    _typed(where / "tune" / "metric", tune.metric, str, "a metric name such as val/miou")
    if not tune.metric.startswith("val/"):
        raise (where / "tune" / "metric").error("a validation metric (val/miou, val/fscore, ...)", tune.metric)
    for key in ("prior", "init_from"):
        ref = raw.get(key)
        if ref is not None and ref not in earlier:
            raise (where / key).error(f"the name of an earlier stage ({earlier or 'none yet'})", ref)
    if raw.get("prior") is not None and task != "avss":
        raise (where / "prior").error("a prior only on an 'avss' (stage-two) stage", raw.get("prior"))
    max_videos = raw.get("max_videos")
    if max_videos is not None:
        max_videos = _int(where / "max_videos", max_videos, 1)
    shuffle = raw.get("shuffle")
    if shuffle is not None:
        _typed(where / "shuffle", shuffle, bool, "true or false (default: false for 'avss', true otherwise)")
    return StageSpec(name=name, task=task, epochs=epochs, params=params, tune=tune,
                     prior=raw.get("prior"), init_from=raw.get("init_from"), max_videos=max_videos,
                     shuffle=shuffle,
                     resources=_resources(where / "resources", raw.get("resources")))


RESERVED_RESOURCES = ("cpu", "gpu", "memory", "object_store_memory", "custom_resources")


def _resources(where: _Where, raw: Any) -> dict[str, float]:
    """Custom Ray resource names to amounts > 0 (CPUs and GPUs come from ``compute``)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise where.error("a mapping of custom Ray resource names to amounts, e.g. {node_a: 0.01}", raw)
    out = {}
    for name, amount in raw.items():
        if not isinstance(name, str) or not name or name.lower() in RESERVED_RESOURCES:
            raise (where / name).error("a custom resource name (CPUs and GPUs are set under compute)", name)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
            raise (where / name).error("a number > 0", amount)
        out[name] = float(amount)
    return out


def parse_spec(raw: Any, source: str) -> ExperimentSpec:
    top = _Where(source)
    raw = _mapping(top, raw, ("name", "data", "model", "compute", "stages"), required=("name", "data", "model", "stages"))
    name = _typed(top / "name", raw["name"], str, "a plain name (letters, digits, . _ -)")
    if not NAME.match(name):
        raise (top / "name").error("a plain name (letters, digits, . _ -)", name)

    data_raw = _mapping(top / "data", raw["data"], ("root", "synthetic"))
    if len(data_raw) != 1:
        raise (top / "data").error("exactly one of 'root' or 'synthetic'", dict(raw["data"]))
    if "root" in data_raw:
        data = DataSpec(root=_path(top / "data" / "root", data_raw["root"]))
    else:
        syn = _mapping(top / "data" / "synthetic", data_raw["synthetic"] or {}, ("videos_per_split", "seed"))
        data = DataSpec(synthetic={"videos_per_split": _int(top / "data" / "synthetic" / "videos_per_split", syn.get("videos_per_split", 8), 1),
                                   "seed": _int(top / "data" / "synthetic" / "seed", syn.get("seed", 0), 0)})

    m = _mapping(top / "model", raw["model"], ("preset", "pretrained", "vggish", "vggish_pca", "overrides"))
    if ("preset" in m) == ("pretrained" in m):
        raise (top / "model").error("exactly one of 'preset' or 'pretrained'", dict(raw["model"]))
    model = ModelSpec(
        preset=_choice(top / "model" / "preset", m["preset"], ("tiny", "swin-base")) if "preset" in m else None,
        pretrained=_path(top / "model" / "pretrained", m["pretrained"]) if "pretrained" in m else None,
        vggish=_path(top / "model" / "vggish", m["vggish"]) if m.get("vggish") else None,
        vggish_pca=_path(top / "model" / "vggish_pca", m["vggish_pca"]) if m.get("vggish_pca") else None,
        overrides=_mapping(top / "model" / "overrides", m.get("overrides") or {},
                           tuple((m.get("overrides") or {}).keys())),
    )

    c = _mapping(top / "compute", raw.get("compute") or {},
                 ("workers_per_trial", "gpus_per_worker", "cpus_per_worker", "strategy", "deepspeed",
                  "mixed_precision", "loader_workers", "max_failures"))
    ds = _mapping(top / "compute" / "deepspeed", c.pop("deepspeed", None) or {}, ("zero_stage",))
    compute = ComputeSpec(**c, **ds)
    cw = top / "compute"
    _int(cw / "workers_per_trial", compute.workers_per_trial, 1)
    _int(cw / "loader_workers", compute.loader_workers, 0)
    _int(cw / "max_failures", compute.max_failures, 0)
    for key in ("gpus_per_worker", "cpus_per_worker"):
        v = _typed(cw / key, getattr(compute, key), (int, float), "a number >= 0")
        if v < 0:
            raise (cw / key).error("a number >= 0", v)
    _choice(cw / "strategy", compute.strategy, STRATEGIES)
    _choice(cw / "mixed_precision", compute.mixed_precision, PRECISIONS)
    _choice(cw / "deepspeed" / "zero_stage", compute.zero_stage, (1, 2))
    if compute.workers_per_trial > 1 and compute.strategy == "plain":
        raise (cw / "strategy").error("'ddp' or 'deepspeed' when workers_per_trial > 1", "plain")

    stages_raw = raw["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise (top / "stages").error("a non-empty list of stages", stages_raw)
    stages: list[StageSpec] = []
    for i, s in enumerate(stages_raw):
        stages.append(_parse_stage(top / "stages" / i, s, [x.name for x in stages]))
    return ExperimentSpec(name=name, data=data, model=model, compute=compute, stages=stages, source=source)


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
    raw = apply_overrides(raw or {}, overrides or [], str(path))
    return parse_spec(raw, str(path)), raw


def spec_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
