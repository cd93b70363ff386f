"""Model speed on this CPU (not part of the test run).

    .venv/bin/python tests/benchmarks/bench_model.py

Prints the tiny preset's forward + backward + AdamW step time per frame (2 frames of 128 x 128, phase
B, stage-one network) and the swin-base preset's forward time per 384 x 384 frame (no grad), each the
median of several repeats after a warm-up, at torch's default thread count.
"""

from __future__ import annotations

import statistics
import time

import torch

from aavs.models import build_model, phase_parameter_groups, set_phase


def _median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    tiny = build_model("s4", preset="tiny")
    set_phase(tiny, "B")
    optimizer = torch.optim.AdamW(phase_parameter_groups(tiny, "B", lr=1e-4, weight_decay=0.05))
    pixels, audio = torch.randn(2, 3, 128, 128), torch.randn(2, 128)
    labels = (torch.rand(2, 224, 224) > 0.7).long()

    def train_step() -> None:
        out = tiny(pixels, audio, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tiny_step = _median_seconds(train_step, repeats=20)
    base = build_model("s4", preset="swin-base").eval()
    frame, second = torch.randn(1, 3, 384, 384), torch.randn(1, 128)

    def forward() -> None:
        with torch.no_grad():
            base(frame, second)

    base_forward = _median_seconds(forward, repeats=5, warmup=1)
    print(f"threads: {torch.get_num_threads()}")
    print(
        f"tiny preset, forward+backward+step: {1000 * tiny_step / 2:.1f} ms per 128x128 frame "
        f"({1000 * tiny_step:.1f} ms per 2-frame step)"
    )
    print(f"swin-base preset, forward: {base_forward:.2f} s per 384x384 frame")


if __name__ == "__main__":
    main()
