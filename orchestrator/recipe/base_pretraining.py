"""Pre-train a preset's Mask2Former on synthetic still images: the demo's stand-in for the ADE20k base.

The method starts both stages from a Mask2Former pre-trained on ADE20k and keeps that base frozen: it
already segments objects, and AAVS only learns to listen (audio projection, queries, adapters). A
preset (``tiny``) has random weights, so without this step the demo's stage one must learn to segment
from scratch in a few hundred steps, and it does not get there: it scores below a model that marks every
visible object and it ignores the audio (a zeroed audio input leaves its test mIoU unchanged).

This trains the preset's own ``Mask2FormerForUniversalSegmentation`` (transformers' loss: Hungarian
matching, class CE, mask BCE + dice) on :func:`aavs.datasets.synth.still_image` images, where every
object is labelled by its class and nothing sounds, and writes a Hugging Face folder that the stages
load as their base (``model: {preset: tiny, pretrain: {...}}``; ``aavs.models.modeling_aavs.build_model``
with both a preset and a folder). The images come from their own random stream, not from the data set's
videos, and carry no audio: the base learns what the objects look like, never which of them sounds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Mask2FormerForUniversalSegmentation

from aavs.datasets.atomic import atomic_dir
from aavs.datasets.progress import track
from aavs.datasets.synth import CLASS_NAMES, still_image
from aavs.datasets.transforms import normalize_frames
from aavs.models.modeling_aavs import frame_targets, resize_labels
from aavs.models.presets import preset_config
from aavs.orchestrator.recipe.device import pick_device
from aavs.orchestrator.results import load_json

log = logging.getLogger(__name__)

RECORD = "pretraining.json"  # the settings and loss curve, written last: a folder without it is incomplete
_STREAM = 0x5EED  # the still images' own random stream, apart from every data set video's


def _batch(rng: np.random.Generator, images: int, size: int, num_labels: int) -> dict[str, Any]:
    """``images`` still images as Mask2Former's training inputs: one binary mask per present class."""
    pictures, class_maps = zip(*(still_image(rng) for _ in range(images)))
    labels = resize_labels(torch.from_numpy(np.stack(class_maps)), size)  # [B, size, size], as AAVS's loss
    mask_labels, class_labels = frame_targets(labels, num_labels)
    return {"pixel_values": normalize_frames(pictures, size), "mask_labels": mask_labels, "class_labels": class_labels}


def read_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's pre-training record, or None when the folder is missing or incomplete."""
    record = load_json(Path(folder) / RECORD)
    return record if isinstance(record, dict) else None


def pretrain_base(
    preset: str,
    out: str | os.PathLike,
    steps: int,
    images_per_step: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``preset``'s Mask2Former for ``steps`` AdamW steps of ``images_per_step`` synthetic stills and
    write it to ``out`` (replaced as a whole, atomically). Returns the record also written there.

    Deterministic for its arguments on one machine: the weights start from ``seed`` and the images come
    from a stream seeded by it.
    """
    settings = {"preset": preset, "steps": steps, "images_per_step": images_per_step, "lr": lr, "seed": seed}
    config, size = preset_config(preset, "avss", classes=CLASS_NAMES)
    num_labels = len(CLASS_NAMES)  # the config's labels: these classes, background first
    device: torch.device = pick_device()
    rng = np.random.default_rng([seed, _STREAM])
    losses: list[float] = []
    started = time.monotonic()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # transformers wraps PreTrainedModel.to in functools.wraps, which mypy reads as an unbound function.
        model = Mask2FormerForUniversalSegmentation(config).to(device).train()  # type: ignore[arg-type]
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        for step in track(range(steps), f"pre-training the {preset} base"):
            batch = _batch(rng, images_per_step, size, num_labels)
            loss = model(
                pixel_values=batch["pixel_values"].to(device),
                mask_labels=[m.to(device) for m in batch["mask_labels"]],
                class_labels=[c.to(device) for c in batch["class_labels"]],
            ).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if (step + 1) % 100 == 0 or step + 1 == steps:
                log.info("base pre-training step %d/%d: loss %.3f", step + 1, steps, np.mean(losses[-100:]))
    record = {
        **settings,
        "classes": list(CLASS_NAMES),
        "image_size": size,
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-min(len(losses), 50) :])),
        "losses": losses,
        "seconds": round(time.monotonic() - started, 1),
    }
    with atomic_dir(out) as tmp:
        model.cpu().save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
