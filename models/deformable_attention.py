"""The pixel decoder's multi-scale deformable attention with a fused CPU sampler.

transformers computes Deformable DETR's sampling in PyTorch (``multi_scale_deformable_attention``):
one ``grid_sample`` per level, a stack of the samples, a broadcast product with the attention weights
and a sum. On the CPU that is about half the pixel decoder's time in a swin-base training step (8 heads
x 32 channels x 3,024 queries x 12 samples, written and read back four times, and ``grid_sample``
reading a corner's 32 channels from 32 planes). ``csrc/deformable_sampling.c`` does the same sampling
in one pass, forward and backward (docs/method.md §8; tests/benchmarks/bench_step.py measures it).

The C file is compiled on first use with the system's C compiler into the aavs cache
(``$AAVS_CACHE_DIR/kernels`` or ``~/.cache/aavs/kernels``, named by a hash of the source, the
compiler, its flags and the machine's architecture), without fast-math or FMA contraction, so that
every x86-64 machine computes the same bits. It is called through ctypes, one task per (batch, head)
pair spread over torch's thread count. Where there is no compiler, or the tensors are not float32 on
the CPU (a GPU, bf16 autocast), the attention runs transformers' own function: the same numbers to
float rounding (tests/test_deformable_attention.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch
from torch import Tensor
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    multi_scale_deformable_attention,
)

from aavs.datasets.files import aavs_cache

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "deformable_sampling.c"
CFLAGS = ("-O3", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared")
MAX_HEAD_DIM = 1024  # the C file's bound on channels per head


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@cache
def load_kernel() -> ctypes.CDLL | None:
    """The compiled sampler, built once per source and compiler; None (with one warning) where it cannot
    be built or loaded."""
    compiler = _compiler()
    if compiler is None or sys.platform == "win32":
        logger.warning("no C compiler: deformable attention runs transformers' PyTorch sampling")
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
        built_by = f"{version} {' '.join(CFLAGS)} {platform.machine()}".encode()
        key = hashlib.sha256(SOURCE.read_bytes() + built_by).hexdigest()[:16]
        library = aavs_cache("kernels") / f"deformable_sampling-{key}.so"
        if not library.exists():
            library.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=library.parent) as tmp:  # built aside, renamed whole
                built = Path(tmp) / library.name
                subprocess.run(
                    [compiler, *CFLAGS, str(SOURCE), "-o", str(built), "-lm"], capture_output=True, check=True
                )
                os.replace(built, library)
        kernel = ctypes.CDLL(str(library))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        logger.warning(
            "deformable sampling kernel not built (%s %s): transformers' sampling runs", error, detail[-500:]
        )
        return None
    pointers, sizes = [ctypes.c_void_p] * 5, [ctypes.c_int64] * 9
    kernel.deformable_sampling_forward.argtypes = [*pointers, ctypes.c_void_p, *sizes]
    kernel.deformable_sampling_forward.restype = None
    kernel.deformable_sampling_backward.argtypes = [*pointers, *[ctypes.c_void_p] * 4, *sizes]
    kernel.deformable_sampling_backward.restype = None
    return kernel


@cache
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """The threads of this process (a forked child gets its own: it does not inherit the parent's)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aavs-sampling")


def _run_tasks(function: Callable[..., None], args: Sequence[int], tasks: int) -> None:
    """``function(*args, begin, end)`` over ``range(tasks)`` split across torch's thread count (ctypes
    releases the GIL for the call)."""
    workers = max(1, min(torch.get_num_threads(), tasks))
    bounds = [tasks * i // workers for i in range(workers + 1)]
    if workers == 1:
        function(*args, 0, tasks)
        return
    futures = [
        _pool(workers, os.getpid()).submit(function, *args, begin, end) for begin, end in zip(bounds, bounds[1:])
    ]
    for future in futures:
        future.result()


class FusedDeformableSampling(torch.autograd.Function):
    """``multi_scale_deformable_attention`` through the C kernel: value ``[B, S, H, D]``, locations
    ``[B, Q, H, L, P, 2]``, weights ``[B, Q, H, L, P]`` -> ``[B, Q, H * D]``."""

    @staticmethod
    def forward(ctx, value: Tensor, shapes: Tensor, starts: Tensor, locations: Tensor, weights: Tensor) -> Tensor:
        kernel = load_kernel()
        assert kernel is not None
        value, locations, weights = value.contiguous(), locations.contiguous(), weights.contiguous()
        batch, rows, heads, dim = value.shape
        _, queries, _, levels, points, _ = locations.shape
        out = torch.empty(batch, queries, heads, dim)
        sizes = [batch, rows, heads, dim, queries, levels, points]
        pointers = [t.data_ptr() for t in (value, shapes, starts, locations, weights, out)]
        _run_tasks(kernel.deformable_sampling_forward, [*pointers, *sizes], batch * heads)
        ctx.save_for_backward(value, shapes, starts, locations, weights)
        return out.view(batch, queries, heads * dim)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        kernel = load_kernel()
        assert kernel is not None
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_value = torch.zeros_like(value)
        grad_locations, grad_weights = torch.empty_like(locations), torch.empty_like(weights)
        batch, rows, heads, dim = value.shape
        _, queries, _, levels, points, _ = locations.shape
        pointers = [t.data_ptr() for t in (value, shapes, starts, locations, weights, grad_out)]
        pointers += [t.data_ptr() for t in (grad_value, grad_locations, grad_weights)]
        sizes = [batch, rows, heads, dim, queries, levels, points]
        _run_tasks(kernel.deformable_sampling_backward, [*pointers, *sizes], batch * heads)
        return grad_value, None, None, grad_locations, grad_weights


def fused_sampling_applies(*tensors: Tensor) -> bool:
    """Whether the C sampler can take these tensors: float32 on the CPU, a head no wider than the C file
    allows, and the kernel built."""
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    return tensors[0].shape[-1] <= MAX_HEAD_DIM and load_kernel() is not None


def deformable_sampling(
    value: Tensor,  # [B, S, H, D]
    spatial_shapes: list[tuple[int, int]],
    locations: Tensor,  # [B, Q, H, L, P, 2] in [0, 1]
    weights: Tensor,  # [B, Q, H, L, P]
    fused: bool = True,
) -> Tensor:  # [B, Q, H * D]
    """Deformable DETR's sampling: the C kernel where it applies (and ``fused``), else transformers'."""
    if fused and fused_sampling_applies(value, locations, weights):
        shapes = torch.tensor(spatial_shapes, dtype=torch.int64)
        sizes = shapes[:, 0] * shapes[:, 1]
        starts = torch.cumsum(sizes, 0) - sizes
        return FusedDeformableSampling.apply(value, shapes, starts, locations, weights)
    return multi_scale_deformable_attention(value, spatial_shapes, locations, weights)


class FusedMultiscaleDeformableAttention(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """The pixel decoder's attention with :func:`deformable_sampling`; the projections, the offsets'
    normalisation and the softmax as transformers computes them. Promoted in place (no ``__init__``):
    ``fused`` is a class default an instance may override (the benchmark's reference turns it off)."""

    fused: bool = True

    def forward(  # the library's signature (called by keyword); encoder_attention_mask is unused there too
        self,
        hidden_states: Tensor,  # [B, Q, C] queries (the flattened multi-scale map)
        attention_mask: Tensor | None = None,  # [B, S] True where the value is padding
        encoder_hidden_states: Tensor | None = None,  # [B, S, C]
        encoder_attention_mask: Tensor | None = None,
        position_embeddings: Tensor | None = None,
        reference_points: Tensor | None = None,  # [B, Q, L, 2] in [0, 1]
        spatial_shapes_list: list[tuple[int, int]] | None = None,
        level_start_index: Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor]:
        assert encoder_hidden_states is not None and reference_points is not None and spatial_shapes_list
        if reference_points.shape[-1] != 2:
            raise ValueError(f"reference points of {reference_points.shape[-1]} coordinates: the pixel decoder gives 2")
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        batch, queries, _ = hidden_states.shape
        rows = encoder_hidden_states.shape[1]
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:
            value = value.masked_fill(attention_mask[..., None], 0.0)
        value = value.view(batch, rows, heads, self.d_model // heads)
        offsets = self.sampling_offsets(hidden_states).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(hidden_states).view(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
        normaliser = torch.tensor([[w, h] for h, w in spatial_shapes_list], device=offsets.device)  # (x, y) per level
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        output = deformable_sampling(value, spatial_shapes_list, locations, weights, fused=self.fused)
        return self.output_proj(output), weights
