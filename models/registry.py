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
without importing the model; and whether it has a ``warmup`` phase: AAVS trains its audio side and
decoder adapters alone first (phase A, the first ``adapter_warmup`` of a stage's epochs), then adds
the Swin adapters (phase B). A type without one trains every epoch in phase B, whatever a stage's
``adapter_warmup`` says, and never has its network rebuilt mid-stage. A ``temporal`` network relates a
video's frames to each other (AVSBench's TPAVI): its forward takes each video's frame count
(``video_frames``), and a training step keeps a video's unannotated frames, which only its loss skips.

The networks implement :class:`aavs.models.protocol.SegmentationModel`, whose ``config.model_type``
is the entry's name. Adding a model: its module(s), and one :func:`register` call below; or, from a
package of its own, an entry point in the ``aavs.models`` group naming its :class:`ModelType` (in its
``pyproject.toml``: ``[project.entry-points."aavs.models"] mymodel = "mypackage.model:MODEL_TYPE"``),
found the first time the types are listed or looked up, in every process (Ray workers included).

**The checkpoint record.** Every checkpoint folder a model's ``save_pretrained`` writes holds
``checkpoint.json`` (:func:`write_record`): its model type, task, class names and weight files, in a
form every model shares. The orchestrator reads a checkpoint only through it (:func:`checkpoint_type`,
:func:`read_checkpoint_classes`, :func:`checkpoint_digest`), never a model's own files, so a results
folder's views need neither torch nor the model's code, and ``load`` needs no type on the command
line. A folder without a record was written before it existed: an AAVS checkpoint (``aavs.json``,
``model.safetensors``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aavs.datasets.errors import InputError

if TYPE_CHECKING:
    from torch import Tensor

    from aavs.models.protocol import ModelConfig, SegmentationModel

log = logging.getLogger(__name__)

DEFAULT_TYPE = "aavs"
ENTRY_POINT_GROUP = "aavs.models"
RECORD_FILE = "checkpoint.json"  # the checkpoint record (module docstring)
RECORD_FORMAT = "aavs-model-checkpoint"
RECORD_VERSION = 1
# What a folder without a record holds: an AAVS checkpoint from before the record.
_LEGACY_META, _LEGACY_WEIGHTS = "aavs.json", ("model.safetensors",)


@dataclass(frozen=True)
class ModelType:
    """One registered model: its name (the ``model.type`` value) and its functions as import paths."""

    name: str
    description: str
    build: str
    load: str
    read_weights: str
    presets: tuple[str, ...] = ()
    warmup: bool = False
    temporal: bool = False  # relates a video's frames: training keeps its unannotated frames (see train)
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
_entry_points_loaded = False


def register(model_type: ModelType) -> None:
    """Make ``model_type`` nameable as ``model.type``; a name registered twice is a programming error."""
    if model_type.name in _TYPES:
        raise ValueError(f"model type {model_type.name!r} is registered already")
    _TYPES[model_type.name] = model_type


def _load_entry_points() -> None:
    """Register the types that installed packages declare in the ``aavs.models`` entry-point group,
    once a process. A broken one is skipped with a warning naming it: the other types still work."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {entry_point.name} = {entry_point.value} ({ENTRY_POINT_GROUP})"
        try:
            model_type = entry_point.load()
        except Exception as err:  # a third party's import error must not stop aavs
            log.warning("%s: not loaded (%s: %s)", where, type(err).__name__, err)
            continue
        if not isinstance(model_type, ModelType):
            log.warning("%s: expected an aavs.models.registry.ModelType, got %s", where, type(model_type).__name__)
        elif model_type.name in _TYPES:
            if _TYPES[model_type.name] != model_type:
                log.warning("%s: model type %r is registered already; kept the first", where, model_type.name)
        else:
            _TYPES[model_type.name] = model_type


def model_types() -> tuple[str, ...]:
    """The registered names (built in, then from entry points), in registration order."""
    _load_entry_points()
    return tuple(_TYPES)


def get_model_type(name: str) -> ModelType:
    """The entry called ``name``; an InputError naming it and the known types otherwise."""
    _load_entry_points()
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
    path: str | Path, model_type: str | None = None, base: str | None = None, task: str | None = None
) -> SegmentationModel:
    """A network from a checkpoint (``base`` overrides the stored base folder), of the type its record
    names unless ``model_type`` says (a released file, which has no record, is an AAVS one by default)."""
    name = model_type or checkpoint_type(path)
    return get_model_type(name).function("load")(path, base=base, task=task)


def read_weights(folder: str | Path, model_type: str | None = None) -> dict[str, Tensor]:
    """The tensors of a checkpoint folder, read by its type's ``read_weights``."""
    return get_model_type(model_type or checkpoint_type(folder)).function("read_weights")(folder)


def write_record(folder: str | Path, config: ModelConfig, weights: Sequence[str]) -> None:
    """``checkpoint.json`` of a checkpoint folder being written (call it inside the folder's atomic
    write, with the network's ``config``): its type, task and class names, and the files that hold its
    weights (relative to the folder; their digest is the checkpoint's, :func:`checkpoint_digest`)."""
    from aavs.datasets.atomic import write_json

    write_json(
        Path(folder) / RECORD_FILE,
        {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "model_type": config.model_type,
            "task": config.task,
            "classes": list(config.class_names),
            "weights": list(weights),
        },
    )


def _record(folder: str | Path) -> dict[str, Any] | None:
    """A checkpoint folder's record; None when it has none (a legacy AAVS folder, or not a folder); an
    InputError naming the file when it is unreadable or not a record of this format."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise InputError(f"{path}: unreadable checkpoint record ({type(err).__name__}: {err})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise InputError(f"{path}: expected a checkpoint record with format {RECORD_FORMAT!r}")
    if not isinstance(record.get("version"), int) or record["version"] > RECORD_VERSION:
        raise InputError(
            f"{path}: checkpoint record version {record.get('version')!r}; this aavs reads up to {RECORD_VERSION}"
        )
    weights = record.get("weights")
    if (
        not isinstance(record.get("model_type"), str)
        or not isinstance(weights, list)
        or not weights
        or not all(
            isinstance(w, str) and w and not Path(w).is_absolute() and ".." not in Path(w).parts for w in weights
        )
    ):
        raise InputError(f"{path}: expected model_type (a name) and weights (file names inside the folder)")
    return record


def checkpoint_type(path: str | Path) -> str:
    """The model type a checkpoint records (a registered one, or an InputError naming the record);
    ``aavs`` for a folder or file without a record."""
    record = _record(path)
    if record is None:
        return DEFAULT_TYPE
    name = record["model_type"]
    if name not in model_types():
        raise InputError(
            f"{Path(path) / RECORD_FILE}: model type {name!r} is not a known model type: expected one of "
            f"{', '.join(_TYPES)} (is the package that registers it installed?)"
        )
    return name


def checkpoint_digest(folder: str | Path) -> str:
    """SHA-256 that names a checkpoint's weights: of its one weights file (for AAVS, of
    ``model.safetensors``, as before the record), or of each file's digest and name in order."""
    from aavs.datasets.files import file_sha256

    record = _record(folder)
    files = record["weights"] if record else _LEGACY_WEIGHTS
    if len(files) == 1:
        return file_sha256(Path(folder) / files[0])
    h = hashlib.sha256()
    for name in files:
        h.update(f"{name}\0{file_sha256(Path(folder) / name)}\n".encode())
    return h.hexdigest()


