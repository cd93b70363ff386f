"""Training throughput of train_func on the tiny preset and a synthetic set (not part of the test run).

    .venv/bin/python tests/benchmarks/bench_train.py [--videos-per-split 6] [--epochs 3] [--workers 0 2]

For each DataLoader worker count, runs a short stage-one trial in this process and prints, per epoch,
training steps/s (one step = one batch of videos), frames/s, and the fraction of the epoch spent
waiting for the next batch (the data loader's share; it should stay near zero).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from aavs.datasets.synth import write_synthetic_avsbench
from aavs.orchestrator.recipe.train import train_func
from aavs.orchestrator.results import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos-per-split", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--task", default="avss-binary")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="aavs-bench-train-"))
    root = write_synthetic_avsbench(work / "data", videos_per_split=args.videos_per_split, seed=0)
    table = Table(title=f"train_func, tiny preset, {args.task}, batch {args.batch_size} video(s)")
    for column in ("loader workers", "epoch", "phase", "steps/s", "frames/s", "data wait", "epoch wall s"):
        table.add_column(column, justify="right")
    for workers in args.workers:
        trial = work / f"trial-w{workers}"
        start = time.perf_counter()
        train_func(
            {
                "task": args.task,
                "data_root": str(root),
                "trial_dir": str(trial),
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "audio_cache": str(work / "cache"),
                "compute": {"loader_workers": workers},
            }
        )
        total = time.perf_counter() - start
        previous = None
        for row in read_metrics(trial):
            wall = row["time"] - previous if previous else float("nan")
            previous = row["time"]
            table.add_row(
                str(workers),
                str(row["epoch"]),
                row["phase"],
                f"{row['train/steps_per_s']:.2f}",
                f"{row['train/frames_per_s']:.1f}",
                f"{100 * row['train/data_wait_frac']:.1f}%",
                f"{wall:.1f}",
            )
        table.add_row(str(workers), "all", "", "", "", "", f"{total:.1f} (incl. set-up)")
    Console().print(table)


if __name__ == "__main__":
    main()
