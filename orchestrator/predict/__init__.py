"""``aavs predict``: sounding-object masks for any video, from our checkpoints or an experiment's best.

Stepping Stones at inference: stage one (a binary network) predicts the sounding mask of every second,
stage two (the semantic network) takes it as its prior and names the class. One video is a stream of
windows of the training clips' length (:mod:`aavs.datasets.video`); each window goes through the same
steps, in one process or as a Ray Data pipeline (``use_ray=True``)::

    decode (CPU)  ->  audio embedding (CPU, cached)  ->  prediction (actor pool)  ->  mask writing (CPU)
    then per video: overlay.mp4 + timeline.json, and the folder is renamed into place

Outputs under ``OUT/<video name>/``: ``masks/<second>.png`` (the files ``aavs evaluate --save-masks``
writes: grayscale 0/255 for a binary network, AVSBench palette colours for the semantic one),
``overlay.mp4`` (the video at its own frame rate, each second's mask blended in and a legend of the
classes present) and ``timeline.json`` (per second: the sounding classes with their pixel share and
mean score). A folder is written under a temporary name and renamed when complete, so an interrupted or
failed video leaves nothing behind; a video whose folder exists is skipped unless ``overwrite``.

The modules, in the order a window meets them:

- :mod:`.models`: where the networks come from (:class:`ModelSource`) and, loaded, one window's prediction
  (:class:`Models`);
- :mod:`.steps`: the per-window steps, as rows (decode, audio, model, write);
- :mod:`.outputs` and :mod:`.overlay`: a finished video's ``timeline.json`` and ``overlay.mp4``;
- :mod:`.jobs`: one job and outcome per video, the progress bars;
- :mod:`.run`: :func:`predict_videos`, in this process; :mod:`.ray_pipeline`: the same as Ray Data;
- :mod:`.notebook`: :func:`predict_video`, one video in memory.
"""

from __future__ import annotations

from aavs.orchestrator.predict.jobs import STAGES, Outcome, ProgressView, VideoJob, plan_jobs
from aavs.orchestrator.predict.models import Models, ModelSource, experiment_source, load_models, model_source
from aavs.orchestrator.predict.notebook import VideoPrediction, predict_video
from aavs.orchestrator.predict.outputs import FRAME_INSTANT, MASKS, OVERLAY, TIMELINE, finish_video, timeline_document
from aavs.orchestrator.predict.overlay import OVERLAY_ALPHA, OVERLAY_X264, overlay_frames, write_overlay
from aavs.orchestrator.predict.run import predict_videos
from aavs.orchestrator.predict.steps import decode_rows, embed_row, predict_row, write_row

__all__ = [
    "FRAME_INSTANT",
    "MASKS",
    "OVERLAY",
    "OVERLAY_ALPHA",
    "OVERLAY_X264",
    "STAGES",
    "TIMELINE",
    "ModelSource",
    "Models",
    "Outcome",
    "ProgressView",
    "VideoJob",
    "VideoPrediction",
    "decode_rows",
    "embed_row",
    "experiment_source",
    "finish_video",
    "load_models",
    "model_source",
    "overlay_frames",
    "plan_jobs",
    "predict_video",
    "predict_videos",
    "predict_row",
    "timeline_document",
    "write_overlay",
    "write_row",
]
