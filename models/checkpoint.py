"""AAVS checkpoints: our safetensors folders, and import of the released Stepping Stones ``.pth`` files.

Our format: a folder with ``model.safetensors``, ``aavs.json`` (format, version, task, base, which
weights are stored, training phase, the class names in index order, the full :class:`AAVSConfig`) and
the registry's ``checkpoint.json`` that every model type writes (:func:`aavs.models.registry.write_record`). With
a pre-trained base folder only the weights trainable in some phase are stored, plus the base's absolute
path; with a preset base (whose random frozen weights could not be recovered) every weight is stored. Folders are written atomically.

Released checkpoints are ``torch.save``d state dicts of the reference module: ``audio_proj.*`` (the
128-512-256 MLP, ``Sequential`` indices 0 and 2) and ``model.`` + the key names of transformers 4.35.2's
``Mask2FormerForUniversalSegmentation``, with the adapters the reference adds (each adapter is
``Sequential(Linear, ReLU, Linear)``, so ``.{0,2}.{weight,bias}``; docs/method.md §7)::

    model.model.pixel_level_module.encoder.encoder.layers.{i}.blocks.{j}.attention.output.swin_adapt_1.{0,2}.*
        Swin attention output (inside 4.35.2's SwinSelfOutput, after its ``dense`` projection)
    model.model.pixel_level_module.encoder.encoder.layers.{i}.blocks.{j}.output.swin_adapt_3.{0,2}.*
        Swin MLP output (inside 4.35.2's SwinOutput, after its ``dense`` projection)
    model.model.pixel_level_module.decoder.encoder.layers.{i}.self_attn.avs_adapt.{0,2}.*      deformable attention
    model.model.transformer_module.decoder.layers.{i}.self_attn.avs_adapt.{0,2}.*              decoder self-attention
    model.model.transformer_module.{silence,uncertain,audio}_embed.weight  [1, 256] (or bare [256])  AVSS only

mapped to ours: ``...attention.o_proj.adapter``, ``...mlp.fc2.adapter``, ``...self_attn.output_proj.adapter``,
``...self_attn.out_proj.adapter`` and rows 0 / 1 / 2 of ``...transformer_module.decoder.prior_embeddings.weight``
(``audio_embed`` is the sounding embedding). The Swin names transformers 5 changed are mapped too:
``encoder.{embeddings,encoder}`` -> ``encoder.swin.{embeddings,encoder}``, ``attention.self.{query,key,value}``
-> ``attention.{q,k,v}_proj``, ``attention.self.relative_position_bias_table`` ->
``attention.relative_position_bias.relative_position_bias_table``, ``attention.output.dense`` ->
``attention.o_proj``, ``intermediate.dense`` -> ``mlp.fc1``, ``output.dense`` -> ``mlp.fc2``; the old
``relative_position_index`` buffers are derived from the window size and dropped. Every other key keeps
its name. Our only weights a release lacks are transformers 5's ``encoder.swin.layernorm.*`` (a norm the
Swin backbone never applies), which keep the base's values. The number of queries and classes come from
the release's tensors, the class names from the data's label2idx.json given to the import (AVSBench's 71
by default; binary releases are background / sounding); any key that maps to nothing, any shape that
differs, any weight we need that the release lacks and a class count unlike the names' is an InputError
naming them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from aavs.datasets.atomic import atomic_dir, write_json
from aavs.datasets.errors import InputError
from aavs.datasets.layout import describe_classes
from aavs.datasets.tasks import get_task
from aavs.models import registry
from aavs.models.configuration_aavs import AAVSConfig, task_labels
from aavs.models.modeling_aavs import (
    AAVS,
    PHASES,
    SILENT,
    SOUNDING,
    UNCERTAIN,
    UNUSED_SWIN_NORM,
    build_from_config,
    build_model,
    check_base_dir,
    set_phase,
)
from aavs.models.presets import PRESETS
from aavs.models.weights import WEIGHTS_FILE, copy_state, read_state_dict, read_weights

log = logging.getLogger(__name__)

META_FILE = "aavs.json"
FORMAT = "aavs-checkpoint"
VERSION = 1

_SWIN = "model.model.pixel_level_module.encoder."
_SWIN_OLD = re.compile(r"^model\.model\.pixel_level_module\.encoder\.(embeddings|encoder)\.(.*)$")
_SWIN_BLOCK = re.compile(r"^(layers\.\d+\.blocks\.\d+\.)(.*)$")
# 4.35.2 SwinLayer names (and the reference's adapters) -> ours, matched at the start of a block key.
_SWIN_BLOCK_RENAMES = (
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("attention.output.swin_adapt_1.", "attention.o_proj.adapter."),
    ("output.swin_adapt_3.", "mlp.fc2.adapter."),
)
_DERIVED = "attention.self.relative_position_index"
_DECODER_ADAPTERS = (
    (
        re.compile(r"^(model\.model\.pixel_level_module\.decoder\.encoder\.layers\.\d+\.self_attn\.)avs_adapt\.(.*)$"),
        r"\1output_proj.adapter.\2",
    ),
    (
        re.compile(r"^(model\.model\.transformer_module\.decoder\.layers\.\d+\.self_attn\.)avs_adapt\.(.*)$"),
        r"\1out_proj.adapter.\2",
    ),
)
_PRIOR_ROWS = {"silence_embed": SILENT, "uncertain_embed": UNCERTAIN, "audio_embed": SOUNDING}
_PRIOR_OLD = re.compile(r"^model\.model\.transformer_module\.(silence_embed|uncertain_embed|audio_embed)(\.weight)?$")
PRIOR_KEY = "model.model.transformer_module.decoder.prior_embeddings.weight"
_QUERY_FEATURES = "model.model.transformer_module.queries_features.weight"
_CLASS_WEIGHT = "model.class_predictor.weight"


# ------------------------------------------------------------------------------ our format
def _write(model: AAVS, folder: str | Path, weights: str) -> Path:
    tensors = model.state_dict() if weights == "all" else model.trainable_state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "task": model.config.task,
        "base": model.config.base,
        "weights": weights,
        "phase": model.phase,
        "classes": list(model.config.class_names),
        "config": model.config.to_dict(),
    }
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / META_FILE, meta)
        registry.write_record(tmp, model.config, [WEIGHTS_FILE])
    log.debug("saved %s weights of the %s network to %s", weights, model.config.task, folder)
    return folder


def save_checkpoint(model: AAVS, folder: str | Path) -> Path:
    """Write ``folder`` (replacing it atomically): trainable weights + base path for a pre-trained base,
    every weight for a preset base."""
    return _write(model, folder, "all" if model.config.base in PRESETS else "trainable")


def _read_meta(folder: Path) -> dict:
    meta_file = folder / META_FILE
    if not meta_file.is_file():
        raise InputError(f"{meta_file} is missing: an AAVS checkpoint folder holds {META_FILE} and {WEIGHTS_FILE}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: not UTF-8, not JSON, too many digits
        raise InputError(f"{meta_file}: not a readable JSON file ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{meta_file}: not an AAVS checkpoint description (format {FORMAT!r}, version {VERSION})")
    for key, allowed in (("weights", ("all", "trainable")), ("phase", PHASES)):
        if meta.get(key) not in allowed:
            raise InputError(f"{meta_file}: {key} is {meta.get(key)!r}, expected one of {', '.join(allowed)}")
    return meta


# Bounds of a checkpoint's config, checked before any network is built from it (aavs.json may have
# been edited by hand): the presets' numbers are far below them.
MAX_CONFIG_INT = 2**24
MAX_LAYERS = 100  # per stack: Swin-base's deepest stage has 18 blocks
LAYER_KEYS = frozenset({"depths", "num_layers", "decoder_layers", "encoder_layers", "num_hidden_layers"})
MAX_IMAGE_SIZE = 1024  # the presets take 128 (tiny) and 384 (swin-base)


def _check_bounds(value: Any, meta_file: Path, at: str = "config", layers: bool = False) -> None:
    """Every number of a config within the bounds above, or an InputError naming the key: a huge layer
    count or size would hang or exhaust memory in the build, before any check of the weights."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_bounds(item, meta_file, f"{at}.{key}", key in LAYER_KEYS)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_bounds(item, meta_file, f"{at}[{i}]", layers)
    elif isinstance(value, int) and not isinstance(value, bool):
        limit = MAX_LAYERS if layers else MAX_IMAGE_SIZE if at.endswith("image_size") else MAX_CONFIG_INT
        if not -MAX_CONFIG_INT <= value <= limit:
            raise InputError(f"{meta_file}: {at} is {value}, beyond what a network of this kind has (<= {limit})")


