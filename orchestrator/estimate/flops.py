"""What one frame costs on an experiment's own network, and what a trial's checkpoints weigh: counted on
the network itself, once per network, for ``aavs estimate`` (:mod:`.estimate`).

:func:`network_costs` builds the stage's network as a trial builds it (``registry.build`` from the
experiment's ``model`` section, the task, the data's classes) on the CPU, and runs under
``torch.utils.flop_counter.FlopCounterMode``:

- a training step of one frame (``T`` frames of one video for a temporal network, divided by ``T``):
  the forward with labels (and the stage-two prior where the stage has one) and ``loss.backward()``,
  in each training phase, since phase A back-propagates only into the decoder side and phase B also
  through the Swin backbone to its adapters;
- an evaluation pass of one frame: the forward in eval mode and the per-class score maps
  (``class_scores``), as validation, the test evaluation and the mask export run them.

FlopCounterMode counts the matrix products and convolutions (a multiply-add is 2 FLOPs), the work an
accelerator's peak rate is quoted for; element-wise work is left out, as peak-times-MFU estimates do.

In the same pass it measures what a trial keeps (:mod:`aavs.orchestrator.recipe.checkpointing`): one
checkpoint folder as ``save_pretrained`` writes it (``checkpoints/last/model`` and ``best/`` each hold
one), and the optimizer state of each phase: AdamW after one step holds ``exp_avg``, ``exp_avg_sq``
and ``step`` for every parameter that received a gradient (``accelerate/optimizer.bin``).

Where the experiment names a pre-trained base folder that is not on this machine, the network is built
on the preset of the same architecture (the ADE20k Swin-B checkpoint is exactly the ``swin-base``
preset), with its base frozen and saved as the run saves a folder base (trainable weights only); the
result says so under ``assumed``. The counts are cached on disk (``$AAVS_CACHE_DIR/flops`` or
``~/.cache/aavs/flops``), keyed by everything that decides them (:func:`cache_key`): swin-base takes
a minute on two cores.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from aavs.datasets import atomic
from aavs.datasets.files import aavs_cache
from aavs.datasets.transforms import MASK_SIZE
from aavs.models import registry
from aavs.orchestrator.recipe.config import ModelConfig

COUNTER_VERSION = 2  # bump when what is counted changes: cached counts of older versions are not read
FLOPS_DIR = "flops"
AAVS_TYPE = "aavs"
ARCHITECTURE_OF_ADE20K_BASE = "swin-base"  # aavs.models.presets: exactly facebook/mask2former-swin-base-ade-semantic
PLACEHOLDER_BASE = "/aavs-estimate/base"  # the base path a counted checkpoint records (network_costs)
TEMPORAL_FRAMES = 5  # frames of the one video a temporal network's count runs (AVSBench's v1s and v1m clips)


@dataclass(frozen=True)
class NetworkRequest:
    """What decides a stage network's counts: the experiment's model section, the task, the semantic
    network's classes, whether the stage feeds a prior, and the run's base folder (``pretrained``, or
    where ``model.pretrain`` writes one), which decides how checkpoints store the weights."""

    model: ModelConfig
    task: str
    classes: tuple[str, ...] | None
    prior: bool
    base_folder: str | None


def cache_dir() -> Path:
    """``$AAVS_CACHE_DIR/flops``, else ``~/.cache/aavs/flops``."""
    return aavs_cache(FLOPS_DIR)


def cache_key(request: NetworkRequest) -> str:
    """A digest of the request, the base folder's config.json (its architecture) and the library versions."""
    import transformers

    model = request.model.model_dump(mode="json")
    config = Path(model["pretrained"] or "") / "config.json"
    material = {
        "version": COUNTER_VERSION,
        "model": model,
        "base_config": config.read_text(encoding="utf-8") if model["pretrained"] and config.is_file() else None,
        "task": request.task,
        "classes": request.classes,
        "prior": request.prior,
        "folder_base": request.base_folder is not None,  # the path itself: see network_costs
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def cached(name: str, key: str, compute: Callable[[], dict[str, Any]], folder: Path | None = None) -> dict[str, Any]:
    """``compute()``'s result, read from ``<folder>/<name>-<key>.json`` when present, else computed and
    written there atomically (a cache that cannot be written is only a slower estimate)."""
    path = (folder or cache_dir()) / f"{name}-{key}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(saved, dict) and saved.get("version") == COUNTER_VERSION:
            return saved
    except (OSError, ValueError):
        pass
    result = {"version": COUNTER_VERSION, **compute()}
    try:
        atomic.write_json(path, result)
    except OSError:
        pass
    return result


def network_costs(request: NetworkRequest, folder: Path | None = None) -> dict[str, Any]:
    """The stage network's counts (cached): ``image_size``, ``train_flops`` and ``eval_flops`` per frame
    by phase, ``params`` (total, trainable by phase), ``weights`` (one checkpoint folder: its files'
    bytes and its tensors' bytes), ``optimizer`` by phase (optimizer.bin's bytes and its tensors'),
    ``assumed`` (how the network differs from the run's, or None) and ``seconds`` (the count's time).

    The checkpoint was written with a placeholder base path; its files' bytes are those of the run's
    path (JSON-escaped, as the files hold it), so one count serves every results folder."""
    costs = cached("network", cache_key(request), lambda: _count_network(request), folder)
    if request.base_folder is not None:
        longer = len(json.dumps(request.base_folder)) - len(json.dumps(PLACEHOLDER_BASE))
        weights = dict(costs["weights"])
        weights["file_bytes"] += weights["base_mentions"] * longer
        costs = {**costs, "weights": weights}
    return costs


# ------------------------------------------------------------------------------------- building
def build_network(request: NetworkRequest) -> tuple[Any, str | None]:
    """The stage's network as a trial builds it, its frozen base at random values; and what was
    assumed to build it here (None: nothing)."""
    spec = request.model
    overrides = dict(spec.overrides)
    preset, pretrained, assumed = spec.preset, spec.pretrained, None
    if spec.pretrain is not None:  # the run pre-trains this preset's base into a folder, frozen there
        pretrained = None
    elif pretrained is not None and not Path(pretrained).exists():
        pretrained = None
        if preset is None and spec.type == AAVS_TYPE:
            preset = ARCHITECTURE_OF_ADE20K_BASE
        assumed = (
            f"model.pretrained {spec.pretrained} is not on this machine: counted on the {preset} preset's architecture"
        )
    if request.base_folder is not None and spec.type == AAVS_TYPE:
        overrides.setdefault("train_base", False)  # a folder base stays frozen (modeling_aavs.build_model)
    network = registry.build(
        spec.type, request.task, preset=preset, pretrained=pretrained, classes=request.classes, **overrides
    )
    return network, assumed


def dummy_batch(network: Any, frames: int, prior: bool, labels: bool = True) -> dict[str, Any]:
    """A batch of one video of ``frames`` frames: random pixels and audio, a square of class 1 on
    background as the labels (and as the stage-two prior, the true sounding mask training feeds)."""
    size = int(network.config.image_size)
    audio_dim = int(getattr(network.config, "audio_dim", 128))
    target = torch.zeros(frames, MASK_SIZE, MASK_SIZE, dtype=torch.long)
    target[:, MASK_SIZE // 4 : MASK_SIZE // 2, MASK_SIZE // 4 : MASK_SIZE // 2] = 1
    inputs: dict[str, Any] = {
        "pixel_values": torch.randn(frames, 3, size, size),
        "audio": torch.randn(frames, audio_dim),
        "prior": (target != 0).float() if prior else None,
        "video_frames": [frames],
    }
    if labels:
        inputs.update(labels=target, loss_frames=torch.ones(frames, dtype=torch.bool))
    return inputs


def _counted(run: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def _tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor inside ``obj`` (dicts and lists walked)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _safetensors_payload(path: Path) -> int:
    """A safetensors file's tensor bytes: its size less the 8-byte length and the JSON header."""
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return path.stat().st_size - 8 - header


def _count_network(request: NetworkRequest) -> dict[str, Any]:
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network, assumed = build_network(request)
        temporal = registry.get_model_type(request.model.type).temporal
        frames = TEMPORAL_FRAMES if temporal else 1
        phases = ("A", "B") if registry.get_model_type(request.model.type).warmup else ("B",)
        train: dict[str, float] = {}
        evaluation: dict[str, float] = {}
        optimizer: dict[str, dict[str, int]] = {}
        trainable: dict[str, int] = {}
        for phase in phases:
            network.set_phase(phase)
            network.train()
            batch = dummy_batch(network, frames, request.prior)
            train[phase] = _counted(lambda: network(**batch).loss.backward()) / frames  # noqa: B023 - run at once
            groups = network.phase_parameter_groups(phase, lr=1e-3, weight_decay=0.05)
            trainable[phase] = sum(p.numel() for g in groups for p in g["params"])
            adamw = torch.optim.AdamW(groups, lr=1e-3)
            adamw.step()
            buffer = io.BytesIO()
            torch.save(adamw.state_dict(), buffer)
            optimizer[phase] = {"tensor_bytes": _tensor_bytes(adamw.state), "file_bytes": buffer.tell()}
            network.zero_grad(set_to_none=True)
            del adamw
            network.eval()
            batch = dummy_batch(network, frames, request.prior, labels=False)
            with torch.no_grad():
                evaluation[phase] = _counted(lambda: network.class_scores(network(**batch))) / frames  # noqa: B023
        weights = _checkpoint_folder(network, request.base_folder)
    return {
        "model_type": request.model.type,
        "task": request.task,
        "image_size": int(network.config.image_size),
        "train_flops": train,
        "eval_flops": evaluation,
        "params": {"total": sum(p.numel() for p in network.parameters()), "trainable": trainable},
        "weights": weights,
        "optimizer": optimizer,
        "assumed": assumed,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _checkpoint_folder(network: Any, base_folder: str | None) -> dict[str, int]:
    """One checkpoint folder of ``network`` written as the run writes it: with a folder base, that base's
    path recorded (AAVS then stores the trainable weights only), here :data:`PLACEHOLDER_BASE`, counted
    in ``base_mentions``."""
    config = network.config
    if base_folder is not None and hasattr(config, "base"):
        config.base = PLACEHOLDER_BASE
    with tempfile.TemporaryDirectory(prefix="aavs-estimate-") as tmp:
        folder = Path(tmp) / "checkpoint"
        network.save_pretrained(folder)
        files = [p for p in folder.rglob("*") if p.is_file()]
        return {
            "file_bytes": sum(p.stat().st_size for p in files),
            "tensor_bytes": sum(_safetensors_payload(p) for p in files if p.suffix == ".safetensors"),
            "base_mentions": sum(p.read_bytes().count(PLACEHOLDER_BASE.encode()) for p in files),
        }


# -------------------------------------------------------------------------- the run's other work
def pretraining_costs(preset: str, folder: Path | None = None) -> dict[str, Any]:
    """``model.pretrain``: FLOPs per still image of the preset's Mask2Former training step
    (:mod:`aavs.orchestrator.recipe.base_pretraining`: the whole network trains), cached."""
    key = hashlib.sha256(json.dumps(["pretrain", preset, torch.__version__]).encode()).hexdigest()[:24]
    return cached("pretrain", key, lambda: _count_pretraining(preset), folder)


def _pretraining_step(preset: str, images: int) -> Callable[[], object]:
    """One training step of ``preset``'s Mask2Former on ``images`` synthetic stills, as
    :mod:`aavs.orchestrator.recipe.base_pretraining` runs it (forward with targets, backward)."""
    import numpy as np
    from transformers import Mask2FormerForUniversalSegmentation

    from aavs.datasets.synth import CLASS_NAMES, still_image
    from aavs.datasets.transforms import normalize_frames
    from aavs.models.modeling_aavs import frame_targets, resize_labels
    from aavs.models.presets import preset_config

    config, size = preset_config(preset, "avss", classes=CLASS_NAMES)
    model = Mask2FormerForUniversalSegmentation(config).train()
    pictures, class_maps = zip(*(still_image(np.random.default_rng(i)) for i in range(images)))
    labels = resize_labels(torch.from_numpy(np.stack(class_maps)), size)
    mask_labels, class_labels = frame_targets(labels, len(CLASS_NAMES))
    pixels = normalize_frames(list(pictures), size)
    return lambda: model(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels).loss.backward()


def _count_pretraining(preset: str) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        step = _pretraining_step(preset, 1)
        return {"preset": preset, "train_flops": _counted(step)}


def time_pretraining_step(preset: str, images: int, threads: int, steps: int = 3) -> float:
    """Seconds of one pre-training step of ``images`` images on ``threads`` torch threads (the fastest of
    ``steps`` after a warm-up step; the optimizer's update left out, a few parameters' worth), or on one
    thread if that is faster: a machine busy with other work stalls a step's threads on each other,
    and the estimate is for one that is not."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        step = _pretraining_step(preset, images)
        return min(timed(step, threads, steps), timed(step, 1, steps))


def timed(step: Callable[[], object], threads: int, steps: int = 3) -> float:
    """The fewest seconds of ``steps`` calls of ``step`` on ``threads`` torch threads, after a warm-up
    call: the machine's own speed, as little as possible of what else runs on it at the moment."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = []
    try:
        step()
        for _ in range(steps):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(before)
    return min(times)


def vggish_costs(folder: Path | None = None) -> dict[str, Any]:
    """FLOPs of one VGGish example (0.96 s of audio, one frame's second), cached."""
    key = hashlib.sha256(json.dumps(["vggish", torch.__version__]).encode()).hexdigest()[:24]
    return cached("vggish", key, _count_vggish, folder)


def _count_vggish() -> dict[str, Any]:
    from aavs.models.vggish import random_vggish

    model = random_vggish().eval()
    with torch.no_grad():
        flops = _counted(lambda: model(torch.zeros(1, 1, 96, 64)))
    return {"flops_per_example": flops}


def vggish_rate(folder: Path | None = None) -> dict[str, Any]:
    """VGGish examples per second on this machine's CPU (:func:`measure_vggish_rate`), measured once per
    host, CPU count and torch release and cached: the driver's audio embeddings are a small part of a run."""
    import platform

    key = hashlib.sha256(json.dumps(["vggish-rate", platform.node(), os.cpu_count(), torch.__version__]).encode())
    return cached("vggish-rate", key.hexdigest()[:24], lambda: {"examples_per_s": measure_vggish_rate()}, folder)


def measure_vggish_rate(examples: int = 4) -> float:
    """VGGish examples per second on this machine's CPU (every thread, or one if faster: see
    :func:`time_pretraining_step`), as the driver embeds the audio: the fastest of three batches of
    ``examples`` after a warm-up (zero weights: the time does not depend on them)."""
    from aavs.models.vggish import VGGish

    with torch.device("meta"):
        model = VGGish().eval()
    model.to_empty(device="cpu")
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.detach().zero_()
    batch = torch.zeros(examples, 1, 96, 64)
    with torch.no_grad():
        seconds = min(timed(lambda: model(batch), threads) for threads in {torch.get_num_threads(), 1})
    return examples / seconds


def measure_cpu_rate(seconds: float = 1.0, size: int = 512, windows: int = 5) -> dict[str, Any]:
    """Float32 ``torch.mm`` FLOP/s of one CPU core, measured now: ``size`` x ``size`` products (2 size^3
    FLOPs each) on one thread, the best of ``windows`` windows that take about ``seconds`` together.
    What one trial's worker gets per CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates = []
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)  # warm-up
        for _ in range(windows):
            count, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds / windows:
                torch.mm(a, b)
                count += 1
            rates.append(2 * size**3 * count / elapsed)
    finally:
        torch.set_num_threads(threads)
    return {"flops_per_s": max(rates), "seconds": seconds, "size": size}
