"""AVSBench baseline checkpoints: our folders, the public code's ``.pth`` files, and ImageNet backbones.

Our format: a folder with ``model.safetensors`` (every weight and batch-norm statistic: the whole network
trains), ``avsbench.json`` (the :class:`AVSBenchConfig`) and the registry's ``checkpoint.json``.

The public code (OpenNLPLab/AVSBench, ``avs_scripts/``) saves ``torch.save(model.module.state_dict())``
of its ``Pred_endecoder``; a state dict saved from the ``DataParallel`` wrapper itself has a ``module.``
prefix, which is removed. Its names map to ours as follows (``{i}`` = 1..4, ``{k}`` = 0..3):

| public code | ours |
| --- | --- |
| ``encoder_backbone.patch_embed1.*`` | ``backbone.patch_embed.*`` (timm's PVT-v2) |
| ``encoder_backbone.patch_embed{i}.*`` (i > 1) | ``backbone.stages.{i-1}.downsample.*`` |
| ``encoder_backbone.block{i}.{j}.*`` (``mlp.dwconv.dwconv`` -> ``mlp.dwconv``) | ``backbone.stages.{i-1}.blocks.{j}.*`` |
| ``encoder_backbone.norm{i}.*`` | ``backbone.stages.{i-1}.norm.*`` |
| ``resnet.{conv1,bn1,layer1,layer2}.*``, ``resnet.layer{3,4}_1.*`` | ``backbone.`` + torchvision's names |
| ``resnet.layer{3,4}_2.*`` (a branch the network never runs) | dropped |
| ``conv{i}.conv2d_list.{k}.*`` | ``reduce.{i-1}.branches.{k}.*`` |
| ``tpavi_b{i}.align_channel.*`` | ``tpavi.{i-1}.audio_proj.*`` |
| ``tpavi_b{i}.{theta,phi,g}.*`` (1x1x1 Conv3d) | ``tpavi.{i-1}.{theta,phi,g}.*`` (1x1 Conv2d; ``phi`` a Linear) |
| ``tpavi_b{i}.W_z.0.*``, ``tpavi_b{i}.W_z.1.*`` | ``tpavi.{i-1}.out_proj.*``, ``tpavi.{i-1}.out_norm.*`` |
| ``tpavi_b{i}.norm_layer.*`` | ``tpavi.{i-1}.norm.*`` |
| ``path{i}.resConfUnit1.*``, ``path{i}.resConfUnit2.*`` | ``fusion.{i-1}.skip_unit.*``, ``fusion.{i-1}.unit.*`` |
| ``output_conv.0.*``, ``output_conv.2.*``, ``output_conv.4.*`` | ``head.conv1.*``, ``head.conv2.*``, ``head.classifier.*`` |

Our ``prior_embedding.*`` (stage two's Stepping Stones prior) has no counterpart: an imported semantic
network keeps it at zero and computes the public network whatever prior it is given. The backbone
(``encoder_backbone.`` or ``resnet.``) decides the preset. Any key that maps nowhere, any tensor of
another shape and any tensor we need that the file lacks is an InputError naming it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from aavs.datasets.atomic import atomic_dir, write_json
from aavs.datasets.errors import InputError
from aavs.datasets.tasks import get_task
from aavs.models import registry
from aavs.models.configuration_avsbench import AVSBenchConfig, make_config
from aavs.models.modeling_avsbench import AVSBench
from aavs.models.weights import WEIGHTS_FILE, copy_state, read_state_dict, read_weights, strip_data_parallel

log = logging.getLogger(__name__)

META_FILE = "avsbench.json"
FORMAT = "aavs-avsbench-checkpoint"
VERSION = 1


# ------------------------------------------------------------------------------ our format
def save_checkpoint(model: AVSBench, folder: str | Path) -> Path:
    """Write ``folder`` atomically (replacing it): every tensor, the config and the record."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / META_FILE, {"format": FORMAT, "version": VERSION, "config": model.config.to_dict()})
        registry.write_record(tmp, model.config, [WEIGHTS_FILE])
    return folder


def _read_config(folder: Path) -> AVSBenchConfig:
    meta_file = folder / META_FILE
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise InputError(f"{meta_file}: not a readable JSON file ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{meta_file}: not an AVSBench checkpoint description (format {FORMAT!r}, version {VERSION})")
    try:
        return AVSBenchConfig.from_dict(meta.get("config"))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{meta_file}: invalid config ({err})") from None


