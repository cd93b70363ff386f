"""Built-in architectures: ``tiny`` for tests and CPU demos, ``swin-base`` for shape checks and GPU benchmarks.

Both are randomly initialised (nothing is downloaded). ``swin-base`` is exactly the architecture of
``facebook/mask2former-swin-base-ade-semantic`` (Swin-B: depths 2-2-18-2, embed 128, heads 4-8-16-32,
window 12, image 384, drop-path 0.3; hidden 256, 6 pixel-decoder encoder layers, ``decoder_layers`` 10,
feed-forward 2048 / 1024, 8 heads) with the task's class and query counts.

``tiny`` is a 4-stage Swin with embed 32 (depths 1-1-2-1, window 4, image 128) and a 64-wide decoder
(2 encoder layers, ``decoder_layers`` 4, i.e. one masked-attention layer per feature level). It uses
fewer queries (10 binary, 20 semantic) and 1024 loss points instead of 12544: its mask logits are
32 x 32, so more points would only resample the same pixels. Being random, ``tiny`` also trains its
Mask2Former weights (``train_base``): a frozen random backbone leaves nothing for the adapters to adapt.

AAVS applies a preset's ``drop_path_rate`` to every Swin block, as it does a checkpoint's: 0.3 for
``swin-base`` (the ADE20k value), 0 for ``tiny``, whose five blocks are too few to lose one at random
and whose train-mode passes (tests, CPU demos) stay repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import Mask2FormerConfig, SwinConfig

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import get_task
from aavs.models.configuration_aavs import task_labels
from aavs.models.registry import model_presets

PRESETS = model_presets("aavs")  # listed once, in the registry's entry (the CLI reads it without transformers)
SWIN_STAGES = ["stage1", "stage2", "stage3", "stage4"]
DEFAULT_IMAGE_SIZE = 384  # docs/method.md §1: frames go into the network at 384 x 384

# Loss weights and points of the ADE20k checkpoint, which the reference keeps (docs/method.md §3).
LOSS_SETTINGS: dict[str, Any] = {
    "class_weight": 2.0,
    "mask_weight": 5.0,
    "dice_weight": 5.0,
    "no_object_weight": 0.1,
    "train_num_points": 12544,
}


def task_sizes(task: str, preset: str | None = None, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """num_queries and the label map of the task's network (the tiny preset uses fewer queries);
    ``classes`` are the semantic network's (:func:`task_labels`)."""
    semantic = get_task(task).semantic
    if preset == "tiny":
        num_queries = 20 if semantic else 10
    else:
        num_queries = 100 if semantic else 30
    labels = task_labels(task, classes)
    return {"num_queries": num_queries, "id2label": labels, "label2id": {v: k for k, v in labels.items()}}


def _swin_base() -> tuple[Mask2FormerConfig, int]:
    backbone = SwinConfig(
        image_size=384,
        patch_size=4,
        embed_dim=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=12,
        mlp_ratio=4.0,
        drop_path_rate=0.3,
        out_features=SWIN_STAGES,  # type: ignore[call-arg]  # a keyword of SwinConfig.__post_init__
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=256,
        mask_feature_size=256,
        hidden_dim=256,
        encoder_feedforward_dim=1024,
        encoder_layers=6,
        decoder_layers=10,
        num_attention_heads=8,
        dim_feedforward=2048,
        **LOSS_SETTINGS,
    )
    return config, DEFAULT_IMAGE_SIZE


def _tiny() -> tuple[Mask2FormerConfig, int]:
    backbone = SwinConfig(
        image_size=128,
        patch_size=4,
        embed_dim=32,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        out_features=SWIN_STAGES,  # type: ignore[call-arg]  # a keyword of SwinConfig.__post_init__
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        encoder_feedforward_dim=128,
        encoder_layers=2,
        decoder_layers=4,
        num_attention_heads=4,
        dim_feedforward=128,
        **{**LOSS_SETTINGS, "train_num_points": 1024},
    )
    return config, 128


def preset_config(preset: str, task: str, classes: Sequence[str] | None = None) -> tuple[Mask2FormerConfig, int]:
    """The preset's Mask2Former config sized for ``task`` (and the semantic ``classes``), and its input
    image size."""
    builders = {"tiny": _tiny, "swin-base": _swin_base}
    if preset not in builders:
        raise InputError(f"unknown model preset {preset!r}: expected one of {', '.join(PRESETS)}")
    config, image_size = builders[preset]()
    for key, value in task_sizes(task, preset, classes).items():
        setattr(config, key, value)
    return config, image_size
