"""The README's table of `make demo` results: both arms, both priors stage two trains on, over seeds.

    .venv/bin/python tests/benchmarks/demo_table.py RESULTS [RESULTS ...]

Each RESULTS is a finished demo (the folder given to ``aavs run experiments/demo.yaml --results``; the
experiment is ``RESULTS/demo``), e.g. the seeds 3407, 3408 and 3409 of the commands in README.md. It
prints, as a Markdown table, test mIoU and F (the stage's best trial, in %) as mean ± sample standard
deviation over the runs and each run's own values: stage one (binary), Stepping Stones' stage two by
the prior it trained on (``prior_train``), and the end-to-end arm. Under it, the all-background
baseline of the first run's test split: every pixel predicted background, scored by the same metric
(aavs.datasets.metrics.SemanticMetric) from the data root's ground-truth masks alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

from aavs.datasets.layout import LABEL2IDX, select_videos
from aavs.datasets.metrics import SemanticMetric
from aavs.datasets.palette import decode_colour_mask
from aavs.orchestrator import results


def all_background(data_root: Path) -> dict[str, float]:
    """Test mIoU and F of a model that predicts background (class 0) everywhere."""
    num_classes = len(json.loads((data_root / LABEL2IDX).read_text()))
    metric = SemanticMetric(num_classes)
    for video in select_videos(data_root, "avss", "test"):
        target = np.stack(
            [
                decode_colour_mask(np.asarray(Image.open(video.mask_path(data_root, i)).convert("RGB")), num_classes)
                for i in video.annotated_frames
            ]
        )
        metric.update(np.zeros_like(target), target)
    return metric.compute()


def _rows(runs: list[Path]) -> dict[str, list[dict[str, float]]]:
    """Each table row's test metrics, one per trained checkpoint: a stage that two runs share (a demo
    copied, then run again with another ``prior_train``: only stage two trains again) counts once."""
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        for stage in ("localize", "semantic", "end-to-end"):
            best = results.read_best(run / stage)
            if best is None or best.test is None:
                raise SystemExit(f"{run / stage}: no best.json with test metrics (is the demo finished?)")
            if stage == "semantic":
                label = f"Stepping Stones, stage two trained on the {best.params['prior_train']} prior"
            else:
                label = {
                    "localize": "stage one (binary: where is the sound?)",
                    "end-to-end": "end-to-end (no stage one)",
                }[stage]
            rows.setdefault(label, {})[best.checkpoint_sha256] = best.test
    return {label: list(tests.values()) for label, tests in rows.items()}


def _spread(values: list[float]) -> str:
    values = [100 * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished demos' results folders")
    args = parser.parse_args()
    runs = [folder / "demo" for folder in args.runs]
    rows = _rows(runs)
    print("| arm (test split) | runs | test mIoU % | test F % | each run's mIoU / F |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, tests in rows.items():
        each = ", ".join(f"{100 * t['miou']:.2f} / {100 * t['fscore']:.2f}" for t in tests)
        miou, fscore = _spread([t["miou"] for t in tests]), _spread([t["fscore"] for t in tests])
        print(f"| {label} | {len(tests)} | {miou} | {fscore} | {each} |")
    data_root = Path(results.read_best(runs[0] / "semantic").data_root)  # type: ignore[union-attr]
    baseline = all_background(data_root)
    print(
        f"| all background (every pixel predicted background) | - | {100 * baseline['miou']:.2f} | "
        f"{100 * baseline['fscore']:.2f} | the same data for every run |"
    )


if __name__ == "__main__":
    main()
