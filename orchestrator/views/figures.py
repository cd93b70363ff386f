"""``results/<name>/report/``: learning curves, per-class IoU and sample predictions as PNG files.

Written at the end of each stage of ``aavs run`` and by ``aavs report``. For each stage::

    report/<stage>/curves.png        val mIoU per epoch, one line per trial (the best one bold; the
                                     dotted line marks where phase B starts)
    report/<stage>/per_class.png     AVSS only: the best checkpoint's test IoU per class present,
                                     named and coloured as the data's label2idx.json and palette
    report/<stage>/samples.png       a few val videos: frame, ground truth, prediction (and, in a
                                     stage with a prior, stage one's mask it was given)
    report/<stage>/predictions.json  per-class IoU and F of every class (with their names), the frames shown, and the
                                     sha256 of the checkpoint they came from

The curves come from the leaderboard. The other pictures need the best checkpoint's predictions (one
pass over the test split for AVSS, a few val videos), which run wherever the caller's ``call`` runs
them (in this process, or a Ray task with a worker's resources); ``predictions.json`` records the
checkpoint, so they are computed once per checkpoint however often the report is written.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aavs.datasets import atomic
from aavs.datasets.tasks import get_task
from aavs.orchestrator import results
from aavs.orchestrator.views.leaderboard import load_leaderboard

log = logging.getLogger(__name__)

REPORT = "report"
DPI = 100
CURVES_PX = (800, 450)
PER_CLASS_PX = (1000, 450)
CELL_PX = 224  # one image of the samples grid (the mask size)
HEADER_PX = 28  # the column titles above the grid
SAMPLE_VIDEOS = 4


def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def write_report(results_dir: str | Path, call: Callable[..., Any] = _direct, videos: int = SAMPLE_VIDEOS) -> Path:
    """Write (or bring up to date) ``results_dir/report``; returns its path.

    ``call(fn, *args)`` runs the prediction pass of a stage's best checkpoint (default: here).
    """
    results_dir = Path(results_dir)
    board = load_leaderboard(results_dir)
    model = results.require_spec(results_dir).spec["model"]
    out = results_dir / REPORT
    for stage in board["stages"]:
        if not stage["trials"]:
            continue
        folder = out / stage["name"]
        _save(folder / "curves.png", curves_figure(stage))
        best = stage["best"]
        if best is None or _current(folder, best["checkpoint_sha256"], videos, stage["task"]):
            continue
        prior = (stage["prior_from"] or {}).get("masks")
        log.info("report: predictions of %s/%s for %s", stage["name"], best["trial_id"], folder)
        found = call(
            stage_predictions,
            best["checkpoint"],
            best["data_root"],
            stage["task"],
            prior,
            model.get("vggish"),
            model.get("vggish_pca"),
            str(results_dir / "cache"),
            videos,
        )
        title = f"{stage['name']} {best['trial_id']}"
        if found["per_class"] is not None:
            _save(folder / "per_class.png", per_class_figure(found["per_class"], title))
        _save(folder / "samples.png", samples_figure(found["samples"], stage["task"], title))
        results.write_predictions(
            folder,
            results.Predictions(
                checkpoint=best["checkpoint"],
                checkpoint_sha256=best["checkpoint_sha256"],
                videos=videos,
                per_class=found["per_class"],
                samples=[{"uid": s["uid"], "subset": s["subset"], "frame": s["frame"]} for s in found["samples"]],
            ),
        )
    log.info("report written to %s", out)
    return out


def _current(folder: Path, sha: str, videos: int, task: str) -> bool:
    """Whether the pictures of this checkpoint are there already."""
    done = results.read_predictions(folder)
    if done is None:
        return False
    pictures = ["samples.png"] + ([] if get_task(task).binary else ["per_class.png"])
    return done.checkpoint_sha256 == sha and done.videos == videos and all((folder / p).is_file() for p in pictures)


def _save(path: Path, figure: Any) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic.write_bytes(path, buffer.getvalue())


def _figure(width_px: int, height_px: int):
    # The object API with the Agg canvas: no pyplot state, safe beside a live view's thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


# ------------------------------------------------------------------------------- predictions
def stage_predictions(
    checkpoint: str,
    data_root: str,
    task: str,
    prior: str | None,
    vggish: str | None,
    vggish_pca: str | None,
    cache: str,
    videos: int,
) -> dict[str, Any]:
    """The best checkpoint's per-class test scores and class names (AVSS; the checkpoint's classes must
    be the data's) and ``videos`` val videos' predictions.

    Each sample is one frame of a video (its annotated frame with the most labelled pixels), as
    uint8 arrays: ``frame`` [224, 224, 3], ``truth`` and ``pred`` [224, 224] (0/1 for binary tasks,
    class indices for AVSS), ``prior`` [224, 224] 0..255 or None.
    """
    import torch

    from aavs.datasets.avsbench import AVSBenchDataset, read_class_map, read_frames
    from aavs.datasets.masks import read_binary_masks
    from aavs.models import registry
    from aavs.orchestrator.recipe.evaluation import accumulate, check_classes

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = registry.load(checkpoint)
    check_classes(model, checkpoint, data_root)
    model.to(device)
    common = {
        "image_size": model.config.image_size,
        "prior": prior,
        "vggish": vggish,
        "vggish_pca": vggish_pca,
        "cache_dir": cache,
    }
    per_class = None
    if get_task(task).semantic:
        metric = accumulate(model, AVSBenchDataset(data_root, task, "test", **common), task, device)
        iou, fscore = metric.per_class()
        per_class = {
            "classes": list(model.config.class_names),
            "iou": iou.tolist(),
            "fscore": fscore.tolist(),
            "present": (metric.count > 0).tolist(),
        }
    val = AVSBenchDataset(data_root, task, "val", cache_mb=0, **common)  # only a few videos are read
    picked = sorted({int(round(i)) for i in np.linspace(0, len(val) - 1, min(videos, len(val)))})
    samples = []

    def keep(record, pred: np.ndarray) -> None:
        truth = read_class_map(Path(data_root), record, range(record.num_frames))
        frame = max(record.annotated_frames, key=lambda i: (int((truth[i] > 0).sum()), -i))
        image = read_frames(Path(data_root), record, truth.shape[-1], [frame])[0]
        prior_mask = read_binary_masks(prior, record, [frame])[0] if prior else None
        samples.append(
            {
                "uid": record.uid,
                "subset": record.subset,
                "frame": frame,
                "frame_image": image,
                "truth": (truth[frame] > 0 if get_task(task).binary else truth[frame]).astype(np.uint8),
                "pred": pred[frame].astype(np.uint8),
                "prior": None if prior_mask is None else (255 * prior_mask).round().astype(np.uint8),
            }
        )

    accumulate(model, val, task, device, videos=picked, on_video=keep)
    return {"per_class": per_class, "samples": samples}


# ------------------------------------------------------------------------------------ figures
def curves_figure(stage: dict[str, Any]):
    """val mIoU (%) per epoch of every trial of a leaderboard stage."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(*CURVES_PX)
    ax = figure.add_subplot()
    phase_b = None
    for trial in sorted(stage["trials"], key=lambda t: t["trial_id"]):
        history = trial["history"]
        epochs = [e + 1 for e in history["epoch"]]
        values = [np.nan if v is None else 100 * v for v in history["val/miou"]]
        params = " ".join(
            f"{k}={trial['params'][k]:.3g}"
            if isinstance(trial["params"].get(k), float)
            else f"{k}={trial['params'].get(k)}"
            for k in stage["searched"]
        )
        ax.plot(
            epochs,
            values,
            marker="o",
            markersize=3,
            linewidth=2.8 if trial["leader"] else 1.2,
            label=f"{trial['trial_id']} {params}".strip() + (" (best)" if trial["leader"] else ""),
        )
        starts = [e for e, p in zip(epochs, history["phase"]) if p == "B"]
        if starts and phase_b is None:
            phase_b = starts[0]
    if phase_b is not None:
        ax.axvline(phase_b - 0.5, color="grey", linestyle=":", linewidth=1, label="phase B starts")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"{stage['name']} ({stage['task']}): val mIoU per epoch")
    ax.grid(alpha=0.3)
    if stage["trials"]:
        ax.legend(fontsize=7, ncol=2 if len(stage["trials"]) > 6 else 1, loc="best")
    figure.tight_layout()
    return figure