def _check_fits(folder: Path, config: AAVSConfig, full: bool) -> None:
    """The network ``config`` describes (built on the meta device: no memory, no weights, no base
    folder read) has exactly the tensors, with their shapes, that ``model.safetensors`` stores (read
    from its header): a checkpoint of another task or architecture, or a hand-edited ``aavs.json``,
    is refused naming both files before any network is built."""
    weights_file = folder / WEIGHTS_FILE
    if not weights_file.is_file():
        raise InputError(f"{weights_file} is missing")
    try:
        with safe_open(str(weights_file), "pt") as f:
            stored = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise InputError(f"{weights_file}: not a readable safetensors file ({err})") from err
    try:
        with torch.device("meta"):
            skeleton = build_from_config(config, load_base=False)
    except InputError:
        raise
    except Exception as err:  # a config written by hand can fail anywhere in transformers' constructors
        raise InputError(
            f"{folder / META_FILE}: its config builds no AAVS network ({type(err).__name__}: {err})"
        ) from None
    tensors = skeleton.state_dict() if full else skeleton.trainable_state_dict()
    wanted = {key: tuple(tensor.shape) for key, tensor in tensors.items()}
    if stored != wanted:
        differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise InputError(
            f"{weights_file}: its tensors do not fit the {config.task} network {META_FILE} describes "
            f"({len(differ)} differ, e.g. {differ[0]}: stored {stored.get(differ[0])}, expected {wanted.get(differ[0])})"
        )


