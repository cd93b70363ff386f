"""GPU throughput of AAVS training steps: the swin-base preset at 384 x 384 in bf16 (not part of the test run).

    python tests/gpu/bench_gpu.py [--seconds 30] [--frames-per-video 5]

For batches of 1 and 4 videos and the strategies plain and DeepSpeed ZeRO-2 (through accelerate, as
train_func does), runs training steps of the stage-one network (phase B: every trainable part) for
about ``--seconds`` each after a warm-up, and prints frames/s and the peak GPU memory. Inputs are
random tensors of the real shapes, so the numbers measure the model, not the disk. Needs a CUDA GPU;
one run of the default settings takes about 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from aavs.models import build_model, phase_parameter_groups, set_phase
from aavs.orchestrator.recipe.accelerator import make_accelerator, release
from aavs.orchestrator.recipe.config import ComputeConfig


def run(strategy: str, videos: int, frames_per_video: int, seconds: float) -> dict:
    torch.cuda.reset_peak_memory_stats()
    model = build_model("avss-binary", preset="swin-base")
    set_phase(model, "B")
    optimizer = torch.optim.AdamW(phase_parameter_groups(model, "B", lr=1e-4, weight_decay=0.05))
    compute = ComputeConfig(
        gpus_per_worker=1, strategy=strategy, deepspeed={"zero_stage": 2}, mixed_precision="bf16", loader_workers=0
    )
    accelerator = make_accelerator(compute, grad_accum=1, grad_clip=0.01, micro_batch=videos)
    model, optimizer = accelerator.prepare(model, optimizer)
    n = videos * frames_per_video
    size = accelerator.unwrap_model(model).config.image_size
    g = torch.Generator(device="cuda").manual_seed(0)
    pixels = torch.randn(n, 3, size, size, device="cuda", generator=g)
    audio = torch.randn(n, 128, device="cuda", generator=g)
    labels = (torch.rand(n, 224, 224, device="cuda", generator=g) > 0.7).long()
    if strategy == "deepspeed":  # DeepSpeed keeps the module itself in bf16
        pixels, audio = pixels.bfloat16(), audio.bfloat16()

    def step() -> None:
        out = model(pixel_values=pixels, audio=audio, labels=labels)
        accelerator.backward(out.loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: kernels, allocator, DeepSpeed buckets
        step()
    torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {
        "strategy": strategy,
        "videos": videos,
        "frames": n,
        "steps": steps,
        "frames_per_s": steps * n / elapsed,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    release(accelerator)
    del model, optimizer
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--frames-per-video", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=["plain", "deepspeed"])
    parser.add_argument("--videos", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    for strategy in args.strategies:
        for videos in args.videos:
            print(json.dumps(run(strategy, videos, args.frames_per_video, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
