"""`aavs predict` throughput on this CPU with the tiny preset (not part of the test run).

    .venv/bin/python tests/benchmarks/bench_predict.py [--videos 3] [--seconds 60] [--size 640x360] [--fps 25]
    .venv/bin/python tests/benchmarks/bench_predict.py --mixed

``--mixed``: issue 26's folder instead: 10 clips of 5 s from 320x240 to 1280x720 at 15 to 30 fps, AAC
at 16 and 44.1 kHz, predicted by the ``aavs predict FOLDER`` command in a fresh process (the wall clock
includes starting Python and loading the networks), overlay.mp4 at the input's size and frame rate.

Writes ``--videos`` clips (H.264 + AAC, a moving picture and a tone) and tiny stage-one and stage-two
checkpoints, then predicts them with Stepping Stones (stage one feeding stage two), in this process and
as the Ray Data pipeline (``ray.init`` on all cores, outside the timing), each with a cold embedding
cache. Prints seconds of video per wall-clock second and, summed over the videos, the seconds spent in
each step (decode, audio, model, write, overlay; under Ray the steps overlap, so they add up to more
than the wall time). In this process too, a video's overlay is encoded in a second thread while the
next video decodes and predicts (the videos with the most pixels x frames first), so the steps add up
to more than the wall time there as well, and each step's seconds are wall-clock seconds in its thread:
on 2 cores the model's grow while an overlay is encoded beside it (torch's threads wait on each other).
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


# (width, height, fps, audio rate) of the --mixed folder: the sizes and rates phones and YouTube give.
MIXED = [
    (320, 240, 15, 16000),
    (426, 240, 30, 44100),
    (480, 360, 25, 16000),
    (640, 360, 30, 44100),
    (640, 480, 24, 16000),
    (854, 480, 25, 44100),
    (960, 540, 30, 16000),
    (1024, 576, 15, 44100),
    (1280, 720, 24, 16000),
    (1280, 720, 30, 44100),
]


def mixed(work: Path) -> None:
    """Issue 26's done-when: ``aavs predict`` over the mixed folder, wall clock with the model's load."""
    import json
    import subprocess
    import sys

    videos = work / "videos"
    videos.mkdir()
    for i, (width, height, fps, rate) in enumerate(MIXED):
        write_video(
            videos / f"clip{i}_{width}x{height}_{fps}fps.mp4",
            _frames(5, fps, height, width),
            fps,
            options={"preset": "veryfast"},
            audio=(_tone(5, rate), rate),
            audio_codec="aac",
        )
    torch.manual_seed(0)
    save_checkpoint(build_model("avss-binary", preset="tiny"), work / "s1")
    save_checkpoint(build_model("avss", preset="tiny"), work / "s2")
    command = [sys.executable, "-m", "aavs.orchestrator.cli", "predict", str(videos), "--out", str(work / "out")]
    command += ["--checkpoint", str(work / "s2"), "--prior-checkpoint", str(work / "s1"), "--cache", str(work / "c")]
    start = time.perf_counter()
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    summary = json.loads(done.stdout)
    seconds = 5 * len(MIXED)
    totals = {stage: sum(v["timings"][stage] for v in summary["videos"]) for stage in STAGES}
    print(
        f"{len(MIXED)} clips, {seconds} s of video in {wall:.1f} s wall (Python's start and the model's load "
        f"included) = {seconds / wall:.2f} video-s/s on {os.cpu_count()} CPUs | "
        + ", ".join(f"{stage} {value:.1f} s" for stage, value in totals.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--mixed", action="store_true", help="issue 26's folder of 10 mixed clips, by the CLI")
    args = parser.parse_args()
    if args.mixed:
        with tempfile.TemporaryDirectory() as tmp:
            mixed(Path(tmp))
        return
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