def read_checkpoint_classes(checkpoint_dir: str | Path) -> list[str] | None:
    """The class names, in index order, that a checkpoint folder records; None when it records none
    or cannot be read. Reads the record only (a legacy AAVS folder: its ``aavs.json``), so a view of a
    results folder (the leaderboard) shows them without importing torch."""
    try:
        record = _record(checkpoint_dir)
    except InputError:
        return None
    if record is None:
        try:
            record = json.loads((Path(checkpoint_dir) / _LEGACY_META).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # ValueError: not UTF-8, not JSON, an int of too many digits
            return None
    classes = record.get("classes") if isinstance(record, dict) else None
    return [str(c) for c in classes] if isinstance(classes, list) else None


register(
    ModelType(
        name="aavs",
        description="AAVS: Mask2Former with adaptive audio queries and bottleneck adapters (Ma et al., ECCV 2024)",
        build="aavs.models.modeling_aavs:build_model",
        load="aavs.models.checkpoint:load_model",
        read_weights="aavs.models.checkpoint:read_weights",
        presets=("tiny", "swin-base"),
        warmup=True,
        info="aavs.models.info:model_info",
        render_info="aavs.models.info:render_model_info",
        import_released="aavs.models.checkpoint:import_released_checkpoint",
    )
)
register(
    ModelType(
        name="avsbench",
        description="AVSBench's baseline: TPAVI audio-visual fusion on PVT-v2 or ResNet-50 (Zhou et al., ECCV 2022)",
        build="aavs.models.modeling_avsbench:build_model",
        load="aavs.models.checkpoint_avsbench:load_model",
        read_weights="aavs.models.weights:read_weights",
        presets=("tiny", "resnet-50", "pvt-v2-b5"),
        temporal=True,
        info="aavs.models.checkpoint_avsbench:model_info",
        render_info="aavs.models.checkpoint_avsbench:render_model_info",
        import_released="aavs.models.checkpoint_avsbench:import_released_checkpoint",
    )
)
