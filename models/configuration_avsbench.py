"""Configuration of an AVSBench baseline network (``model.type: avsbench``, docs/models.md).

AVSBench's ECCV 2022 method (Zhou et al., "Audio-Visual Segmentation"): a visual backbone, TPAVI
audio-visual fusion after each of its four stages, and an FPN-style decoder. Its public code trains it
on two backbones; our presets name them, plus a small one for tests and the CPU demo:

| preset | backbone | stage channels | decoder width | input |
| --- | --- | --- | --- | --- |
| ``pvt-v2-b5`` | PVT-v2 b5 (timm's class) | 64, 128, 320, 512 | 256 | 224 |
| ``resnet-50`` | ResNet-50 (torchvision's class) | 256, 512, 1024, 2048 | 256 | 224 |
| ``tiny`` | ResNet with one basic block per stage (torchvision's class) | 64, 128, 256, 512 | 32 | 128 |

The task decides the head: one sounding logit for the binary tasks, one per class (the data's
label2idx.json names, background first) for ``avss``. ``avm_weight`` is the weight of the
audio-visual matching loss, per frame (see :mod:`aavs.models.modeling_avsbench`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import get_task
from aavs.models.configuration_aavs import task_labels

# preset -> (stage channels, decoder width, input size)
BACKBONES: dict[str, tuple[tuple[int, ...], int, int]] = {
    "pvt-v2-b5": ((64, 128, 320, 512), 256, 224),
    "resnet-50": ((256, 512, 1024, 2048), 256, 224),
    "tiny": ((64, 128, 256, 512), 32, 128),
}

# The public code's matching-loss weight is 0.5 of a loss summed over the batch's frames for MS3
# (4 videos x 5 frames: 10 per frame) and averaged over frames for AVSS (0.5 per frame); S4 trains
# without it. The binary task over every subset (stage one) takes MS3's.
DEFAULT_AVM_WEIGHT = {"s4": 0.0, "ms3": 10.0, "avss-binary": 10.0, "avss": 0.5}


@dataclass
class AVSBenchConfig:
    """Everything needed to rebuild an AVSBench network (``to_dict`` / ``from_dict`` round-trip)."""

    model_type: ClassVar[str] = "avsbench"  # its name in aavs.models.registry

    task: str
    backbone: str  # a key of BACKBONES
    classes: tuple[str, ...]  # id2label in index order, background first
    image_size: int = 224
    group_frames: int = 5  # TPAVI relates the frames of consecutive groups of this many per video
    avm_weight: float = 0.0
    drop_path: float = 0.1  # PVT-v2's stochastic depth, as the public code trains it

    def __post_init__(self) -> None:
        get_task(self.task)
        if self.backbone not in BACKBONES:
            raise InputError(f"backbone {self.backbone!r}: expected one of {', '.join(BACKBONES)}")
        if self.image_size % 32 or not 32 <= self.image_size <= 1024:
            raise InputError(f"image_size {self.image_size}: expected a multiple of 32 in [32, 1024]")
        if self.group_frames < 1:
            raise InputError(f"group_frames {self.group_frames}: expected at least 1")
        self.classes = tuple(self.classes)

    @property
    def semantic(self) -> bool:
        return get_task(self.task).semantic

    @property
    def num_labels(self) -> int:
        """Classes it scores, background included."""
        return len(self.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classes

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return BACKBONES[self.backbone][0]

    @property
    def channel(self) -> int:
        """Width of the decoder and of TPAVI's input (256 in the public code)."""
        return BACKBONES[self.backbone][1]

    @property
    def out_channels(self) -> int:
        """The head's outputs: one sounding logit (binary), or one logit per class."""
        return self.num_labels if self.semantic else 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> AVSBenchConfig:
        if not isinstance(data, dict):
            raise InputError(f"an AVSBench config must be a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown AVSBench config keys {unknown}: expected {sorted(names)}")
        return cls(**data)


def make_config(task: str, preset: str, classes: Sequence[str] | None = None, **overrides: Any) -> AVSBenchConfig:
    """The ``preset`` network for ``task`` (``classes``: a semantic task's, AVSBench's 71 by default),
    with the preset's input size and the task's matching-loss weight unless ``overrides`` say."""
    if preset not in BACKBONES:
        raise InputError(f"preset {preset!r}: model type avsbench has the presets {', '.join(BACKBONES)}")
    fields = {
        "image_size": BACKBONES[preset][2],
        "avm_weight": DEFAULT_AVM_WEIGHT.get(get_task(task).name, 0.0),
        **overrides,
    }
    allowed = {"image_size", "group_frames", "avm_weight", "drop_path"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise InputError(f"model.overrides {unknown}: an avsbench network takes {sorted(allowed)}")
    labels = task_labels(task, classes)
    return AVSBenchConfig(task=task, backbone=preset, classes=tuple(labels.values()), **fields)
