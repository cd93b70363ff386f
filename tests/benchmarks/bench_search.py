"""Optuna against random search on the same budget (not part of the test run).

    .venv/bin/python tests/benchmarks/bench_search.py [--trials 6] [--epochs 6] [--local]

Runs the demo's stage one (tiny preset, synthetic set of 6 videos per split) once per searcher, with
the same number of trials, epochs, concurrency and seed, through `aavs run` (Ray, two trials at a
time, unless --local), and prints a table: wall time, the best val mIoU and its trial's learning rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from aavs.orchestrator.cli import main as aavs


def experiment(search: str, trials: int, epochs: int, startup: int) -> dict:
    """The test suite's tiny experiment (tests/conftest.py), stage one alone on 6 videos per split."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import tiny_spec

    tune = {"search": search, "num_samples": trials, "startup_trials": startup, "max_concurrent": 2, "seed": 0}
    return tiny_spec(
        name=f"search-{search}",
        data={"synthetic": {"videos_per_split": 6}},
        stages={
            "localize": {
                "epochs": epochs,
                "max_videos": None,  # every training video
                "params": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}},
                "tune": tune,
            },
            "semantic": None,
        },
    )


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--startup", type=int, default=3, help="Optuna's random trials before TPE")
    parser.add_argument("--local", action="store_true", help="in this process (one trial at a time)")
    args = parser.parse_args()
    table = Table(title=f"{args.trials} trials x {args.epochs} epochs, stage one of the demo")
    for column in ("search", "wall time", "best val mIoU", "its lr", "learning rates tried"):
        table.add_column(column)
    with tempfile.TemporaryDirectory() as tmp:
        for search in ("random", "optuna"):
            spec = Path(tmp) / f"{search}.yaml"
            spec.write_text(yaml.safe_dump(experiment(search, args.trials, args.epochs, args.startup)))
            start = time.perf_counter()
            assert aavs(["run", str(spec), "--results", str(Path(tmp) / "results")] + (["--local"] * args.local)) == 0
            wall = time.perf_counter() - start
            stage = Path(tmp) / "results" / f"search-{search}" / "localize"
            best = json.loads((stage / "best.json").read_text())
            tried = [json.loads(p.read_text())["lr"] for p in sorted(stage.glob("trials/*/params.json"))]
            table.add_row(
                search,
                f"{wall:.0f} s",
                f"{100 * best['value']:.2f}",
                f"{best['params']['lr']:.2e}",
                " ".join(f"{lr:.1e}" for lr in tried),
            )
    Console().print(table)


if __name__ == "__main__":
    run()
