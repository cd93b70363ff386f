"""Per-epoch training state, written atomically, so that a killed run resumes exactly.

A trial folder holds::

    checkpoints/last/   the state after the last finished epoch
        model/          trainable weights (the model's save_pretrained; AAVS: model.safetensors + aavs.json)
        accelerate/     Accelerator.save_state without the model: optimizer and scaler states, every
                        rank's RNG states (Python, NumPy, torch CPU and CUDA); under DeepSpeed also the
                        engine's own checkpoint (every rank's optimizer partition, frozen weights left out)
            rng_rank<r>.pt  rank r's RNG states again, named by its process-group rank (:func:`_save_rng`)
        trainer.json    epoch, phase, best value and epoch
    best/               the best checkpoint so far by the stage's metric (a model checkpoint folder)

The weights are in ``model/`` alone, in the model's own format (AAVS: trainable weights and the base's path),
so a training state never holds the frozen pre-trained base: megabytes, not the whole network.

Each folder is built under a temporary name and renamed into place, so ``last`` is always a complete
epoch: a run killed mid-epoch restarts from the epoch before, replays the same batches (the sampler is
seeded by epoch) and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.checkpointing import load_accelerator_state

from aavs.datasets import atomic
from aavs.orchestrator.results import BEST, LAST, load_json

STATE = "accelerate"  # the Accelerator.save_state folder inside LAST


@dataclass
class TrainerState:
    epoch: int = -1  # last finished epoch (0-based); -1 before the first
    phase: str = "A"
    best_value: float | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    # The last finished epoch's report: a trial killed after saving its state but before appending the
    # report line (metrics.jsonl) writes it on resume, so the file matches an uninterrupted run's.
    report: dict[str, Any] | None = None


def last_dir(trial_dir: Path) -> Path:
    """Where ``checkpoints/last`` is to be read: a commit killed half-way leaves it staged beside
    (aavs.datasets.atomic); every rank reads the same version, and the next save finishes the commit."""
    return atomic.readable(trial_dir / LAST)


def best_dir(trial_dir: Path) -> Path:
    """Where the trial's best checkpoint is to be read, likewise."""
    return atomic.readable(trial_dir / BEST)


def read_trainer_state(trial_dir: Path) -> TrainerState | None:
    """The state ``checkpoints/last`` was saved with; None before the first epoch ended."""
    saved = load_json(last_dir(trial_dir) / "trainer.json")
    return None if saved is None else TrainerState(**saved["state"])


def save_last(
    trial_dir: Path, accelerator: Accelerator, model: torch.nn.Module, state: TrainerState, rank: int
) -> None:
    """Write ``checkpoints/last``; every rank calls it, with its process-group ``rank`` (under Ray Train's
    DeepSpeed workers accelerate's own ``is_main_process`` was True on rank 1 too).

    Each rank saves its RNG states (and under DeepSpeed its optimizer partition) into a staging folder
    that all ranks can name; rank 0 then adds the weights and ``trainer.json`` and renames the whole
    into place.
    """
    staging = trial_dir / "checkpoints" / f".state.epoch{state.epoch}.tmp"  # a sweep removes it if left
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)  # what a run killed while saving left behind
    accelerator.wait_for_everyone()
    handle = accelerator.register_save_state_pre_hook(functools.partial(_before_save_state, rank=rank))
    try:
        with atomic.naming_a_full_disk(trial_dir / LAST):
            accelerator.save_state(str(staging), exclude_frozen_parameters=True)  # the kwarg: DeepSpeed's
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a half-written state must not take the disk's last bytes
        raise
    finally:
        handle.remove()
    accelerator.wait_for_everyone()
    if rank == 0:
        with atomic.atomic_dir(trial_dir / LAST) as tmp:
            os.replace(staging, tmp / STATE)
            accelerator.unwrap_model(model).save_pretrained(tmp / "model")
            (tmp / "trainer.json").write_text(json.dumps({"state": asdict(state)}, indent=1))
    accelerator.wait_for_everyone()


def load_last(trial_dir: Path, accelerator: Accelerator, rank: int) -> None:
    """The optimizer, scaler and RNG states of ``checkpoints/last`` into a prepared accelerator (under
    DeepSpeed the engine's checkpoint); the weights were loaded from ``model/`` before ``prepare``."""
    handle = accelerator.register_load_state_pre_hook(_skip_model_weights)
    try:
        accelerator.load_state(str(last_dir(trial_dir) / STATE), load_module_strict=False)
    finally:
        handle.remove()
    _load_rng(last_dir(trial_dir) / STATE, rank)


def restore_rng(trial_dir: Path, accelerator: Accelerator, rank: int) -> None:
    """This rank's RNG states as ``checkpoints/last`` holds them, and nothing else (not the scaler: the
    next phase starts a fresh one): a run killed right after a phase's last epoch builds the next
    phase's model from them. accelerate's loader logs, so an accelerator must exist."""
    load_accelerator_state(
        str(last_dir(trial_dir) / STATE),
        models=[],
        optimizers=[],
        schedulers=[],
        dataloaders=[],
        process_index=accelerator.process_index,
    )
    _load_rng(last_dir(trial_dir) / STATE, rank)


def _save_rng(folder: Path, rank: int) -> None:
    """This rank's RNG states under its process-group rank.

    accelerate names its RNG file by ``accelerator.process_index``, which is 0 on every rank of a
    DeepSpeed trial on the CPU (its distributed backend is None there: LOCAL_RANK is set, the device is
    the CPU and ``cpu=False``): every rank wrote ``random_states_0.pkl`` and resumed with rank 0's
    states, so the resumed epoch differed from an uninterrupted one. This file is named by the rank
    the process group gives, and :func:`_load_rng` restores it after accelerate's own."""
    numpy_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    state = {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save(state, folder / f"rng_rank{rank}.pt")


def _load_rng(folder: Path, rank: int) -> None:
    """The RNG states :func:`_save_rng` wrote for ``rank``; a state saved before this file existed
    keeps what accelerate restored."""
    path = folder / f"rng_rank{rank}.pt"
    if not path.is_file():
        return
    state = torch.load(path, weights_only=True)
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _before_save_state(models: list, weights: list[dict[str, torch.Tensor]], output_dir: str, rank: int) -> None:
    """save_state hook: no state dict of the model (it would hold the frozen base, ~430 MB for
    swin-base; ``model/`` holds the trainable weights), and this rank's RNG file (:func:`_save_rng`)."""
    weights.clear()
    _save_rng(Path(output_dir), rank)


def _skip_model_weights(models: list, input_dir: str) -> None:
    """load_state hook, the counterpart of :func:`_before_save_state`."""
    models.clear()


def adopt_exchanged_state(folder: Path, trial_dir: Path) -> dict[str, Any] | None:
    """Make ``trial_dir`` continue from a training state another trial handed over (population-based
    training's exploit; the folder is what reporter.exchange_folder wrote): its ``last`` and ``best``
    replace this trial's, so the next start resumes with the donor's weights, optimizer, phase and
    phase-A best. Returns the folder's ``origin.json`` ({"trial", "epoch"}), or None when the state is
    this trial's own (a restart after a failure: the trial folder is already as new)."""
    origin = json.loads((folder / "origin.json").read_text(encoding="utf-8"))
    if origin["trial"] == trial_dir.name:
        return None
    for name, target in (("last", trial_dir / LAST), ("best", trial_dir / BEST)):
        if not (folder / name).is_dir():
            continue
        staging = target.with_name(f".{target.name}-adopting")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder / name, staging)
        old = target.with_name(f".{target.name}-replaced")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    return origin
