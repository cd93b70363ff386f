"""The model types an experiment can name (``model.type``), and how each is built, loaded and read.

Each entry names its functions as ``"module:attribute"`` strings, imported on first use (as torchtune's
``_component_`` does), so listing or checking the types (the experiment file's validation, ``--help``)
does not import torch or transformers. A type's functions:

- ``build(task, *, preset, pretrained, classes, **overrides)``: a fresh network for ``task`` (its
  classes: the data's label2idx.json names for a semantic task, else None), in phase A;
- ``load(path, base=None, task=None)``: a network from a checkpoint folder its ``save_pretrained``
  wrote (the type may also accept other formats: AAVS reads released ``.pth`` files);
- ``read_weights(folder)``: a checkpoint folder's tensors without building a network;
- optional, for the command line: ``info(*, preset, pretrained, task, classes)`` (a dict; ``aavs
  model-info --json`` prints its ``total_params``, ``trainable_params`` and ``adapter_params``),
  ``render_info(console, info)`` (its rich tables), and ``import_released(released, *, base, task, out,
  classes)`` (``aavs import-checkpoint``: a released checkpoint converted to a folder ``load`` reads).

An entry also lists its ``presets``: the built-in architectures ``model.preset`` may name, known
without importing the model.

The networks implement :class:`aavs.models.protocol.SegmentationModel`, whose ``config.model_type``
is the entry's name. Adding a model: its module(s), and one :func:`register` call below.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aavs.datasets.errors import InputError

if TYPE_CHECKING:
    from torch import Tensor

    from aavs.models.protocol import SegmentationModel

DEFAULT_TYPE = "aavs"


@dataclass(frozen=True)
class ModelType:
    """One registered model: its name (the ``model.type`` value) and its functions as import paths."""

    name: str
    description: str
    build: str
    load: str
    read_weights: str
    presets: tuple[str, ...] = ()
    info: str = ""
    render_info: str = ""
    import_released: str = ""

    def function(self, role: str) -> Callable[..., Any]:
        """The function registered for ``role`` (``build``, ``load``, ``read_weights``, ``info``,
        ``render_info`` or ``import_released``), imported now; an InputError if the type has none."""
        if not getattr(self, role):
            raise InputError(f"model type {self.name!r} has no {role} function")
        module, attribute = getattr(self, role).split(":")
        return getattr(importlib.import_module(module), attribute)


_TYPES: dict[str, ModelType] = {}


def register(model_type: ModelType) -> None:
    """Make ``model_type`` nameable as ``model.type``; a name registered twice is a programming error."""
    if model_type.name in _TYPES:
        raise ValueError(f"model type {model_type.name!r} is registered already")
    _TYPES[model_type.name] = model_type


def model_types() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_TYPES)


def get_model_type(name: str) -> ModelType:
    """The entry called ``name``; an InputError naming it and the known types otherwise."""
    entry = _TYPES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise InputError(f"model.type {name!r} is not a known model type: expected one of {', '.join(_TYPES)}")
    return entry


def model_presets(model_type: str = DEFAULT_TYPE) -> tuple[str, ...]:
    """The preset names ``model_type`` builds (``model.preset``, ``aavs model-info --preset``)."""
    return get_model_type(model_type).presets


def build(
    model_type: str,
    task: str,
    *,
    preset: str | None = None,
    pretrained: str | None = None,
    classes: Sequence[str] | None = None,
    **overrides: Any,
) -> SegmentationModel:
    """A fresh ``model_type`` network for ``task`` on a preset or a local pre-trained folder."""
    return get_model_type(model_type).function("build")(
        task, preset=preset, pretrained=pretrained, classes=classes, **overrides
    )


def load(
    path: str | Path, model_type: str = DEFAULT_TYPE, base: str | None = None, task: str | None = None
) -> SegmentationModel:
    """A ``model_type`` network from a checkpoint (``base`` overrides the stored base folder)."""
    return get_model_type(model_type).function("load")(path, base=base, task=task)


def read_weights(folder: str | Path, model_type: str = DEFAULT_TYPE) -> dict[str, Tensor]:
    """The tensors of a ``model_type`` checkpoint folder."""
    return get_model_type(model_type).function("read_weights")(folder)


def read_checkpoint_classes(checkpoint_dir: str | Path) -> list[str] | None:
    """The class names, in index order, that a checkpoint folder records in its ``aavs.json``
    (aavs.models.checkpoint's META_FILE); None when it records none or cannot be read. Reads that file
    only, so a view of a results folder (the leaderboard) shows them without importing torch."""
    try:
        meta = json.loads((Path(checkpoint_dir) / "aavs.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: not UTF-8, not JSON, an int of too many digits
        return None
    classes = meta.get("classes") if isinstance(meta, dict) else None
    return [str(c) for c in classes] if isinstance(classes, list) else None


register(
    ModelType(
        name="aavs",
        description="AAVS: Mask2Former with adaptive audio queries and bottleneck adapters (Ma et al., ECCV 2024)",
        build="aavs.models.modeling_aavs:build_model",
        load="aavs.models.checkpoint:load_model",
        read_weights="aavs.models.checkpoint:read_weights",
        presets=("tiny", "swin-base"),
        info="aavs.models.info:model_info",
        render_info="aavs.models.info:render_model_info",
        import_released="aavs.models.checkpoint:import_released_checkpoint",
    )
)