def _load_ours(folder: Path, base: str | None, task: str | None) -> AAVS:
    meta = _read_meta(folder)
    _check_bounds(meta.get("config"), folder / META_FILE)
    try:
        config = AAVSConfig.from_dict(meta.get("config"))
    except (InputError, KeyError, TypeError, ValueError, AttributeError, StrictDataclassError) as err:
        raise InputError(f"{folder / META_FILE}: invalid config ({err})") from None
    if task is not None and get_task(task).name != config.task:
        raise InputError(f"{folder} holds a {config.task} network, not {task}")
    if base is not None:
        config.base = base if base in PRESETS else str(check_base_dir(base))
    full = meta["weights"] == "all"
    _check_fits(folder, config, full)
    if not full and config.base not in PRESETS and not Path(config.base).is_dir():
        raise InputError(
            f"{folder} stores only the trainable weights; its base Mask2Former folder {config.base} "
            "is missing: pass base= (--base) with that folder"
        )
    weights_file = folder / WEIGHTS_FILE
    state = read_weights(folder)
    model = build_from_config(config, load_base=not full)
    set_phase(model, meta["phase"])
    if full:
        copy_state(model.state_dict(), state, True, f"the weights of {weights_file}", "AAVS")
    else:
        copy_state(model.trainable_state_dict(), state, True, f"the weights of {weights_file}", "AAVS")
    return model


def load_model(path: str | Path, base: str | None = None, task: str | None = None) -> AAVS:
    """An AAVS network from our checkpoint folder (``base`` overrides the stored base, e.g. after a
    move) or from a released Stepping Stones ``.pth`` (``base`` and ``task`` required)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_ours(path, base, task)
    if path.is_file():
        if base is None or task is None:
            raise InputError(f"{path}: a released .pth checkpoint needs base= (its Mask2Former folder) and task=")
        return import_released(path, base, task)[0]
    raise InputError(
        f"{path}: no such checkpoint (expected a folder with {META_FILE} + {WEIGHTS_FILE}, or a released .pth file)"
    )


# ---------------------------------------------------------------------------- released .pth
def reference_key(key: str) -> str | None:
    """Our name for a released key (see the module doc); None for a derived buffer we drop."""
    swin = _SWIN_OLD.match(key)
    if swin:
        part, rest = swin.groups()
        block = _SWIN_BLOCK.match(rest) if part == "encoder" else None
        if block:
            prefix, tail = block.groups()
            if tail == _DERIVED:
                return None
            for old, new in _SWIN_BLOCK_RENAMES:
                if tail.startswith(old):
                    tail = new + tail[len(old) :]
                    break
            rest = prefix + tail
        return f"{_SWIN}swin.{part}.{rest}"
    for pattern, replacement in _DECODER_ADAPTERS:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return key


def _read_released(path: Path) -> dict[str, Tensor]:
    state = read_state_dict(path, "the reference AAVS module")
    for key in (_QUERY_FEATURES, _CLASS_WEIGHT):
        if key not in state:
            raise InputError(f"{path}: key {key} is missing: not a Stepping Stones AAVS checkpoint")
    return state


def map_released(state: dict[str, Tensor], hidden_dim: int) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Released state dict -> (our state dict, our key -> released key for messages)."""
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    prior_rows: dict[int, Tensor] = {}
    for key, value in state.items():
        prior = _PRIOR_OLD.match(key)
        if prior:
            if value.numel() != hidden_dim:
                raise InputError(f"released key {key} has shape {list(value.shape)}, expected [1, {hidden_dim}]")
            prior_rows[_PRIOR_ROWS[prior.group(1)]] = value.reshape(hidden_dim)
            origin.setdefault(PRIOR_KEY, key)
            continue
        ours = reference_key(key)
        if ours is not None:
            mapped[ours] = value
            origin[ours] = key
    if prior_rows:
        if len(prior_rows) != 3:
            names = [n for n, row in _PRIOR_ROWS.items() if row not in prior_rows]
            raise InputError(f"the release has only some prior embeddings; missing: {', '.join(names)}")
        mapped[PRIOR_KEY] = torch.stack([prior_rows[SILENT], prior_rows[UNCERTAIN], prior_rows[SOUNDING]])
    return mapped, origin


