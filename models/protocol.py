"""What the recipe, evaluation and prediction need of a segmentation network: the seam for a second model.

The training recipe (``orchestrator/recipe/train.py``), the prediction loop (``evaluation.py``) and
``aavs predict`` use a network only through :class:`SegmentationModel`; they build and load one only
through :mod:`aavs.models.registry`, keyed by the experiment file's ``model.type``. Two implement it:
:class:`aavs.models.modeling_aavs.AAVS` and AVSBench's baseline
(:class:`aavs.models.modeling_avsbench.AVSBench`). A new model is a module implementing this protocol
plus one registration (docs/models.md); no recipe change.

Phases are AAVS's two-step adapter warm-up (docs/method.md §4); the recipe switches phase at the
epoch the stage's ``adapter_warmup`` says, for a type registered with ``warmup=True``. A type without a
warm-up trains every epoch in phase B: its ``set_phase`` is called once with ``"B"`` and may only
record the name, and ``phase_parameter_groups("B", ...)`` returns every trainable parameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class ModelConfig(Protocol):
    """What callers read of a network's configuration (``model.config``)."""

    task: str  # the name of its task in aavs.datasets.tasks, which decides binary / semantic and the prior
    image_size: int  # square input size the frames are resized to

    @property
    def model_type(self) -> str:
        """Its name in aavs.models.registry (the experiment file's model.type)."""

    @property
    def num_labels(self) -> int:
        """Classes it scores, background included (no-object excluded)."""

    @property
    def class_names(self) -> tuple[str, ...]:
        """Its classes in index order, background first."""


class ModelOutput(Protocol):
    """A forward pass's result; ``loss`` is set when ``labels`` were given."""

    loss: Tensor | None


@runtime_checkable
class SegmentationModel(Protocol):
    """An audio-visual segmentation network (an ``nn.Module``) as the recipe and evaluation use it."""

    config: ModelConfig
    phase: str | None  # the training phase set last (see the module docstring)

    def __call__(
        self,
        pixel_values: Tensor,
        audio: Tensor,
        prior: Tensor | None = None,
        labels: Tensor | None = None,
        loss_frames: Tensor | None = None,
        video_frames: Sequence[int] | None = None,
    ) -> ModelOutput:
        """Frames ``[N, 3, S, S]`` normalised, audio ``[N, 128]`` (one embedding per frame), prior
        ``[N, h, w]`` in [0, 1] for a task that takes one, labels ``[N, H, W]`` class per pixel,
        ``loss_frames`` ``[N]`` bool (frames counting in the loss; default all), ``video_frames`` the
        number of frames of each video in order (default: one video; a network whose frames are
        independent ignores it)."""

    def class_scores(self, output: Any) -> Tensor:
        """Per-class score maps ``[N, C, 224, 224]`` of a forward output; the argmax is the prediction
        (binary tasks: channel 1 is "sounding")."""

    def predict(self, frames: Any, audio: Any, prior: Any = None, batch_size: int | None = None) -> Tensor:
        """RGB uint8 frames ``[T, H, W, 3]`` (+ audio ``[T, 128]``, prior ``[T, h, w]``) -> scores
        ``[T, C, 224, 224]`` float32 on the CPU, in eval mode."""

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Every weight trainable in some phase: what a checkpoint of a pre-trained base stores."""

    def load_trainable_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True) -> None:
        """Copy trainable weights in; unknown keys, wrong shapes (and, ``strict``, missing keys) are an
        InputError naming them."""

    def set_phase(self, phase: str) -> None:
        """Enter training phase ``phase`` (``A`` or ``B``): which parameters train."""

    def phase_parameter_groups(self, phase: str, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups of ``phase`` (the model must be in it)."""

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write a checkpoint folder that the registry's ``load`` reads back."""

    # What the recipe and evaluation use of ``nn.Module`` itself.
    training: bool

    def train(self, mode: bool = True) -> Any:
        """``nn.Module.train``."""

    def eval(self) -> Any:
        """``nn.Module.eval``."""

    def to(self, device: torch.device | str) -> Any:
        """``nn.Module.to``: the network on ``device``."""

    def parameters(self) -> Iterator[nn.Parameter]:
        """``nn.Module.parameters``."""
