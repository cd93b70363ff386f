"""One ``accelerate.Accelerator`` per training phase, for every strategy.

Strategies: ``plain`` (one device), ``ddp`` (one process per worker, as Ray Train or torchrun starts
them) and ``deepspeed`` (ZeRO stage 1/2/3 through accelerate's DeepSpeed plugin; it also runs on the
CPU, where accelerate must *not* be given ``cpu=True``, which would silently fall back to DDP).

Phase B trains a different parameter set than phase A, and a DeepSpeed engine cannot be re-prepared
around a module it already wrapped, so every phase builds a fresh model and a fresh accelerator; the
shared accelerate state is reset between them (the process group itself stays up).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs

from aavs.datasets.errors import InputError
from aavs.orchestrator.recipe.config import ComputeConfig
from aavs.orchestrator.recipe.device import pick_device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_single_process_env() -> None:
    """DeepSpeed insists on a process group; outside a launcher, make it a group of one."""
    if "WORLD_SIZE" in os.environ or torch.distributed.is_initialized():
        return
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    )


def make_accelerator(compute: ComputeConfig, grad_accum: int, grad_clip: float | None, micro_batch: int) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=False)
    use_cpu = pick_device(compute.cpu).type == "cpu"
    if compute.mixed_precision == "fp16" and use_cpu:
        raise InputError("compute.mixed_precision: fp16 needs a GPU; use 'bf16' or 'no' on the CPU")
    kwargs: dict[str, Any] = dict(mixed_precision=compute.mixed_precision, gradient_accumulation_steps=grad_accum)
    if compute.strategy == "deepspeed":
        _ensure_single_process_env()
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
            zero_stage=compute.deepspeed.zero_stage,
            gradient_accumulation_steps=grad_accum,
            gradient_clipping=grad_clip or 0.0,
        )
    else:
        # The CPU where CUDA is absent too: accelerate takes a process group on the CPU for DDP only
        # with cpu=True (without it, ranks that ask for GPUs they cannot use would train unsynchronised).
        kwargs["cpu"] = use_cpu
        # Some trainable weights sit out a forward: the prior embeddings of a semantic network run
        # without a prior, Swin's final norm (Mask2Former reads the stage outputs before it).
        kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if compute.compile:  # accelerate compiles the prepared model last (after autocast and DDP / the engine)
        kwargs["dynamo_backend"] = "inductor"
    accelerator = Accelerator(**kwargs)
    if compute.strategy == "deepspeed":
        # We hand accelerate no DataLoader, so DeepSpeed cannot infer its micro batch size.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = micro_batch
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else accelerator.num_processes
        ds_config["train_batch_size"] = micro_batch * grad_accum * world
    return accelerator


def adamw_kwargs(device: torch.device) -> dict[str, Any]:
    """AdamW's implementation on ``device``: the fused kernel on CUDA (one launch updates every
    parameter), PyTorch's default elsewhere, so CPU steps stay as they were."""
    return {"fused": True} if device.type == "cuda" else {}


def release(accelerator: Accelerator) -> None:
    accelerator.free_memory()
    AcceleratorState._reset_state(reset_partial_state=False)
