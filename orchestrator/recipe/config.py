"""The configuration of one training run (one stage of one trial), validated once at the edge.

``train_func`` receives a plain ``dict`` (that is what Ray Train and Tune pass around); it becomes a
:class:`TrainConfig` here, and every later line of the recipe can trust it. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from aavs.datasets.errors import InputError

TASKS = ("s4", "ms3", "avss", "avss-binary")
STRATEGIES = ("plain", "ddp", "deepspeed")
PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class ComputeConfig:
    strategy: str = "plain"  # plain: one device; ddp; deepspeed (ZeRO through accelerate)
    zero_stage: int = 2
    mixed_precision: str = "no"
    num_workers: int = 2  # DataLoader worker processes per training process
    cpu: bool = False  # force the CPU even where a GPU is visible

    def __post_init__(self) -> None:
        _one_of("compute.strategy", self.strategy, STRATEGIES)
        _one_of("compute.mixed_precision", self.mixed_precision, PRECISIONS)
        # ZeRO-3 partitions the parameters themselves; saving and evaluating the trainable parts would
        # need gathering we have not built yet, so only stages 1 and 2 are accepted.
        _one_of("compute.zero_stage", self.zero_stage, (1, 2))
        if self.num_workers < 0:
            raise InputError(f"compute.num_workers: expected an integer >= 0, got {self.num_workers}")


@dataclass
class TrainConfig:
    task: str
    data_root: str
    trial_dir: str
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})  # preset | pretrained (+ overrides)
    vggish: str | None = None
    vggish_pca: str | None = None
    audio_cache: str | None = None  # embeddings cache folder (default: $AAVS_CACHE_DIR or ~/.cache/aavs)
    prior: str | None = None  # stage two: stage one's masks for val/test; training uses the true mask
    init_from: str | None = None  # a checkpoint folder whose matching trainable weights start this run
    epochs: int = 60
    batch_size: int = 1  # videos per step per worker
    grad_accum: int = 1
    lr: float = 1e-3  # phase A
    lr_b: float | None = None  # phase B; default lr / 10 (1e-3 -> 1e-4 as in the paper)
    weight_decay: float = 0.05
    adapter_warmup: float = 0.5  # fraction of the epochs in phase A (paper: 1/2 stage one, 1/3 stage two)
    grad_clip: float | None = 0.01
    seed: int = 3407
    metric: str = "val/miou"
    mode: str = "max"
    max_videos: int | None = None  # cap on training videos per epoch (smoke tests, demos)
    # A new order of the training videos every epoch; None: the reference's choice for the task, a
    # shuffle except in stage two (avss), which runs v1s, v1m, v2 in file order (docs/method.md §4).
    shuffle: bool | None = None
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def __post_init__(self) -> None:
        _one_of("task", self.task, TASKS)
        _one_of("mode", self.mode, ("max", "min"))
        if self.shuffle is None:
            self.shuffle = self.task != "avss"
        if not isinstance(self.shuffle, bool):
            raise InputError(f"shuffle: expected true or false, got {self.shuffle!r}")
        if not (set(self.model) <= {"preset", "pretrained", "overrides"}) or ("preset" in self.model) == ("pretrained" in self.model):
            raise InputError(f"model: expected exactly one of 'preset' or 'pretrained' (and optional 'overrides'), got {sorted(self.model)}")
        for key in ("epochs", "batch_size", "grad_accum"):
            if int(getattr(self, key)) < 1:
                raise InputError(f"{key}: expected an integer >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.adapter_warmup < 1.0:
            raise InputError(f"adapter_warmup: expected a fraction in [0, 1), got {self.adapter_warmup}")
        if self.lr <= 0 or (self.lr_b is not None and self.lr_b <= 0):
            raise InputError(f"lr: expected positive learning rates, got lr={self.lr} lr_b={self.lr_b}")

    @property
    def phase_a_epochs(self) -> int:
        """``floor(epochs * adapter_warmup)``: with 1/2 and 1/3 exactly the reference's ``epochs // 2``
        (stage one) and ``epochs // 3`` (stage two), docs/method.md §4.
        The 1e-9 keeps a product that floating point puts just under a whole number (100 * 0.29 is
        28.999999999999996) on it."""
        return math.floor(self.epochs * self.adapter_warmup + 1e-9)

    @property
    def learning_rate_b(self) -> float:
        return self.lr_b if self.lr_b is not None else self.lr / 10.0

    def phase_of(self, epoch: int) -> str:
        return "A" if epoch < self.phase_a_epochs else "B"

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "TrainConfig":
        config = dict(config)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(f"training config: unknown key(s) {unknown}; expected some of {sorted(known)}")
        compute = config.pop("compute", None) or {}
        if isinstance(compute, Mapping):
            ckeys = {f.name for f in dataclasses.fields(ComputeConfig)}
            bad = sorted(set(compute) - ckeys)
            if bad:
                raise InputError(f"compute: unknown key(s) {bad}; expected some of {sorted(ckeys)}")
            compute = ComputeConfig(**compute)
        try:
            return cls(compute=compute, **config)
        except TypeError as err:  # a missing required key
            raise InputError(f"training config: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise InputError(f"{key}: expected one of {list(allowed)}, got {value!r}")
