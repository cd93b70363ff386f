"""``aavs predict``: many videos into ``OUT/<name>/``, in this process or as a Ray Data pipeline, and
the summary of what became of each."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aavs.datasets.atomic import atomic_dir
from aavs.datasets.errors import InputError
from aavs.datasets.video import probe
from aavs.orchestrator.predict.jobs import Outcome, ProgressView, VideoJob, failed, plan_jobs
from aavs.orchestrator.predict.models import Models, ModelSource
from aavs.orchestrator.predict.outputs import TIMELINE, finish_video
from aavs.orchestrator.predict.ray_pipeline import run_ray
from aavs.orchestrator.predict.steps import decode_rows, embed_row, predict_row, write_row

log = logging.getLogger(__name__)


def predict_videos(
    inputs: Iterable[str | Path],
    out: str | Path,
    source: ModelSource,
    overwrite: bool = False,
    use_ray: bool = False,
    actors: int = 1,
    gpus_per_actor: float = 0,
    recursive: bool = True,
    overlay_height: int | None = 0,
) -> dict[str, Any]:
    """``aavs predict``: every video of ``inputs`` into ``out/<name>/``; a summary (failures included).
    ``overlay_height``: overlay.mp4's height (0: the input's; None: no overlay)."""
    out = Path(out)
    started = time.perf_counter()
    jobs = plan_jobs(inputs, recursive, overlay_height)
    outcomes: list[Outcome] = []
    todo: list[VideoJob] = []
    seconds = 0.0  # of the videos to do, as their headers declare (the progress bar's total)
    for job in jobs:
        if (out / job.name / TIMELINE).is_file() and not overwrite:
            log.info("%s: %s already holds its results, skipped (--overwrite to redo)", job.path, out / job.name)
            outcomes.append(Outcome(job, "skipped"))
            continue
        try:
            job.info = probe(job.path)
            todo.append(job)
            seconds += job.info.seconds or 0
        except InputError as err:
            outcomes.append(failed(job, err))
    if todo:
        with ProgressView(len(todo), seconds) as view:
            if use_ray:
                outcomes += run_ray(todo, out, source, view, actors=actors, gpus_per_actor=gpus_per_actor)
            else:
                outcomes += run_local(todo, out, source, view)
    return _summary(outcomes, out, time.perf_counter() - started)


def _summary(outcomes: list[Outcome], out: Path, wall: float) -> dict[str, Any]:
    order = {o.job.name: o for o in outcomes}
    videos = [order[name].as_dict(out) for name in sorted(order)]
    counts = {status: sum(v["status"] == status for v in videos) for status in ("done", "skipped", "failed")}
    seconds = sum(v.get("seconds", 0) for v in videos)
    return {
        "out": str(out),
        "videos": videos,
        **counts,
        "seconds": seconds,
        "wall_s": round(wall, 3),
        "video_seconds_per_second": round(seconds / wall, 3) if wall > 0 else None,
    }


def run_local(jobs: list[VideoJob], out: Path, source: ModelSource, view: ProgressView) -> list[Outcome]:
    """One process: each video's windows through the steps, one after the other; a video's overlay is
    encoded (and its folder committed) in a second thread while the next video decodes and predicts.
    The videos with the most overlay work (pixels x frames) go first, so that the overlay left to
    encode once the last video is predicted is a small one."""
    models = Models(source)
    embedder = models.embedder()
    outcomes = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aavs-overlay") as finisher:
        finishing: list[Future[Outcome]] = []
        for job in sorted(jobs, key=_overlay_work, reverse=True):
            stack = contextlib.ExitStack()
            try:
                folder = stack.enter_context(atomic_dir(out / job.name))
                seconds = 0
                for row in decode_rows(
                    {"path": str(job.path), "name": job.name, "folder": str(folder)}, models.image_size
                ):
                    if row["error"]:
                        raise InputError(row["error"])
                    n = job.add(write_row(predict_row(embed_row(row, embedder), models)))
                    seconds += n
                    view.second(n)
            except BaseException as err:
                stack.__exit__(type(err), err, err.__traceback__)  # the temporary folder goes
                if not isinstance(err, InputError):
                    raise
                outcomes.append(failed(job, err))
                view.video()
                continue
            finishing.append(finisher.submit(_finish, job, folder, stack, models, seconds, view))
        outcomes += [future.result() for future in finishing]
    return outcomes


def _overlay_work(job: VideoJob) -> float:
    """What a video's overlay costs, roughly: its pixels x its frames (as its header says); 0 when
    none is made or the header does not tell."""
    info = job.info
    if job.overlay_height is None or info is None:
        return 0.0
    return info.width * info.height * (info.fps or 1) * (info.seconds or 0)


def _finish(
    job: VideoJob, folder: Path, stack: contextlib.ExitStack, models: Models, seconds: int, view: ProgressView
) -> Outcome:
    """A predicted video's overlay and timeline, then its folder renamed into place (closing ``stack``)."""
    try:
        with stack:
            job.timings.update(finish_video(job, folder, models.class_names, models.binary, models.describe()))
        return Outcome(job, "done", seconds=seconds)
    except InputError as err:
        return failed(job, err)
    finally:
        view.video()
