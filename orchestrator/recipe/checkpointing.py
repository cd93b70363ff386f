"""Per-epoch training state, written atomically, so that a killed run resumes exactly.

A trial folder holds::

    checkpoints/last/   the state after the last finished epoch
        model/          trainable weights (aavs.models.save_checkpoint: model.safetensors + aavs.json)
        optimizer.pt    optimizer (and scaler) state, read back with torch.load(weights_only=True)
        deepspeed/      instead of optimizer.pt under DeepSpeed: the engine's own checkpoint
        rng.safetensors torch's CPU (and CUDA) generator states
        trainer.json    epoch, phase, best value and epoch, Python and NumPy RNG states
    best/               the best checkpoint so far by the stage's metric (a model checkpoint folder)

Each folder is built under a temporary name and renamed into place, so ``last`` is always a complete
epoch: a run killed mid-epoch restarts from the epoch before, replays the same batches (the sampler is
seeded by epoch) and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LAST = "checkpoints/last"
BEST = "best"


@dataclass
class TrainerState:
    epoch: int = -1  # last finished epoch (0-based); -1 before the first
    phase: str = "A"
    best_value: float | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, plain


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    v, internal, gauss = plain["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def write_trainer_files(folder: Path, state: TrainerState) -> None:
    """RNG and bookkeeping files of a state folder being built (the caller renames it into place)."""
    tensors, plain = capture_rng()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "rng.safetensors"))
    (folder / "trainer.json").write_text(json.dumps({"state": asdict(state), "rng": plain}, indent=1))


def read_trainer_state(trial_dir: Path) -> TrainerState | None:
    path = trial_dir / LAST / "trainer.json"
    if not path.exists():
        return None
    return TrainerState(**json.loads(path.read_text())["state"])


def restore_trainer_rng(trial_dir: Path) -> None:
    folder = trial_dir / LAST
    plain = json.loads((folder / "trainer.json").read_text())["rng"]
    restore_rng(load_file(str(folder / "rng.safetensors")), plain)


def save_optimizer(path: Path, optimizer: torch.optim.Optimizer, scaler: Any | None) -> None:
    payload = {"optimizer": optimizer.state_dict()}
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    torch.save(payload, path)


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer, scaler: Any | None) -> None:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(payload["optimizer"])
    if scaler is not None and "scaler" in payload:
        scaler.load_state_dict(payload["scaler"])
