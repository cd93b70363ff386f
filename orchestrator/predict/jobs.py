"""The bookkeeping of a run over many videos: one :class:`VideoJob` per input, its :class:`Outcome`,
and the progress bars."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from aavs.datasets.errors import InputError
from aavs.datasets.video import VideoInfo, find_videos

log = logging.getLogger(__name__)

# The steps whose seconds each video's summary reports (``timings``).
STAGES = ("decode", "audio", "model", "write", "overlay")


@dataclass
class VideoJob:
    """One input video: where its outputs go, and what has come back of it so far."""

    path: Path
    name: str
    info: VideoInfo | None = None
    sounding: dict[int, list[list[dict[str, Any]]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    windows: int | None = None
    overlay_height: int | None = 0  # overlay.mp4's height: 0 the input's, None no overlay (--no-overlay)

    def add(self, row: dict[str, Any]) -> int:
        """Record a written window; returns its seconds."""
        self.sounding[int(row["window"])] = json.loads(row["sounding"])
        for stage in ("decode", "audio", "model", "write"):
            self.timings[stage] += float(row[f"t_{stage}"])
        return int(row["seconds"])

    def timeline(self) -> list[dict[str, Any]]:
        seconds = [s for w in sorted(self.sounding) for s in self.sounding[w]]
        return [{"second": t, "sounding": classes} for t, classes in enumerate(seconds)]


def plan_jobs(inputs: Iterable[str | Path], recursive: bool = True, overlay_height: int | None = 0) -> list[VideoJob]:
    """The videos of ``inputs`` with their output names (:func:`~aavs.datasets.video.find_videos`)."""
    jobs = [VideoJob(path, name, overlay_height=overlay_height) for path, name in find_videos(inputs, recursive)]
    if not jobs:
        raise InputError(f"no video files in {', '.join(map(str, inputs))} (looked for .mp4 .mkv .webm .mov .avi)")
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.name in seen:
            raise InputError(f"{job.path}: same output name {job.name!r} as {seen[job.name]}; rename one of them")
        seen[job.name] = job.path
    return jobs


@dataclass
class Outcome:
    """What happened to one video, for the summary."""

    job: VideoJob
    status: str  # done | skipped | failed
    error: str = ""
    seconds: int = 0

    def as_dict(self, out: Path) -> dict[str, Any]:
        item: dict[str, Any] = {
            "video": str(self.job.path),
            "name": self.job.name,
            "status": self.status,
            "folder": str(out / self.job.name),
        }
        if self.status == "done":
            item.update(
                seconds=self.seconds,
                timings={k: round(v, 3) for k, v in self.job.timings.items()},
                sounding_classes=sorted({c["name"] for s in self.job.timeline() for c in s["sounding"]}),
            )
        if self.error:
            item["error"] = self.error
        return item


def failed(job: VideoJob, err: Exception | str) -> Outcome:
    """A failed video's outcome, its message logged."""
    message = str(err)
    log.error("%s", message)
    return Outcome(job, "failed", error=message)


class ProgressView:
    """Videos and seconds done, on stderr (rich)."""

    def __init__(self, videos: int, seconds: float) -> None:
        console = Console(stderr=True)  # a bar on a terminal; elsewhere it would only leave empty lines
        self.progress = Progress(console=console, transient=True, disable=not console.is_terminal)
        self.videos = self.progress.add_task("videos", total=videos)
        self.seconds = self.progress.add_task("seconds of video", total=seconds or None)

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def second(self, n: int) -> None:
        self.progress.advance(self.seconds, n)

    def video(self) -> None:
        self.progress.advance(self.videos)