def import_released(
    released: str | Path, base: str, task: str, classes: Sequence[str] | None = None
) -> tuple[AAVS, str]:
    """The AAVS network of a released ``.pth`` on ``base`` (a Mask2Former folder or a preset), in phase
    B, and which weights a checkpoint of it must store ("trainable", or "all" when the release's frozen
    weights differ from the base's). ``classes`` name a semantic release's classes (the data's
    label2idx.json; default AVSBench's 71)."""
    path = Path(released).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such released checkpoint file")
    takes_prior = get_task(task).takes_prior
    state = _read_released(path)
    has_prior = any(_PRIOR_OLD.match(k) for k in state)
    if has_prior != takes_prior:
        kind = "has the stage-two prior embeddings" if has_prior else "has no prior embeddings"
        raise InputError(
            f"{path} {kind}, which does not fit task {task} (a {task} network "
            f"{'takes' if takes_prior else 'takes no'} prior)"
        )
    labels = task_labels(task, classes)
    released_classes = state[_CLASS_WEIGHT].shape[0] - 1  # the last row is Mask2Former's no-object class
    if released_classes != len(labels):
        which = "the class list given" if classes is not None else f"the {task} task's built-in class list"
        raise InputError(
            f"{path} predicts {released_classes} classes but {which} has {describe_classes(list(labels.values()))}"
        )
    sizes: dict[str, Any] = {"num_queries": state[_QUERY_FEATURES].shape[0]}
    if base in PRESETS:
        model = build_model(task, preset=base, classes=classes, **sizes)
    else:
        model = build_model(task, pretrained=base, classes=classes, **sizes)
    set_phase(model, "B")
    mapped, origin = map_released(state, model.config.hidden_dim)
    own = model.state_dict(keep_vars=True)
    left_over = sorted(origin[k] for k in mapped if k not in own)
    if left_over:
        raise InputError(
            f"{path}: released keys with no place in the AAVS network: {', '.join(left_over[:8])}"
            + (f" ... ({len(left_over) - 8} more)" if len(left_over) > 8 else "")
        )
    lacking = sorted(k for k in own if k not in mapped and not UNUSED_SWIN_NORM.search(k))
    if lacking:
        raise InputError(
            f"{path} lacks weights the AAVS network needs: {', '.join(lacking[:8])}"
            + (f" ... ({len(lacking) - 8} more)" if len(lacking) > 8 else "")
        )
    trainable = set(model.trainable_state_dict())
    weights = "all"
    if base not in PRESETS:
        differ = [origin[k] for k, v in mapped.items() if k not in trainable and not torch.equal(v, own[k].detach())]
        if differ:
            log.warning(
                "%s: %d frozen weights differ from the base %s (e.g. %s); the checkpoint stores all weights",
                path,
                len(differ),
                base,
                differ[0],
            )
        else:
            weights = "trainable"
    copy_state({k: own[k] for k in mapped}, mapped, True, f"the weights of {path}", "AAVS")
    return model, weights


def import_released_checkpoint(
    released: str | Path, base: str | None, task: str, out: str | Path, classes: Sequence[str] | None = None
) -> Path:
    """``aavs import-checkpoint``: convert a released Stepping Stones ``.pth`` into our folder format
    (``classes``: see :func:`import_released`)."""
    if base is None:
        raise InputError("--base: an AAVS release needs the Mask2Former folder (or preset) it was trained from")
    model, weights = import_released(released, base, task, classes)
    return _write(model, out, weights)