def per_class_figure(per_class: dict[str, list], title: str):
    """Test IoU (%) of each class present in the test split (ground truth or prediction), best first,
    labelled with the class names and drawn in their palette colours."""
    from aavs.datasets.palette import palette

    figure = _figure(*PER_CLASS_PX)
    ax = figure.add_subplot()
    iou = np.asarray(per_class["iou"])
    present = np.flatnonzero(per_class["present"]).tolist()
    order = sorted(present, key=lambda c: (-iou[c], c))
    colours = palette(len(iou))[order] / 255.0 if order else []
    ax.bar(range(len(order)), 100 * iou[order], color=colours, edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([per_class["classes"][c] for c in order], rotation=90, fontsize=7)
    ax.set_ylabel("test IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        f"{title}: test IoU per class (mIoU {100 * iou.mean():.2f} over all {len(iou)} classes, "
        f"{len(present)} present)",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def samples_figure(samples: list[dict[str, Any]], task: str, title: str):
    """One row per sample: frame, ground truth, prediction (and prior), ``CELL_PX`` square each."""
    from aavs.datasets.palette import encode_class_map

    columns = ["frame", "ground truth", "prediction"] + (
        ["stage-one prior"] if samples and samples[0]["prior"] is not None else []
    )
    rows = max(len(samples), 1)
    width, height = len(columns) * CELL_PX, rows * CELL_PX + HEADER_PX
    figure = _figure(width, height)
    figure.text(0.5, 1 - 0.3 * HEADER_PX / height, title, ha="center", va="center", fontsize=8, weight="bold")
    for j, name in enumerate(columns):
        figure.text((j + 0.5) / len(columns), 1 - 0.75 * HEADER_PX / height, name, ha="center", va="center", fontsize=8)

    def mask_image(mask: np.ndarray) -> np.ndarray:
        if get_task(task).binary:
            return np.repeat((255 * (mask > 0)).astype(np.uint8)[..., None], 3, axis=-1)
        return encode_class_map(mask)

    for i, sample in enumerate(samples):
        images = [sample["frame_image"], mask_image(sample["truth"]), mask_image(sample["pred"])]
        if len(columns) == 4:
            images.append(np.repeat(sample["prior"][..., None], 3, axis=-1))
        for j, image in enumerate(images):
            ax = figure.add_axes(
                (j / len(columns), (rows - 1 - i) * CELL_PX / height, 1 / len(columns), CELL_PX / height)
            )
            ax.imshow(image, interpolation="nearest", aspect="auto")
            ax.set_axis_off()
            if j == 0:
                ax.text(
                    4,
                    4,
                    f"{sample['subset']}/{sample['uid']} #{sample['frame']}",
                    fontsize=6,
                    color="white",
                    va="top",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},
                )
    return figure
