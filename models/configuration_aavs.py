"""Configuration of an AAVS network: the task, where its base came from, and the Mask2Former config.

The task's attributes (:mod:`aavs.datasets.tasks`: ``semantic``, ``takes_prior``) decide the network
(docs/method.md §3, §5):

| task | network | labels (+ no-object) | queries |
| --- | --- | --- | --- |
| s4, ms3, avss-binary | stage one: binary, decoder adapters replace the output projections | 2 (background, sounding) | 30 |
| avss | stage two: semantic, decoder adapters follow the projections, takes a prior | the data's, background first | 100 |

The semantic network's classes are those of the data's label2idx.json (docs/method.md §1; AVSBench's
71 when none is given). ``num_labels``, the class names (``id2label``) and ``num_queries`` live in the
Mask2Former config (one source of truth) and are exposed here as properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from transformers import Mask2FormerConfig

from aavs.datasets.errors import InputError
from aavs.datasets.layout import AVSBENCH_CLASSES
from aavs.datasets.tasks import BINARY_CLASSES, get_task


def task_labels(task: str, classes: Sequence[str] | None = None) -> dict[int, str]:
    """id2label of the task's network: background / sounding for the binary tasks (which ignore
    ``classes``); for a semantic task ``classes``, the data's label2idx.json names in index order
    (default: AVSBench's 71)."""
    if get_task(task).binary:
        return dict(enumerate(BINARY_CLASSES))
    names = AVSBENCH_CLASSES if classes is None else tuple(classes)
    if len(names) < 2 or names[0] != "background" or len(set(names)) != len(names):
        raise InputError(
            f"the semantic network's classes must be distinct names, 'background' first and at "
            f"least one more: got {list(names)}"
        )
    return dict(enumerate(names))


@dataclass
class AAVSConfig:
    """Everything needed to rebuild an AAVS network.

    ``base`` is a preset name (``tiny``, ``swin-base``) or the absolute path of the Mask2Former
    folder the frozen weights come from. ``image_size`` is the square network input (frames are
    resized to it; the per-class scores are computed at it before going to 224 x 224).
    """

    model_type: ClassVar[str] = "aavs"  # its name in aavs.models.registry (an experiment's model.type)

    task: str
    base: str
    image_size: int
    mask2former: Mask2FormerConfig
    audio_dim: int = 128  # VGGish embedding size
    audio_hidden_dim: int = 512  # hidden width of the audio projection MLP
    adapter_reduction: int = 4  # bottleneck adapters are d -> d / reduction -> d
    # Train the Mask2Former weights too (both phases). The method freezes them because they are
    # pre-trained; a randomly initialised preset (tiny) has nothing to preserve and cannot learn
    # through adapters alone, so the tiny preset sets this.
    train_base: bool = False

    def __post_init__(self) -> None:
        get_task(self.task)

    @property
    def semantic(self) -> bool:
        """True for the stage-two network: the data's classes, decoder adapters following the projections."""
        return get_task(self.task).semantic

    @property
    def takes_prior(self) -> bool:
        """True for a network with the prior embeddings, fed stage one's masks (stage two)."""
        return get_task(self.task).takes_prior

    @property
    def id2label(self) -> dict[int, str]:
        """The Mask2Former config's id2label, which a config always has (two labels by default) and whose
        keys it makes ints; its annotation allows None and str keys."""
        return cast(dict[int, str], self.mask2former.id2label)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The network's classes in index order, background first (its id2label)."""
        return tuple(self.id2label[i] for i in range(self.num_labels))

    @property
    def num_queries(self) -> int:
        return self.mask2former.num_queries

    @property
    def hidden_dim(self) -> int:
        return self.mask2former.hidden_dim

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "base": self.base,
            "image_size": self.image_size,
            "audio_dim": self.audio_dim,
            "audio_hidden_dim": self.audio_hidden_dim,
            "adapter_reduction": self.adapter_reduction,
            "train_base": self.train_base,
            "mask2former": self.mask2former.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> AAVSConfig:
        """The config of ``to_dict``'s dict; an InputError for anything else (its keys are checked here)."""
        expected = {"task", "base", "image_size", "audio_dim", "audio_hidden_dim", "adapter_reduction", "mask2former"}
        optional = {"train_base"}
        if not isinstance(data, dict) or not expected <= set(data) <= expected | optional:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise InputError(f"AAVS config: expected the keys {sorted(expected)}, got {got}")
        fields = {k: v for k, v in data.items() if k != "mask2former"}
        for key in ("task", "base"):
            if not isinstance(fields[key], str):
                raise InputError(f"AAVS config: {key} is {fields[key]!r}, expected a string")
        for key in ("image_size", "audio_dim", "audio_hidden_dim", "adapter_reduction"):
            value = fields[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"AAVS config: {key} is {value!r}, expected a positive integer")
        if not isinstance(fields.get("train_base", False), bool):
            raise InputError(f"AAVS config: train_base is {fields['train_base']!r}, expected true or false")
        if not isinstance(data["mask2former"], dict):
            raise InputError(
                f"AAVS config: mask2former is {type(data['mask2former']).__name__}, expected the Mask2Former config"
            )
        return cls(mask2former=Mask2FormerConfig.from_dict(data["mask2former"]), **fields)
