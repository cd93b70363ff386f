"""Data-loader throughput of AVSBenchDataset on a synthetic set (not part of the test run).

    .venv/bin/python tests/benchmarks/bench_data.py [--videos-per-split 8]

For image sizes 128 and 384, DataLoader workers 0 and 2, a cold and a warm VGGish cache, and the
in-memory cache on/off, prints the construction time (embeddings + decoding) and the videos/s of the
first and of later epochs (batch of 1 video, collate_videos).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from aavs.datasets.avsbench import AVSBenchDataset, collate_videos
from aavs.datasets.synth import write_synthetic_avsbench


def _epoch(loader: DataLoader) -> float:
    start, videos = time.perf_counter(), 0
    for batch in loader:
        videos += len(batch["uids"])
    return videos / (time.perf_counter() - start)


def bench(root: Path, cache: Path, size: int, workers: int, cold: bool, cache_mb: float, epochs: int) -> list:
    if cold:
        cache = Path(tempfile.mkdtemp(dir=cache.parent, prefix="cold-"))
    start = time.perf_counter()
    data = AVSBenchDataset(
        root, "avss", "train", image_size=size, prior="ground-truth", cache_dir=cache, cache_mb=cache_mb
    )
    init = time.perf_counter() - start
    loader = DataLoader(
        data, batch_size=1, shuffle=True, num_workers=workers, collate_fn=collate_videos, persistent_workers=workers > 0
    )
    rates = [_epoch(loader) for _ in range(epochs)]
    return [
        size,
        workers,
        "cold" if cold else "warm",
        "on" if data.in_memory else "off",
        len(data),
        f"{init:.2f}",
        f"{rates[0]:.1f}",
        f"{sum(rates[1:]) / max(len(rates) - 1, 1):.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos-per-split", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        root = write_synthetic_avsbench(tmp / "data", videos_per_split=args.videos_per_split)
        print(f"synthetic set ({args.videos_per_split} videos per split): {time.perf_counter() - start:.2f} s")
        warm = tmp / "warm"
        AVSBenchDataset(root, "avss", "train", image_size=32, cache_dir=warm, cache_mb=0)  # fill the warm cache
        header = ["size", "workers", "audio cache", "mem cache", "videos", "init s", "epoch 1 v/s", "later v/s"]
        rows = []
        for size in (128, 384):
            for workers in (0, 2):
                for cold in (True, False):
                    rows.append(bench(root, warm, size, workers, cold, cache_mb=1024, epochs=args.epochs))
            rows.append(bench(root, warm, size, 0, False, cache_mb=0, epochs=args.epochs))
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for row in [header, *rows]:
            print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


if __name__ == "__main__":
    main()
