"""`aavs predict` throughput on this CPU with the tiny preset (not part of the test run).

    .venv/bin/python tests/benchmarks/bench_predict.py [--videos 3] [--seconds 60] [--size 640x360] [--fps 25]

Writes ``--videos`` clips (H.264 + AAC, a moving picture and a tone) and tiny stage-one and stage-two
checkpoints, then predicts them with Stepping Stones (stage one feeding stage two), in this process and
as the Ray Data pipeline (``ray.init`` on all cores, outside the timing), each with a cold embedding
cache. Prints seconds of video per wall-clock second and, summed over the videos, the seconds spent in
each step (decode, audio, model, write, overlay; under Ray the steps overlap, so they add up to more
than the wall time).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aavs.datasets.video import write_video
from aavs.models import build_model, save_checkpoint
from aavs.orchestrator.predict import STAGES, ModelSource, predict_videos


def _frames(seconds: int, fps: int, height: int, width: int):
    base = (np.add.outer(np.arange(height), np.arange(width)) % 256).astype(np.uint8)
    for i in range(seconds * fps):
        yield np.stack([np.roll(base, i, axis=1), np.roll(base, 2 * i, axis=0), base[::-1]], axis=-1)


def _tone(seconds: int, rate: int = 44100) -> np.ndarray:
    t = np.arange(seconds * rate) / rate
    return (8000 * np.sin(2 * np.pi * (220 + 40 * np.floor(t)) * t)).astype(np.int16)


def _report(label: str, summary: dict) -> None:
    totals = {stage: sum(v["timings"][stage] for v in summary["videos"]) for stage in STAGES}
    print(
        f"{label:>6}: {summary['seconds']} s of video in {summary['wall_s']:.1f} s wall = "
        f"{summary['seconds'] / summary['wall_s']:.2f} video-s/s | "
        + ", ".join(f"{stage} {value:.1f} s" for stage, value in totals.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        videos = work / "videos"
        videos.mkdir()
        for i in range(args.videos):
            write_video(
                videos / f"clip{i}.mp4",
                _frames(args.seconds, args.fps, height, width),
                args.fps,
                options={"preset": "veryfast"},
                audio=(_tone(args.seconds), 44100),
                audio_codec="aac",
            )
        torch.manual_seed(0)
        save_checkpoint(build_model("avss-binary", preset="tiny"), work / "s1")
        save_checkpoint(build_model("avss", preset="tiny"), work / "s2")
        print(
            f"{args.videos} clips of {args.seconds} s, {width}x{height} at {args.fps} fps, "
            f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
        )
        for label, use_ray in (("local", False), ("ray", True)):
            if use_ray:
                import ray

                ray.init(include_dashboard=False, log_to_driver=False)
            source = ModelSource(str(work / "s2"), str(work / "s1"), cache_dir=str(work / f"cache-{label}"))
            start = time.perf_counter()
            summary = predict_videos([videos], work / f"out-{label}", source, use_ray=use_ray)
            assert summary["done"] == args.videos, summary
            summary["wall_s"] = time.perf_counter() - start
            _report(label, summary)


if __name__ == "__main__":
    main()
