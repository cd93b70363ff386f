"""Which device this process computes on: the one rule, used by training, evaluation, prediction and the
base pre-training alike."""

from __future__ import annotations

import torch


def pick_device(cpu: bool = False) -> torch.device:
    """The GPU this process was given (Ray sets ``CUDA_VISIBLE_DEVICES`` to a worker's own, so index 0 is
    it), or the CPU where CUDA is absent or ``cpu`` (``compute.cpu``) asks for it."""
    if cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")