def load_model(path: str | Path, base: str | None = None, task: str | None = None) -> AVSBench:
    """An AVSBench network from our checkpoint folder, or from the public code's ``.pth`` (``task``
    required; ``base``, the preset, is read from the file's keys when not given)."""
    path = Path(path).expanduser()
    if path.is_file():
        if task is None:
            raise InputError(f"{path}: a released AVSBench .pth needs task= (--task)")
        return import_released(path, task, base)
    if not path.is_dir():
        raise InputError(f"{path}: no such checkpoint (expected a folder with {META_FILE} + {WEIGHTS_FILE})")
    config = _read_config(path)
    if task is not None and get_task(task).name != config.task:
        raise InputError(f"{path} holds a {config.task} network, not {task}")
    model = AVSBench(config)
    copy_state(model.state_dict(), read_weights(path), True, f"the weights of {path / WEIGHTS_FILE}", "AVSBench")
    model.set_phase("B")
    return model


# ---------------------------------------------------------------------- the public code's files
_PVT_RULES = (
    (re.compile(r"^patch_embed1\."), "patch_embed."),
    (re.compile(r"^patch_embed([2-4])\."), lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (re.compile(r"^block([1-4])\.(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (re.compile(r"^norm([1-4])\."), lambda m: f"stages.{int(m[1]) - 1}.norm."),
    (re.compile(r"\.mlp\.dwconv\.dwconv\."), ".mlp.dwconv."),
)
_HEAD = {"0": "conv1", "2": "conv2", "4": "classifier"}
_TPAVI = {"align_channel": "audio_proj", "norm_layer": "norm", "W_z.0": "out_proj", "W_z.1": "out_norm"}


def pvt_key(key: str) -> str:
    """Our (timm's) name for a key of the official PVT-v2 layout, relative to the backbone."""
    for pattern, replacement in _PVT_RULES:
        key = pattern.sub(replacement, key, count=1)
    return key


def released_key(key: str) -> str | None:
    """Our name for a key of the public code's state dict; None for one we drop; the key itself when no
    rule applies (it then fails as unknown)."""
    if key.startswith("encoder_backbone."):
        return "backbone." + pvt_key(key[len("encoder_backbone.") :])
    if key.startswith("resnet."):
        rest = key[len("resnet.") :]
        if re.match(r"layer[34]_2\.", rest):
            return None
        return "backbone." + re.sub(r"^layer([34])_1\.", r"layer\1.", rest)
    m = re.match(r"^conv([1-4])\.conv2d_list\.(\d)\.(.*)$", key)
    if m:
        return f"reduce.{int(m[1]) - 1}.branches.{m[2]}.{m[3]}"
    m = re.match(r"^tpavi_b([1-4])\.(align_channel|norm_layer|W_z\.[01]|theta|phi|g)\.(.*)$", key)
    if m:
        return f"tpavi.{int(m[1]) - 1}.{_TPAVI.get(m[2], m[2])}.{m[3]}"
    m = re.match(r"^path([1-4])\.resConfUnit([12])\.(.*)$", key)
    if m:
        return f"fusion.{int(m[1]) - 1}.{'skip_unit' if m[2] == '1' else 'unit'}.{m[3]}"
    m = re.match(r"^output_conv\.([024])\.(.*)$", key)
    if m:
        return f"head.{_HEAD[m[1]]}.{m[2]}"
    return key


def _fit(own: dict[str, Tensor], key: str, value: Tensor) -> Tensor:
    """A 1x1(x1) convolution's weight in the shape of ours (Conv3d -> Conv2d or Linear)."""
    if key in own and value.shape != own[key].shape and value.numel() == own[key].numel():
        return value.reshape(own[key].shape)
    return value


def import_released(
    path: str | Path, task: str, base: str | None = None, classes: Sequence[str] | None = None
) -> AVSBench:
    """The network of a public-code ``.pth`` for ``task``; ``base`` (the preset) must agree with its
    backbone when given."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such released checkpoint file")
    return from_released_state(
        read_state_dict(path, "the public AVSBench Pred_endecoder"), task, base, classes, str(path)
    )


def from_released_state(
    state: dict[str, Tensor],
    task: str,
    base: str | None = None,
    classes: Sequence[str] | None = None,
    path: str = "the state dict given",
) -> AVSBench:
    """The network of a public-code state dict (names as its ``Pred_endecoder`` has them, or with the
    ``module.`` prefix of its ``DataParallel`` wrapper); ``path`` names it in errors."""
    state = strip_data_parallel(state)
    found = (
        "pvt-v2-b5"
        if any(k.startswith("encoder_backbone.") for k in state)
        else "resnet-50"
        if any(k.startswith("resnet.") for k in state)
        else None
    )
    if found is None:
        raise InputError(
            f"{path}: no encoder_backbone.* (PVT-v2) or resnet.* (ResNet-50) tensors: not an AVSBench checkpoint"
        )
    if base is not None and base != found:
        raise InputError(f"{path} holds a {found} network, not {base} (--base)")
    model = AVSBench(make_config(task, found, classes))
    outputs = state.get("output_conv.4.weight")
    if outputs is not None and outputs.shape[0] != model.config.out_channels:
        expected = f"{model.config.out_channels} (the {task} network's {'classes' if model.config.semantic else 'sounding logit'})"
        raise InputError(f"{path}: output_conv.4.weight has {outputs.shape[0]} outputs, expected {expected}")
    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        ours = released_key(key)
        if ours is not None:
            mapped[ours], origin[ours] = _fit(own, ours, value), key
    unknown = sorted(origin[k] for k in mapped if k not in own)
    if unknown:
        raise InputError(f"{path}: released keys with no place in the AVSBench network: {', '.join(unknown[:8])}")
    shapes = sorted(k for k in mapped if mapped[k].shape != own[k].shape)
    if shapes:
        raise InputError(
            f"{path}: "
            + ", ".join(f"{origin[k]} is {list(mapped[k].shape)}, expected {list(own[k].shape)}" for k in shapes[:8])
        )
    lacking = sorted(k for k in own if k not in mapped and not k.startswith("prior_embedding."))
    if lacking:
        raise InputError(f"{path} lacks tensors the AVSBench network needs: {', '.join(lacking[:8])}")
    copy_state(own, mapped, False, f"the weights of {path}", "AVSBench")
    model.set_phase("B")
    return model


def import_released_checkpoint(
    released: str | Path, base: str | None, task: str, out: str | Path, classes: Sequence[str] | None = None
) -> Path:
    """``aavs import-checkpoint --type avsbench``: a public-code ``.pth`` into our folder format."""
    return save_checkpoint(import_released(released, task, base, classes), out)


def load_backbone_weights(model: AVSBench, path: str | Path) -> None:
    """The backbone's ImageNet weights from a local file as published: PVT-v2's official layout (or
    timm's), torchvision's ResNet layout; a classifier head is dropped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such backbone weights file (model.pretrained)")
    state = load_file(str(path)) if path.suffix == ".safetensors" else read_state_dict(path, "an ImageNet backbone")
    if model.config.backbone == "pvt-v2-b5":
        state = {pvt_key(k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc."))}
    own = model.backbone.state_dict()
    copy_state(own, state, True, f"the backbone weights of {path}", "AVSBench")
    log.info("backbone weights from %s", path)


# ------------------------------------------------------------------------------ model-info
def model_info(
    preset: str | None = None, pretrained: str | None = None, task: str = "s4", classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Parameter counts of the ``task`` network on ``preset`` (everything trains; no adapters)."""
    from aavs.models.modeling_avsbench import build_model

    model = build_model(task, preset=preset, pretrained=pretrained, classes=classes)
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    total = sum(p.numel() for p in model.parameters())
    return {
        "task": model.config.task,
        "backbone": model.config.backbone,
        "image_size": model.config.image_size,
        "num_labels": model.config.num_labels,
        "total_params": total,
        "trainable_params": total,
        "adapter_params": 0,
        "parts": parts,
    }


def render_model_info(console: Any, info: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"AVSBench {info['backbone']}, {info['task']} ({info['num_labels']} classes, {info['image_size']} px)"
    )
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for part, count in info["parts"].items():
        table.add_row(part, f"{count:,}")
    table.add_row("total (all trainable)", f"{info['total_params']:,}")
    console.print(table)
