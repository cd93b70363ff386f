"""The devices ``aavs estimate`` prices a run on: a GPU's peak FLOP/s (and where the number comes from),
or this machine's CPU cores, measured; the model FLOP utilisation (MFU) the estimate assumes; and the
loader's throughput per worker.

Peaks, per device and precision (a run's ``compute.mixed_precision``: bf16 and fp16 use the tensor
cores' rate, ``no`` is float32, whose matrix products PyTorch runs without TF32 by default):

| device | bf16 / fp16 | float32 | source |
| --- | --- | --- | --- |
| h100, h200 | 790 TFLOP/s | 67 TFLOP/s | bf16: the matrix-product rate measured on the GPUs we may be lent (issue 21; the spec sheet says 989 dense); float32: NVIDIA's H100 SXM / H200 datasheet (non-tensor FP32) |
| a100 | 312 TFLOP/s | 19.5 TFLOP/s | NVIDIA's A100 datasheet (dense BF16; FP32) |
| cpu | measured | measured | float32 ``torch.mm`` on one core of this machine, timed for about a second (:func:`.flops.measure_cpu_rate`) |

MFU: 0.4 on a GPU unless ``--mfu`` says otherwise (issue 21's planning figure). On the CPU it is
measured as well: the first stage network's own training step (a video of 5 frames: forward, backward,
AdamW step) timed on a worker's threads, its counted FLOPs over the time, divided by that many cores'
``torch.mm`` rate (``model.pretrain``'s step is timed the same way, :mod:`.estimate`); small networks
spend most of a CPU step outside matrix products, far from 0.4. Every CPU timing keeps the fastest of a
few runs: the estimate is for the machine, not for what else runs on it at the moment.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from aavs.datasets.errors import InputError

DEFAULT_MFU = 0.4
# Frames per second one DataLoader worker delivers with everything a training step takes, at 384 x 384,
# as the training loop reads them (compact items from the frame store, one pread per array):
# 721.2 in tests/benchmarks/bench_loader.py's full-size epoch with the page cache dropped, alone on the
# 2-core development machine (docs/scale.md); 456.9 in the same epoch beside other work. The quiet figure,
# rounded down.
LOADER_FRAMES_PER_S_PER_WORKER = 720.0
LOADER_IMAGE_SIZE = 384

_MEASURED_BF16 = (
    "the bf16 matrix-product rate measured on the H100/H200 we may be lent (issue 21; the spec sheet says 989 dense)"
)
_H100_FP32 = "NVIDIA H100 SXM / H200 datasheet, FP32 without tensor cores (PyTorch leaves TF32 off for matmuls)"
# device -> precision -> (peak FLOP/s of one device, where the number comes from)
PEAKS: dict[str, dict[str, tuple[float, str]]] = {
    "h100": {"bf16": (790e12, _MEASURED_BF16), "fp32": (67e12, _H100_FP32)},
    "h200": {"bf16": (790e12, _MEASURED_BF16), "fp32": (67e12, _H100_FP32)},
    "a100": {
        "bf16": (312e12, "NVIDIA A100 datasheet, dense BF16 tensor cores"),
        "fp32": (19.5e12, "NVIDIA A100 datasheet, FP32 without tensor cores"),
    },
}


@dataclass(frozen=True)
class Device:
    """What the estimate prices: ``count`` devices of ``peak`` FLOP/s each at ``mfu``; a device is
    one GPU, or one CPU core (``unit``)."""

    name: str
    unit: str  # "GPU" or "CPU core"
    count: float
    peak: float
    peak_source: str
    precision: str
    mfu: float | None  # None: to be measured on the network (CPU, no --mfu)
    mfu_source: str

    @property
    def cpu(self) -> bool:
        return self.unit != "GPU"

    def rate(self, devices: float) -> float:
        """Sustained FLOP/s of ``devices`` devices: peak x MFU x devices."""
        if self.mfu is None:
            raise ValueError("the CPU's MFU is measured before any time is estimated")
        return self.peak * self.mfu * devices

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "count": self.count,
            "peak_flops_per_s": self.peak,
            "peak_source": self.peak_source,
            "precision": self.precision,
            "mfu": self.mfu,
            "mfu_source": self.mfu_source,
        }


def precision_of(mixed_precision: str) -> str:
    """The peak column a run's ``compute.mixed_precision`` uses: bf16 (bf16, fp16) or fp32 (no)."""
    return "fp32" if mixed_precision == "no" else "bf16"


