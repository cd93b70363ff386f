"""A video's output folder once its masks are written: ``overlay.mp4`` and ``timeline.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aavs.datasets.atomic import write_json
from aavs.datasets.video import WINDOW_SECONDS
from aavs.orchestrator.predict.jobs import VideoJob
from aavs.orchestrator.predict.overlay import write_overlay

# The files of ``OUT/<video name>/``.
TIMELINE = "timeline.json"
OVERLAY = "overlay.mp4"
MASKS = "masks"
FRAME_INSTANT = "the frame on screen just before t + 0.5 s (ffmpeg fps=1)"


def timeline_document(job: VideoJob, models: dict[str, Any]) -> dict[str, Any]:
    """timeline.json: the video, the networks (``models``) and per second the sounding classes."""
    info = job.info
    assert info is not None, f"{job.path}: not probed"  # predict_videos probes every video it runs
    return {
        "video": str(job.path),
        "seconds": len(job.timeline()),
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "audio": "present" if info.has_audio else "no audio track: predicted as silence",
        "frame_of_second_t": FRAME_INSTANT,
        "window_seconds": WINDOW_SECONDS,
        "models": models,
        "timeline": job.timeline(),
    }


def finish_video(
    job: VideoJob, folder: Path, class_names: tuple[str, ...], binary: bool, models: dict[str, Any]
) -> dict[str, float]:
    """overlay.mp4 (unless the job asks for none) and timeline.json of a video whose masks are written;
    returns the overlay's time."""
    clock = time.perf_counter()
    timeline = job.timeline()
    if job.overlay_height is not None:
        write_overlay(job.path, folder / MASKS, folder / OVERLAY, timeline, class_names, binary, job.overlay_height)
    write_json(folder / TIMELINE, timeline_document(job, models))
    return {"overlay": time.perf_counter() - clock}
