"""``results/<name>/report/``: learning curves, per-class IoU and sample predictions as PNG files.

Written at the end of each stage of ``aavs run`` and by ``aavs report``. For each stage::

    report/<stage>/curves.png        val mIoU per epoch, one line per trial (the best one bold; the
                                     dotted line marks where phase B starts)
    report/<stage>/per_class.png     AVSS only: the best checkpoint's test IoU per class present,
                                     named and coloured as the data's label2idx.json and palette
    report/<stage>/samples.png       a few val videos: frame, ground truth, prediction (and, in a
                                     stage with a prior, stage one's mask it was given)
    report/<stage>/predictions.json  what the last two were drawn from: the per-class IoU and F of every
                                     class (with their names), the frames shown, and the sha256 of
                                     the checkpoint they came from

The curves come from the leaderboard. The other pictures draw what the stage's test evaluation left in
``<stage>/test/`` (aavs.orchestrator.recipe.test_outputs): the report runs no network. They are drawn
when those files are the stage's best checkpoint's, and again only when they change.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aavs.datasets import atomic
from aavs.datasets.palette import encode_class_map, palette
from aavs.datasets.tasks import get_task
from aavs.orchestrator import results
from aavs.orchestrator.views.board import load_leaderboard

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

REPORT = results.REPORT_DIR
DPI = 100
CURVES_PX = (800, 450)
PER_CLASS_PX = (1000, 450)
CELL_PX = 224  # one image of the samples grid (the mask size)
HEADER_PX = 28  # the column titles above the grid


def write_report(results_dir: str | Path) -> Path:
    """Write (or bring up to date) ``results_dir/report``; returns its path."""
    results_dir = Path(results_dir)
    board = load_leaderboard(results_dir)
    out = results_dir / REPORT
    for stage in board["stages"]:
        if not stage["trials"]:
            continue
        folder = out / stage["name"]
        _save(folder / "curves.png", curves_figure(stage))
        if stage["best"] is not None:
            _draw_predictions(results_dir / stage["name"], folder, stage)
    log.info("report written to %s", out)
    return out


def _draw_predictions(stage_dir: Path, folder: Path, stage: dict[str, Any]) -> None:
    """per_class.png and samples.png from the stage's test evaluation, if they are its best
    checkpoint's and not drawn yet."""
    best = stage["best"]
    test_dir = results.stage_test_dir(stage_dir)
    found = results.read_test_predictions(test_dir)
    if found is None or found.checkpoint_sha256 != best["checkpoint_sha256"]:
        log.info("report: no test predictions of %s's best checkpoint in %s; curves only", stage["name"], test_dir)
        return
    if _current(folder, found, stage["task"]):
        return
    samples = results.read_test_samples(test_dir, found)
    if len(samples) != len(found.samples):
        log.warning(
            "report: %s is missing or incomplete; no samples of %s", test_dir / results.SAMPLES_FILE, stage["name"]
        )
        return
    title = f"{stage['name']} {best['trial_id']}"
    if found.per_class is not None:
        _save(folder / "per_class.png", per_class_figure(found.per_class.model_dump(), title))
    _save(folder / "samples.png", samples_figure(samples, stage["task"], title))
    results.write_predictions(folder, found)


def _current(folder: Path, found: results.Predictions, task: str) -> bool:
    """Whether the pictures of these predictions are there already."""
    pictures = ["samples.png"] + ([] if get_task(task).binary else ["per_class.png"])
    return results.read_predictions(folder) == found and all((folder / p).is_file() for p in pictures)


def _save(path: Path, figure: Figure) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic.write_bytes(path, buffer.getvalue())


def _figure(width_px: int, height_px: int) -> Figure:
    # The object API with the Agg canvas: no pyplot state, safe beside a live view's thread. Imported
    # here, not at the top: matplotlib is heavy, and the driver imports this module for every run.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


# ------------------------------------------------------------------------------------ figures
def curves_figure(stage: dict[str, Any]) -> Figure:
    """val mIoU (%) per epoch of every trial of a leaderboard stage."""
    from matplotlib.ticker import MaxNLocator  # here, not at the top: matplotlib is imported by the report only

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


def per_class_figure(per_class: Mapping[str, Sequence[Any]], title: str) -> Figure:
    """Test IoU (%) of each class present in the test split (ground truth or prediction), best first,
    labelled with the class names and drawn in their palette colours."""
    figure = _figure(*PER_CLASS_PX)
    ax = figure.add_subplot()
    iou = np.asarray(per_class["iou"])
    present = np.flatnonzero(per_class["present"]).tolist()
    order = sorted(present, key=lambda c: (-iou[c], c))
    colours: np.ndarray | list[float] = palette(len(iou))[order] / 255.0 if order else []
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


def samples_figure(samples: Sequence[results.SampleImages], task: str, title: str) -> Figure:
    """One row per sample: frame, ground truth, prediction (and prior), ``CELL_PX`` square each."""
    columns = ["frame", "ground truth", "prediction"] + (
        ["stage-one prior"] if samples and samples[0].prior is not None else []
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
        images = [sample.image, mask_image(sample.truth), mask_image(sample.pred)]
        if len(columns) == 4 and sample.prior is not None:
            images.append(np.repeat(sample.prior[..., None], 3, axis=-1))
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
                    f"{sample.subset}/{sample.uid} #{sample.frame}",
                    fontsize=6,
                    color="white",
                    va="top",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},
                )
    return figure
