"""What the durable writes cost: `make demo` with and without its fsyncs (not part of the test run).

    .venv/bin/python tests/benchmarks/bench_fsync.py [--order with,without,with] [--experiment experiments/demo.yaml]

Runs `aavs run EXPERIMENT` once per entry of ``--order``, each in a fresh process with a fresh results
folder, one after the other on the same machine, and prints a table of wall times. For a run
"without", every ``os.fsync`` is a no-op: a ``sitecustomize.py`` on ``PYTHONPATH`` replaces it before
any aavs module loads, in the driver and in every Ray worker (the local Ray that `aavs run` starts
inherits the driver's environment); each process that skipped an fsync leaves its pid in a folder, so
the table says how many processes the patch reached. The results folders' best.json values are
compared: fsyncs change durability, never numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]

SITECUSTOMIZE = """
import os

_folder = os.environ["AAVS_BENCH_FSYNC_SKIPPED"]
_said = []


def _skipped_fsync(fd):
    if not _said:  # once a process: its pid says the patch reached it
        _said.append(True)
        open(os.path.join(_folder, str(os.getpid())), "w").close()


os.fsync = _skipped_fsync
"""


def one_run(experiment: Path, results: Path, fsync: bool, scratch: Path) -> tuple[float, int, dict]:
    """(wall seconds, processes whose fsyncs were skipped, each stage's best.json value)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    skipped = scratch / f"skipped-{results.name}"
    if not fsync:
        patch = scratch / "no-fsync"
        patch.mkdir(exist_ok=True)
        (patch / "sitecustomize.py").write_text(SITECUSTOMIZE)
        skipped.mkdir()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(patch), env.get("PYTHONPATH")]))
        env["AAVS_BENCH_FSYNC_SKIPPED"] = str(skipped)
    clock = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "aavs.orchestrator.cli", "run", str(experiment), "--results", str(results)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wall = time.perf_counter() - clock
    if proc.returncode != 0:
        raise SystemExit(f"aavs run failed ({proc.returncode}):\n{proc.stderr.decode()[-3000:]}")
    values = {best.parent.name: json.loads(best.read_text())["value"] for best in sorted(results.glob("*/*/best.json"))}
    return wall, len(list(skipped.iterdir())) if skipped.is_dir() else 0, values


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--order", default="with,without,with", help="runs in order: 'with' or 'without' fsyncs")
    parser.add_argument("--experiment", type=Path, default=REPO / "experiments" / "demo.yaml")
    args = parser.parse_args()
    order = [entry.strip() for entry in args.order.split(",")]
    if set(order) - {"with", "without"}:
        parser.error(f"--order: expected 'with' or 'without' entries, got {args.order!r}")
    table = Table(title=f"aavs run {args.experiment.name}, one run after the other")
    for column in ("run", "fsyncs", "wall time", "processes without fsync", "best values"):
        table.add_column(column)
    walls: dict[str, list[float]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        values_seen = set()
        for i, mode in enumerate(order):
            wall, skipped, values = one_run(args.experiment, scratch / f"run{i}", mode == "with", scratch)
            walls[mode].append(wall)
            values_seen.add(json.dumps(values, sort_keys=True))
            table.add_row(str(i + 1), mode, f"{wall:.1f} s", str(skipped), json.dumps(values))
    console = Console()
    console.print(table)
    if walls["with"] and walls["without"]:
        mean_with = sum(walls["with"]) / len(walls["with"])
        mean_without = sum(walls["without"]) / len(walls["without"])
        console.print(f"with fsyncs: {100 * (mean_with / mean_without - 1):+.1f} % wall time (means of the runs)")
    console.print("best values: " + ("the same in every run" if len(values_seen) == 1 else "DIFFER between runs"))


if __name__ == "__main__":
    run()
