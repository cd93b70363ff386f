"""What every model type does with tensors on disk, without importing a network: copy a state dict
into a live one with checks, read a checkpoint folder's safetensors file, read a released ``.pth``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from aavs.datasets.errors import InputError

WEIGHTS_FILE = "model.safetensors"


def few(items: Sequence[str], limit: int = 8) -> list[str]:
    """The first ``limit`` names, and how many more, for a message."""
    items = list(items)
    return items if len(items) <= limit else [*items[:limit], f"... ({len(items) - limit} more)"]


def copy_state(own: dict[str, Tensor], given: dict[str, Tensor], strict: bool, what: str, network: str) -> None:
    """Copy ``given`` into the tensors of ``own`` (a state dict of live tensors) after checking it all:
    unknown keys, wrong shapes and (``strict``) missing keys are one InputError naming them."""
    unexpected = sorted(set(given) - set(own))
    missing = sorted(set(own) - set(given)) if strict else []
    wrong = [
        f"{k} {list(v.shape)} (expected {list(own[k].shape)})"
        for k, v in given.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = [
        f"{label}: {', '.join(few(keys))}"
        for label, keys in (("unexpected keys", unexpected), ("missing keys", missing), ("wrong shapes", wrong))
        if keys
    ]
    if problems:
        raise InputError(f"{what} do not fit this {network} network: " + "; ".join(problems))
    with torch.no_grad():
        for key, value in given.items():
            own[key].copy_(value)


def read_weights(folder: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint folder's ``model.safetensors``, without building a network (a
    training run reloading its own checkpoints already has one)."""
    weights_file = Path(folder) / WEIGHTS_FILE
    if not weights_file.is_file():
        raise InputError(f"{weights_file} is missing")
    try:
        return load_file(str(weights_file))
    except (SafetensorError, OSError) as err:
        raise InputError(f"{weights_file}: not a readable safetensors file ({err})") from err


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """A ``torch.save``d state dict (or ``{"state_dict": ...}``) of ``what``, without the ``module.``
    prefix of a ``DataParallel`` wrapper; an InputError naming the file otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a bad file; all mean the same to the user
        raise InputError(f"{path}: not a loadable PyTorch state dict ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"{path}: expected a state dict (names -> tensors) of {what}")
    return strip_data_parallel(state)


def strip_data_parallel(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without the ``module.`` prefix every key has when saved from ``nn.DataParallel``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state
