"""``aavs predict``: sounding-object masks for any video, from our checkpoints or an experiment's best.

Stepping Stones at inference: stage one (a binary network) predicts the sounding mask of every second,
stage two (the semantic network) takes it as its prior and names the class. One video is a stream of
windows of the training clips' length (:mod:`aavs.datasets.video`); each window goes through the same
steps, in one process or as a Ray Data pipeline (``ray=True``)::

    decode (CPU)  ->  audio embedding (CPU, cached)  ->  prediction (actor pool)  ->  mask writing (CPU)
    then per video: overlay.mp4 + timeline.json, and the folder is renamed into place

Outputs under ``OUT/<video name>/``: ``masks/<second>.png`` (the files ``aavs evaluate --save-masks``
writes: grayscale 0/255 for a binary network, AVSBench palette colours for the semantic one),
``overlay.mp4`` (the video at its own frame rate, each second's mask blended in and a legend of the
classes present) and ``timeline.json`` (per second: the sounding classes with their pixel share and
mean score). A folder is written under a temporary name and renamed when complete, so an interrupted or
failed video leaves nothing behind; a video whose folder exists is skipped unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from aavs.datasets.atomic import atomic_dir, write_bytes, write_json
from aavs.datasets.errors import InputError
from aavs.datasets.masks import binary_mask_png, class_mask_png
from aavs.datasets.palette import palette
from aavs.datasets.tasks import get_task
from aavs.datasets.transforms import MASK_SIZE
from aavs.datasets.video import (
    WINDOW_SECONDS,
    VideoInfo,
    WindowEmbedder,
    find_videos,
    iter_timed_frames,
    iter_windows,
    probe,
    write_video,
)
from aavs.models.registry import DEFAULT_TYPE
from aavs.orchestrator import results

log = logging.getLogger(__name__)

TIMELINE = "timeline.json"
OVERLAY = "overlay.mp4"
MASKS = "masks"
OVERLAY_ALPHA = 0.5
# x264 with a fixed thread count is deterministic, so the same masks give the same overlay.mp4 bytes.
OVERLAY_X264 = {"crf": "20", "preset": "veryfast", "threads": "2"}
FRAME_INSTANT = "the frame on screen just before t + 0.5 s (ffmpeg fps=1)"
STAGES = ("decode", "audio", "model", "write", "overlay")


# -------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSource:
    """Where the networks and the audio front end come from; picklable, so Ray actors load their own.

    ``checkpoint`` predicts the masks; ``prior_checkpoint`` (a binary, stage-one network) feeds a semantic
    ``checkpoint`` its sounding masks; both are our checkpoint folders (``aavs import-checkpoint`` converts a
    release). ``base``: the Mask2Former folder, for checkpoints of trainable weights whose base moved.
    ``model_type``: the registered model type both checkpoints are (an experiment's ``model.type``).
    """

    checkpoint: str
    prior_checkpoint: str | None = None
    base: str | None = None
    model_type: str = DEFAULT_TYPE
    vggish: str | None = None
    vggish_pca: str | None = None
    cache_dir: str | None = None


def experiment_source(results_dir: str | Path, stage: str | None = None, **audio: str | None) -> ModelSource:
    """The best checkpoints of ``results_dir``: by default the last stage that takes a prior, fed by the
    stage its ``prior`` names; ``stage`` picks another. VGGish files and cache default to the
    experiment's (``audio`` overrides: vggish, vggish_pca, cache_dir)."""
    results_dir = Path(results_dir)
    spec_file = results_dir / results.SPEC_FILE
    record = results.read_spec(results_dir)
    if record is None:
        raise InputError(f"{spec_file}: missing (--experiment takes a results folder written by `aavs run`)")
    spec = record.spec
    try:
        stages = {s["name"]: s for s in spec["stages"]}
    except (KeyError, TypeError) as err:
        raise InputError(f"{spec_file}: not an experiment description ({err})") from None
    if stage is None:
        stage = next((s["name"] for s in reversed(spec["stages"]) if s.get("prior")), spec["stages"][-1]["name"])
    if stage not in stages:
        raise InputError(f"--stage {stage}: {results_dir} has the stages {', '.join(stages)}")
    prior = stages[stage].get("prior")
    if prior and stages[prior].get("prior"):
        raise InputError(
            f"{spec_file}: stage {prior} (the prior of {stage}) takes a prior itself; only two stages chain"
        )
    model = spec.get("model", {})
    return ModelSource(
        checkpoint=_best_checkpoint(results_dir, stage),
        prior_checkpoint=_best_checkpoint(results_dir, prior) if prior else None,
        model_type=model.get("type", DEFAULT_TYPE),
        vggish=audio.get("vggish") or model.get("vggish"),
        vggish_pca=audio.get("vggish_pca") or model.get("vggish_pca"),
        cache_dir=audio.get("cache_dir") or str(results_dir / "cache"),
    )


def _best_checkpoint(results_dir: Path, stage: str) -> str:
    best = results.read_best(results_dir / stage)  # a file that is not a best.json: InputError naming it
    if best is None:
        raise InputError(
            f"{results_dir / stage / results.BEST_FILE}: missing (stage {stage} has not finished: "
            f"`aavs resume {results_dir}`)"
        )
    return best.checkpoint


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Models:
    """The loaded networks of a :class:`ModelSource`, ready to predict windows."""

    def __init__(self, source: ModelSource, device: torch.device | str | None = None) -> None:
        from aavs.models import registry

        self.source = source
        self.device = torch.device(device) if device is not None else _device()
        load = functools.partial(registry.load, model_type=source.model_type, base=source.base)
        self.main = load(source.checkpoint).to(self.device).eval()
        self.prior = None
        if source.prior_checkpoint is not None:
            self.prior = load(source.prior_checkpoint).to(self.device).eval()
        self._check()
        self.binary = get_task(self.main.config.task).binary
        self.class_names = self.main.config.class_names

    def _check(self) -> None:
        src = self.source
        if self.prior is not None:
            if get_task(self.prior.config.task).semantic:
                raise InputError(
                    f"{src.prior_checkpoint}: a prior comes from a binary (stage-one) network, "
                    f"this one is {self.prior.config.task}"
                )
            if not get_task(self.main.config.task).takes_prior:
                raise InputError(
                    f"{src.checkpoint}: a {self.main.config.task} network takes no prior "
                    "(only the semantic avss network does)"
                )
            if self.prior.config.image_size != self.main.config.image_size:
                raise InputError(
                    f"{src.prior_checkpoint}: input size {self.prior.config.image_size}, but "
                    f"{src.checkpoint} takes {self.main.config.image_size}; both must match"
                )
        elif get_task(self.main.config.task).takes_prior:
            log.warning("%s: a stage-two network without a prior checkpoint runs as the stage-one AAVS", src.checkpoint)

    @property
    def image_size(self) -> int:
        return self.main.config.image_size

    def describe(self) -> dict[str, Any]:
        return {
            "checkpoint": self.source.checkpoint,
            "task": self.main.config.task,
            "prior_checkpoint": self.source.prior_checkpoint,
        }

    def embedder(self) -> WindowEmbedder:
        return WindowEmbedder(self.source.vggish, self.source.vggish_pca, self.source.cache_dir)

    @torch.no_grad()
    def predict(self, frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
        """One window: uint8 masks ``[n, 224, 224]`` (binary 0/1 or class indices) and per second the
        sounding classes (``index``, ``name``, ``share`` of the pixels, mean ``score`` over them).

        The whole window is one batch, as evaluation runs a whole clip, so a clip of training length
        gives exactly evaluation's masks."""
        prior = None
        if self.prior is not None:
            stage_one = self.prior.predict(frames, audio)
            prior = (stage_one[:, 1] > stage_one[:, 0]).float()  # the 0/255 mask file read back, / 255
        scores = self.main.predict(frames, audio, prior=prior)  # [n, C, 224, 224]
        if self.binary:
            masks = scores[:, 1] > scores[:, 0]
            confidence = torch.sigmoid(2 * scores[:, 1] - scores[:, 0])
            per_class = torch.stack([1 - confidence, confidence], dim=1)
        else:
            masks, per_class = scores.argmax(1), scores
        masks_np = masks.to(torch.uint8).numpy()
        return masks_np, [self._sounding(m, s) for m, s in zip(masks_np, per_class.numpy())]

    def _sounding(self, mask: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        classes, counts = np.unique(mask, return_counts=True)
        found = [
            {
                "index": int(c),
                "name": self.class_names[c],
                "share": round(float(n) / mask.size, 6),
                "score": round(float(scores[c][mask == c].mean()), 6),
            }
            for c, n in zip(classes, counts)
            if c != 0
        ]
        return sorted(found, key=lambda item: (-item["share"], item["index"]))


def load_models(
    checkpoint: str | Path | None = None,
    prior_checkpoint: str | Path | None = None,
    experiment: str | Path | None = None,
    stage: str | None = None,
    base: str | None = None,
    vggish: str | None = None,
    vggish_pca: str | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device | str | None = None,
) -> Models:
    """Networks for :func:`predict_video`: ``experiment`` (a results folder) or ``checkpoint`` [+ ``prior_checkpoint``]."""
    return Models(
        model_source(checkpoint, prior_checkpoint, experiment, stage, base, vggish, vggish_pca, cache_dir), device
    )


def model_source(
    checkpoint: str | Path | None = None,
    prior_checkpoint: str | Path | None = None,
    experiment: str | Path | None = None,
    stage: str | None = None,
    base: str | None = None,
    vggish: str | None = None,
    vggish_pca: str | None = None,
    cache_dir: str | Path | None = None,
) -> ModelSource:
    cache = str(cache_dir) if cache_dir is not None else None
    if (experiment is None) == (checkpoint is None):
        raise InputError("give either an experiment results folder (--experiment) or a checkpoint (--checkpoint)")
    if experiment is not None:
        if prior_checkpoint is not None:
            raise InputError("--prior-checkpoint goes with --checkpoint; an experiment names its own prior stage")
        return experiment_source(experiment, stage, vggish=vggish, vggish_pca=vggish_pca, cache_dir=cache)
    if stage is not None:
        raise InputError("--stage picks a stage of an --experiment")
    return ModelSource(
        str(checkpoint),
        str(prior_checkpoint) if prior_checkpoint else None,
        base=base,
        vggish=vggish,
        vggish_pca=vggish_pca,
        cache_dir=cache,
    )


# ----------------------------------------------------------------------------- per-window steps
# Each step takes and returns a row (a dict), the unit of the Ray Data pipeline; the local run chains
# the same functions. Every row of a step has the same keys (Ray Data builds tables of them): a row
# carrying an ``error`` goes through the later steps with empty values.
def decode_rows(video: dict[str, Any], image_size: int) -> Iterator[dict[str, Any]]:
    """A video's windows as rows (frames, audio samples; none: empty); a decoding failure ends them
    with an error row."""
    clock = time.perf_counter()
    try:
        for window in iter_windows(video["path"], image_size):
            samples = np.zeros(0) if window.samples is None else window.samples
            yield {
                **video,
                "window": window.index,
                "start": window.start,
                "frames": window.frames,
                "samples": samples,
                "rate": window.rate,
                "error": "",
                "t_decode": time.perf_counter() - clock,
            }
            clock = time.perf_counter()
    except InputError as err:
        yield {
            **video,
            "window": -1,
            "start": 0,
            "frames": np.zeros((0, image_size, image_size, 3), np.uint8),
            "samples": np.zeros(0),
            "rate": 0,
            "error": str(err),
            "t_decode": 0.0,
        }


def _step(row: dict[str, Any], drop: tuple[str, ...], add: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in row.items() if k not in drop}, **add}


def embed_row(row: dict[str, Any], embedder: WindowEmbedder) -> dict[str, Any]:
    """Replaces the samples by ``audio`` ``[n, 128]``, the window's VGGish embeddings (none: silence)."""
    clock = time.perf_counter()
    samples = row["samples"] if row["samples"].size else None
    audio = np.zeros((0, 128), np.float32) if row["error"] else embedder.embed(samples, row["rate"], len(row["frames"]))
    return _step(row, ("samples",), {"audio": audio, "t_audio": time.perf_counter() - clock})


def predict_row(row: dict[str, Any], models: Models) -> dict[str, Any]:
    """Replaces frames and audio by the window's ``masks`` and per-second ``sounding`` classes (JSON)."""
    clock = time.perf_counter()
    masks, sounding = (
        (np.zeros((0, MASK_SIZE, MASK_SIZE), np.uint8), [])
        if row["error"]
        else models.predict(row["frames"], row["audio"])
    )
    return _step(
        row,
        ("frames", "audio"),
        {
            "masks": masks,
            "sounding": json.dumps(sounding),
            "binary": models.binary,
            "t_model": time.perf_counter() - clock,
        },
    )


def write_row(row: dict[str, Any]) -> dict[str, Any]:
    """Writes the window's masks into the video's (temporary) folder; keeps only the timeline."""
    clock = time.perf_counter()
    encode = binary_mask_png if row["binary"] else class_mask_png
    for i, mask in enumerate(row["masks"]):
        write_bytes(Path(row["folder"]) / MASKS / f"{row['start'] + i}.png", encode(mask))
    return _step(row, ("masks",), {"seconds": len(row["masks"]), "t_write": time.perf_counter() - clock})


# ------------------------------------------------------------------------------------ per video
@dataclass
class VideoJob:
    """One input video: where its outputs go, and what has come back of it so far."""

    path: Path
    name: str
    info: VideoInfo | None = None
    sounding: dict[int, list[list[dict[str, Any]]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    windows: int | None = None

    def add(self, row: dict[str, Any]) -> int:
        """Record a written window; returns its seconds."""
        self.sounding[int(row["window"])] = json.loads(row["sounding"])
        for stage in ("decode", "audio", "model", "write"):
            self.timings[stage] += float(row[f"t_{stage}"])
        return int(row["seconds"])

    def timeline(self) -> list[dict[str, Any]]:
        seconds = [s for w in sorted(self.sounding) for s in self.sounding[w]]
        return [{"second": t, "sounding": classes} for t, classes in enumerate(seconds)]


def timeline_document(job: VideoJob, models: dict[str, Any]) -> dict[str, Any]:
    info = job.info
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
    """overlay.mp4 and timeline.json of a video whose masks are written; returns the overlay's time."""
    clock = time.perf_counter()
    timeline = job.timeline()
    write_overlay(job.path, folder / MASKS, folder / OVERLAY, timeline, class_names, binary)
    write_json(folder / TIMELINE, timeline_document(job, models))
    return {"overlay": time.perf_counter() - clock}


# --------------------------------------------------------------------------------------- overlay
def _mask_layer(path: Path, binary: bool, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(colours ``[H, W, 3]`` uint8, sounding ``[H, W]`` bool) of one mask file at the frame's size (nearest)."""
    with Image.open(path) as image:
        image = image.resize(size, Image.NEAREST)
        if binary:
            sounding = np.asarray(image) > 0
            colours = np.broadcast_to(palette(2)[1], (*sounding.shape, 3))
        else:
            colours = np.asarray(image.convert("RGB"))
            sounding = colours.any(axis=-1)
    return colours, sounding


def _font(height: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=max(10, height // 28))
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _legend(layer: Image.Image, classes: list[dict[str, Any]], colours: np.ndarray) -> None:
    """Colour swatches and names of the sounding classes, top left, on a dark box (drawn on an RGBA layer)."""
    if not classes:
        return
    draw = ImageDraw.Draw(layer)
    font = _font(layer.height)
    line = int(font.size * 1.3) if hasattr(font, "size") else 14
    width = max(draw.textlength(c["name"], font=font) for c in classes) + line + 12
    box = Image.new("RGBA", layer.size)
    ImageDraw.Draw(box).rectangle((4, 4, 4 + width, 8 + line * len(classes)), fill=(0, 0, 0, 150))
    layer.alpha_composite(box)
    for i, item in enumerate(classes):
        y = 6 + i * line
        draw.rectangle((8, y + 2, 8 + line - 6, y + line - 4), fill=(*(int(v) for v in colours[item["index"]]), 255))
        draw.text((8 + line, y), item["name"], fill=(255, 255, 255, 255), font=font)


class _Blend:
    """One second's overlay as integer alpha blending: ``out = (frame * (256 - a) + term) >> 8``, with
    the mask's colours at OVERLAY_ALPHA and the legend on top, computed once per second."""

    def __init__(
        self, mask_path: Path, binary: bool, size: tuple[int, int], classes: list[dict[str, Any]], colours: np.ndarray
    ) -> None:
        mask_rgb, sounding = _mask_layer(mask_path, binary, size)
        alpha = np.where(sounding, round(255 * OVERLAY_ALPHA), 0).astype(np.uint8)
        layer = Image.fromarray(np.dstack([mask_rgb, alpha]), mode="RGBA")
        _legend(layer, classes, colours)
        rgba = np.asarray(layer, dtype=np.uint16)
        a = rgba[..., 3:] + (rgba[..., 3:] > 0)  # 0..255 -> 0..256
        self.keep = 256 - a
        self.term = rgba[..., :3] * a

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return ((rgb * self.keep + self.term) >> 8).astype(np.uint8)


def overlay_frames(
    video: Path, masks: Path, timeline: list[dict[str, Any]], class_names: tuple[str, ...], binary: bool
) -> Iterator[np.ndarray]:
    """Every frame of the video (even width and height, as H.264 needs) with its second's mask blended
    in and a legend; frames after the last predicted second keep that second's mask."""
    colours = palette(max(len(class_names), 2))
    current: tuple[int, _Blend | None] = (-1, None)
    for start, _end, frame in iter_timed_frames(video):
        rgb = frame.to_ndarray(format="rgb24")
        rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
        second = min(max(int(start), 0), len(timeline) - 1)
        if current[0] != second:
            blend = _Blend(
                masks / f"{second}.png", binary, (rgb.shape[1], rgb.shape[0]), timeline[second]["sounding"], colours
            )
            current = (second, blend)
        yield current[1](rgb)


def write_overlay(
    video: Path, masks: Path, out: Path, timeline: list[dict[str, Any]], class_names: tuple[str, ...], binary: bool
) -> None:
    fps = probe(video).fps or 1
    write_video(out, overlay_frames(video, masks, timeline, class_names, binary), rate=_rate(fps), options=OVERLAY_X264)


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


# ------------------------------------------------------------------------------------ notebooks
@dataclass
class VideoPrediction:
    """A whole video's prediction in memory: ``masks`` uint8 ``[T, 224, 224]`` (binary 0/1 or class
    indices), ``timeline`` per second (sounding classes with pixel share and mean score)."""

    path: Path
    masks: np.ndarray
    timeline: list[dict[str, Any]]
    class_names: tuple[str, ...]
    binary: bool
    has_audio: bool

    def colour_masks(self) -> np.ndarray:
        """``[T, 224, 224, 3]`` uint8 in the AVSBench palette (binary: the sounding class's colour)."""
        return palette(max(len(self.class_names), 2))[self.masks.astype(np.int64)]


def predict_video(path: str | Path, models: Models) -> VideoPrediction:
    """Predict one video in this process (no files written): the notebook entry point."""
    path = Path(path)
    info = probe(path)
    embedder = models.embedder()
    masks, sounding = [], []
    for row in decode_rows({"path": str(path)}, models.image_size):
        if row["error"]:
            raise InputError(row["error"])
        row = predict_row(embed_row(row, embedder), models)
        masks.append(row["masks"])
        sounding += json.loads(row["sounding"])
    return VideoPrediction(
        path,
        np.concatenate(masks),
        [{"second": t, "sounding": s} for t, s in enumerate(sounding)],
        models.class_names,
        models.binary,
        info.has_audio,
    )


# ------------------------------------------------------------------------------------ many videos
def plan_jobs(inputs: Iterable[str | Path]) -> list[VideoJob]:
    """The videos of ``inputs`` with their output names (the file name without suffix)."""
    jobs = [VideoJob(path, path.stem) for path in find_videos(inputs)]
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
        item = {
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


class ProgressView:
    """Videos and seconds done, on stderr (rich)."""

    def __init__(self, videos: int, seconds: float) -> None:
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)  # a bar on a terminal; elsewhere it would only leave empty lines
        self.progress = Progress(console=console, transient=True, disable=not console.is_terminal)
        self.videos = self.progress.add_task("videos", total=videos)
        self.seconds = self.progress.add_task("seconds of video", total=seconds or None)

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def second(self, n: int) -> None:
        self.progress.advance(self.seconds, n)

    def video(self) -> None:
        self.progress.advance(self.videos)


def predict_videos(
    inputs: Iterable[str | Path],
    out: str | Path,
    source: ModelSource,
    overwrite: bool = False,
    use_ray: bool = False,
    actors: int = 1,
    gpus_per_actor: float = 0,
) -> dict[str, Any]:
    """``aavs predict``: every video of ``inputs`` into ``out/<name>/``; a summary (failures included)."""
    out = Path(out)
    started = time.perf_counter()
    jobs = plan_jobs(inputs)
    outcomes: list[Outcome] = []
    todo = []
    for job in jobs:
        if (out / job.name / TIMELINE).is_file() and not overwrite:
            log.info("%s: %s already holds its results, skipped (--overwrite to redo)", job.path, out / job.name)
            outcomes.append(Outcome(job, "skipped"))
            continue
        try:
            job.info = probe(job.path)
            todo.append(job)
        except InputError as err:
            outcomes.append(_failed(job, err))
    if todo:
        run = _run_ray if use_ray else _run_local
        with ProgressView(len(todo), sum(j.info.seconds or 0 for j in todo)) as view:
            outcomes += run(todo, out, source, view, actors=actors, gpus_per_actor=gpus_per_actor)
    return _summary(outcomes, out, time.perf_counter() - started)


def _failed(job: VideoJob, err: Exception | str) -> Outcome:
    message = str(err)
    log.error("%s", message)
    return Outcome(job, "failed", error=message)


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


def _run_local(jobs: list[VideoJob], out: Path, source: ModelSource, view: ProgressView, **_: Any) -> list[Outcome]:
    """One process: each video's windows through the steps, one after the other."""
    models = Models(source)
    embedder = models.embedder()
    outcomes = []
    for job in jobs:
        try:
            with atomic_dir(out / job.name) as folder:
                seconds = 0
                for row in decode_rows(
                    {"path": str(job.path), "name": job.name, "folder": str(folder)}, models.image_size
                ):
                    if row["error"]:
                        raise InputError(row["error"])
                    n = job.add(write_row(predict_row(embed_row(row, embedder), models)))
                    seconds += n
                    view.second(n)
                job.timings.update(finish_video(job, folder, models.class_names, models.binary, models.describe()))
            outcomes.append(Outcome(job, "done", seconds=seconds))
        except InputError as err:
            outcomes.append(_failed(job, err))
        view.video()
    return outcomes


# ------------------------------------------------------------------------------------------ Ray
@functools.lru_cache(maxsize=2)
def _worker_embedder(source: ModelSource) -> WindowEmbedder:
    """One embedder per worker process: Ray reuses workers across tasks, so VGGish loads once each."""
    return WindowEmbedder(source.vggish, source.vggish_pca, source.cache_dir)


class _PredictStep:
    """Ray Data actor: the networks, loaded once per actor."""

    def __init__(self, source: ModelSource) -> None:
        self.models = Models(source)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return predict_row(row, self.models)


def _finish_remote(
    job: VideoJob, folder: str, class_names: tuple[str, ...], binary: bool, models: dict[str, Any]
) -> dict[str, float] | str:
    """Ray task: a video's overlay and timeline; an error message instead of raising (bad input)."""
    try:
        return finish_video(job, Path(folder), class_names, binary, models)
    except InputError as err:
        return str(err)


def _run_ray(
    jobs: list[VideoJob], out: Path, source: ModelSource, view: ProgressView, actors: int = 1, gpus_per_actor: float = 0
) -> list[Outcome]:
    """The same steps as a Ray Data pipeline: decode and embedding as CPU tasks, prediction in an actor
    pool, mask writing as CPU tasks as windows come; per video, the overlay as a task once its last
    window is written. Folders of failed videos are dropped after the pipeline has drained."""
    import ray

    if not ray.is_initialized():
        from aavs.orchestrator.ray_local import local_ray_kwargs

        ray.init(**local_ray_kwargs())  # on 127.0.0.1 only, unless RAY_ADDRESS names a cluster
    ray.data.DataContext.get_current().enable_progress_bars = False
    probe_models = Models(source, device="cpu")  # names, size and checks, here, before any worker starts
    finish = ray.remote(_finish_remote)
    with contextlib.ExitStack() as cleanup:
        folders = {job.name: _open_folder(cleanup, out / job.name) for job in jobs}
        by_name = {job.name: job for job in jobs}
        items = [{"path": str(j.path), "name": j.name, "folder": str(folders[j.name][1])} for j in jobs]
        size = probe_models.image_size
        ds = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .flat_map(lambda video: decode_rows(video, size))
            .map(lambda row: embed_row(row, _worker_embedder(source)))
            .map(_PredictStep, fn_constructor_kwargs={"source": source}, concurrency=actors, num_gpus=gpus_per_actor)
            .map(write_row)
        )
        errors: dict[str, str] = {}
        seconds: dict[str, int] = dict.fromkeys(by_name, 0)
        for row in ds.iter_rows():
            name = row["name"]
            if row["error"]:
                errors.setdefault(name, row["error"])
                continue
            n = by_name[name].add(row)
            seconds[name] += n
            view.second(n)
        pending = {
            name: finish.remote(
                job, str(folders[name][1]), probe_models.class_names, probe_models.binary, probe_models.describe()
            )
            for name, job in by_name.items()
            if name not in errors
        }
        outcomes = []
        for name, job in by_name.items():
            result = ray.get(pending[name]) if name in pending else errors[name]
            stack = folders[name][0]
            if isinstance(result, dict):
                job.timings.update(result)
                stack.close()  # renames the folder into place
                outcomes.append(Outcome(job, "done", seconds=seconds[name]))
            else:
                error = InputError(result)
                stack.__exit__(InputError, error, None)  # drops the temporary folder
                outcomes.append(_failed(job, result))
            view.video()
    return outcomes


def _open_folder(cleanup: contextlib.ExitStack, final: Path) -> tuple[contextlib.ExitStack, Path]:
    """A video's temporary folder (``atomic_dir``), committed by closing its own stack; the outer
    ``cleanup`` drops any left open (an interrupted run)."""
    stack = contextlib.ExitStack()
    folder = stack.enter_context(atomic_dir(final))
    cleanup.callback(lambda: stack.__exit__(RuntimeError, RuntimeError("interrupted"), None))
    return stack, folder