def resolve_device(
    gpu: str | None,
    cpu: bool,
    gpus: float | None,
    mfu: float | None,
    mixed_precision: str,
    peak_tflops: float | None = None,
) -> Device:
    """The device of ``--gpu NAME`` (default h100) or ``--device cpu``, ``--gpus N`` of them (CPU: N
    cores, default this machine's), at ``--mfu`` (GPU default 0.4; CPU default measured). ``--peak-tflops``
    replaces the table's peak (or the CPU's measurement)."""
    if gpu is not None and cpu:
        raise InputError("--gpu and --device cpu: give one of them")
    if gpus is not None and (not math.isfinite(gpus) or gpus <= 0):
        raise InputError(f"--gpus {gpus:g}: expected a positive number of devices")
    if mfu is not None and not (math.isfinite(mfu) and 0 < mfu <= 1):
        raise InputError(f"--mfu {mfu:g}: expected a fraction of the peak in (0, 1]")
    if peak_tflops is not None and not (math.isfinite(peak_tflops) and peak_tflops > 0):
        raise InputError(f"--peak-tflops {peak_tflops:g}: expected a positive number of TFLOP/s")
    precision = precision_of(mixed_precision)
    if cpu:
        if peak_tflops is not None:
            peak, source = peak_tflops * 1e12, "--peak-tflops, per CPU core"
        else:
            from aavs.orchestrator.estimate.flops import measure_cpu_rate  # imports torch

            measured = measure_cpu_rate()
            peak = measured["flops_per_s"]
            source = (
                f"measured now: float32 torch.mm {measured['size']}x{measured['size']} on one core for "
                f"{measured['seconds']} s"
            )
        count = gpus if gpus is not None else float(os.cpu_count() or 1)
        return Device("cpu", "CPU core", count, peak, source, precision, mfu, "--mfu" if mfu else "measured")
    name = gpu or "h100"
    if name not in PEAKS:
        raise InputError(f"--gpu {name}: expected one of {', '.join(PEAKS)}")
    peak, source = (peak_tflops * 1e12, "--peak-tflops") if peak_tflops is not None else PEAKS[name][precision]
    return Device(
        name,
        "GPU",
        gpus if gpus is not None else 1.0,
        peak,
        source,
        precision,
        mfu if mfu is not None else DEFAULT_MFU,
        "--mfu" if mfu is not None else "assumed (issue 21's planning figure)",
    )


def with_measured_mfu(
    device: Device, network: Any, prior: bool, frames: int, flops_per_frame: float, threads: int
) -> Device:
    """``device`` (the CPU) with its MFU measured on ``network``'s training step (module docstring)."""
    seconds = time_training_step(network, prior, frames, threads)
    achieved = flops_per_frame * frames / seconds
    mfu = min(1.0, achieved / (device.peak * threads))
    source = (
        f"measured now: this network's training step ({frames} frames, {threads} thread(s)) at "
        f"{achieved / 1e9:.1f} GFLOP/s"
    )
    return Device(
        device.name, device.unit, device.count, device.peak, device.peak_source, device.precision, mfu, source
    )


def time_training_step(network: Any, prior: bool, frames: int, threads: int, steps: int = 3) -> float:
    """Seconds of one training step of ``network`` on ``frames`` frames with ``threads`` torch threads
    (forward, backward, AdamW's update; the fastest of ``steps`` after a warm-up step)."""
    import torch

    from aavs.orchestrator.estimate.flops import dummy_batch, timed

    batch = dummy_batch(network, frames, prior)
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-6)

    def step() -> None:
        network(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    network.train()
    return timed(step, threads, steps)


def loader_workers_needed(frames_per_s: float, loader_fps: float = LOADER_FRAMES_PER_S_PER_WORKER) -> int:
    """DataLoader workers that deliver ``frames_per_s``: ``ceil(frames_per_s / loader_fps)``."""
    return max(1, math.ceil(frames_per_s / loader_fps))
