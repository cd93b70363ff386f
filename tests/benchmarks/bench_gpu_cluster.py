"""A simulated GPU cluster at a search's size, and `aavs leaderboard` on a large stage (not part of the
test run).

    .venv/bin/python tests/benchmarks/bench_gpu_cluster.py --json gpu_cluster.json   # 4 nodes x 2 GPUs, 16 trials
    .venv/bin/python tests/benchmarks/bench_gpu_cluster.py --nodes 2 --trials 4 --board-trials 8   # a quick look

Cluster: ``ray.cluster_utils.Cluster`` in this machine, a head without resources and ``--nodes`` nodes
that each declare ``--gpus-per-node`` GPUs they do not have (the network trains on the CPU, as in
tests/test_gpu_cluster.py), then `aavs run`, in this process, of that test's experiment at this size:
stage one an optuna search under ASHA of ``--trials`` one-epoch trials with ``gpus_per_worker: 1``, as
many at a time as there are GPUs, then stage two (one trial) from its best. Measured: the run's wall
time, this driver's CPU seconds and peak RSS (``getrusage``: the process that runs `aavs run`, Ray's
driver threads included, not the trials), the trials per node and per GPU and the most that ran at once
(each trial's node.json), and whether two trials ever shared a GPU at once (the benchmark fails if so).

Leaderboard: one stage of ``--board-trials`` trials x ``--board-epochs`` epochs written with the results
package's own writers (params, config, node, status, one metrics line an epoch, best checkpoint metrics,
the stage's inputs, best and done; no training), then `aavs leaderboard` on it as a user runs it (a new
process, table on a pipe), ``--repeat`` times each way: rebuilt from the trial files (no current
leaderboard.json), with ``--json``, and from a current leaderboard.json (what a finished run leaves).
The median wall time and the largest peak RSS of each.

``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from aavs.orchestrator import results
from aavs.orchestrator.cli import main as aavs

AAVS = [sys.executable, "-m", "aavs.orchestrator.cli"]


def _tiny_spec(**overrides: Any) -> dict[str, Any]:
    """tests/conftest.py's tiny experiment (the test suite's), with ``overrides``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import tiny_spec

    return tiny_spec(**overrides)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------------ the cluster
def cluster_run(work: Path, nodes: int, gpus: int, cpus: int, trials: int) -> dict[str, Any]:
    """`aavs run` of a stage-one search of ``trials`` trials and a stage two on a cluster of ``nodes``
    nodes of ``gpus`` declared GPUs; its figures."""
    import ray
    from ray.cluster_utils import Cluster

    from aavs.datasets.synth import write_synthetic_avsbench

    data = write_synthetic_avsbench(work / "data", videos_per_split=2, seed=0)  # before the clock
    spec = _tiny_spec(
        name="gpu-cluster",
        data={"synthetic": None, "root": str(data)},
        compute={"gpus_per_worker": 1, "cpus_per_worker": 1},
        stages={
            "localize": {
                "epochs": 1,
                "params": {"lr": {"loguniform": [1.0e-4, 3.0e-3]}},
                "tune": {
                    "num_samples": trials,
                    "max_concurrent": nodes * gpus,
                    "search": "optuna",
                    "scheduler": "asha",
                },
            },
            "semantic": {"epochs": 1},
        },
    )
    (work / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    temp_dir = tempfile.mkdtemp(prefix="aavs-bench-", dir="/tmp")
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False}
    )
    try:
        node_ids = [cluster.add_node(num_cpus=cpus, num_gpus=gpus, temp_dir=temp_dir).node_id for _ in range(nodes)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cpu, start = _cpu_s(), time.perf_counter()
        assert aavs(["run", str(work / "spec.yaml"), "--results", str(work / "results")]) == 0
        wall, cpu = time.perf_counter() - start, _cpu_s() - cpu
    finally:
        ray.shutdown()
        cluster.shutdown()
    root = work / "results" / "gpu-cluster"
    placed = []  # (stage, trial, node, GPU id, start, end)
    for stage in ("localize", "semantic"):
        for trial in results.trial_dirs(root / stage):
            record = results.read_node(trial)
            if record is None or not record.gpu_ids or record.start is None or record.end is None:
                raise SystemExit(f"{trial}: no complete placement record ({record})")
            placed.append((stage, trial.name, record.node_id, record.gpu_ids[0], record.start, record.end))
    shared = [
        (a[:2], b[:2])
        for a, b in combinations(placed, 2)
        if a[2:4] == b[2:4] and a[4] < b[5] and b[4] < a[5]  # one GPU, overlapping times
    ]
    if shared:
        raise SystemExit(f"trials shared a GPU at once: {shared}")
    names = {node: f"node {i + 1}" for i, node in enumerate(node_ids)}
    return {
        "nodes": nodes,
        "gpus_per_node": gpus,
        "cpus_per_node": cpus,
        "trials": trials,
        "wall_s": wall,
        "driver_cpu_s": cpu,
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trials_per_node": dict(Counter(names.get(p[2], str(p[2])) for p in placed)),
        "trials_per_gpu": {
            f"{names.get(n, n)} GPU {g}": c for (n, g), c in Counter((p[2], p[3]) for p in placed).items()
        },
        "most_at_once": max(sum(q[4] <= p[4] < q[5] for q in placed) for p in placed),
        "stage_one_span_s": max(p[5] for p in placed if p[0] == "localize")
        - min(p[4] for p in placed if p[0] == "localize"),
    }


# -------------------------------------------------------------------------------- the leaderboard
def write_stage(root: Path, trials: int, epochs: int, seed: int = 0) -> Path:
    """A finished experiment of one stage, ``trials`` x ``epochs``, written by the results package's
    writers as a run writes them (val mIoU rising with noise, a best checkpoint's metrics per trial);
    its results folder."""
    from aavs.orchestrator.experiment.spec import parse_spec, spec_hash
    from aavs.orchestrator.experiment.stage_state import stage_inputs
    from aavs.orchestrator.experiment.trial_config import base_trial_config, trial_config

    spec = parse_spec(
        _tiny_spec(
            name="board",
            data={"synthetic": None, "root": str(root / "data")},
            stages={
                "localize": {
                    "epochs": epochs,
                    "params": {"lr": {"loguniform": [1.0e-4, 3.0e-3]}},
                    "tune": {"num_samples": trials, "search": "random"},
                },
                "semantic": None,
            },
        ),
        "bench",
    )
    results_dir = root / "results" / spec.name
    results.open_results(results_dir, "run")
    results.write_spec(results_dir, spec.to_dict(), spec_hash(spec.to_dict()))
    results.write_run(results_dir, "ray")
    (stage,) = spec.stages
    stage_dir = results_dir / stage.name
    inputs = stage_inputs(spec, stage, root / "data", {})
    results.write_inputs(stage_dir, spec_hash(inputs), inputs)
    base = base_trial_config(spec, stage, root / "data", results_dir / results.CACHE_DIR, {})
    rng, now = random.Random(seed), time.time() - trials * epochs * 60.0
    best: tuple[float, str, dict[str, Any]] | None = None
    for t in range(trials):
        name, lr = f"t{t:03d}", 10 ** rng.uniform(-4, -2.5)
        config = trial_config(base, stage_dir, {"trial": name, "lr": lr})  # writes params.json
        trial_dir = Path(config["trial_dir"])
        results.write_trial_config(trial_dir, config)
        results.write_node(trial_dir, f"{t % 4:056x}", gpu_ids=[str(t % 2)], cuda_visible_devices=str(t % 2))
        ceiling, rows, top = rng.uniform(0.2, 0.6), [], -1.0
        for epoch in range(epochs):
            miou = ceiling * (1 - 0.9 ** (epoch + 1)) + rng.gauss(0, 0.01)
            top = max(top, miou)
            now += 60.0
            rows.append(
                results.MetricsRow.model_validate(
                    {
                        "epoch": epoch,
                        "phase": "A" if epoch < epochs // 2 else "B",
                        "time": now,
                        "checkpoint": str(trial_dir / results.BEST),
                        "train/loss": 30.0 / (epoch + 1),
                        "train/frames_per_s": 900.0 + rng.gauss(0, 20),
                        "train/steps_per_s": 90.0,
                        "train/data_wait_frac": 0.01,
                        "train/skipped_steps": 0.0,
                        "val/miou": miou,
                        "val/fscore": miou * 1.2,
                        "best/val/miou": top,
                    }
                )
            )
        results.write_metrics(trial_dir, rows)
        top_row = max(rows, key=lambda r: r["val/miou"])
        metrics = {"epoch": top_row.epoch, "val/miou": top_row["val/miou"], "val/fscore": top_row["val/fscore"]}
        results.write_checkpoint_metrics(trial_dir / results.BEST, metrics)
        results.write_status(
            trial_dir,
            results.StatusRecord(status=results.TrialStatus.DONE, time=now, epoch=epochs, epochs=epochs, best=metrics),
        )
        if best is None or top_row["val/miou"] > best[0]:
            best = (top_row["val/miou"], name, {"lr": lr})
    assert best is not None
    results.write_best(
        stage_dir,
        results.BestTrial(
            stage=stage.name,
            trial_id=best[1],
            metric="val/miou",
            mode="max",
            value=best[0],
            checkpoint=str(stage_dir / "trials" / best[1] / results.BEST),
            checkpoint_sha256="0" * 64,
            params=best[2],
            data_root=str(root / "data"),
            test={"miou": best[0] * 0.9, "fscore": best[0]},
        ),
    )
    results.write_done(stage_dir, spec_hash(inputs))
    return results_dir


# `aavs` in a new process that, as it exits, writes its own peak RSS (VmHWM: its memory since exec; the
# rusage of a child counts the forking parent's pages too) to the file named by its first argument.
CLI = """import atexit, re, sys
from pathlib import Path
out = Path(sys.argv.pop(1))
atexit.register(lambda: out.write_text(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1]))
from aavs.orchestrator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `aavs ARGS` in a new process, its output on a pipe (discarded)."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CLI, str(peak), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"aavs {' '.join(args)}: exit {done.returncode}: {done.stderr.decode()[-4000:]}")
        return wall, int(peak.read_text()) / 1024


def leaderboard_times(work: Path, trials: int, epochs: int, repeat: int) -> dict[str, Any]:
    from aavs.orchestrator.views.board import write_leaderboard

    start = time.perf_counter()
    folder = write_stage(work, trials, epochs)
    written = time.perf_counter() - start
    shown = json.loads(
        subprocess.run([*AAVS, "leaderboard", str(folder), "--json"], capture_output=True, check=True).stdout
    )
    (stage,) = shown["stages"]
    if (
        len(stage["trials"]) != trials
        or stage["best"]["trial_id"] != results.read_best(folder / stage["name"]).trial_id
    ):
        raise SystemExit(f"{folder}: the leaderboard does not show the stage as written")
    board = folder / results.LEADERBOARD_FILE
    ways: dict[str, Any] = {}
    for way, args, current in (
        ("rebuilt", [], False),
        ("rebuilt --json", ["--json"], False),
        ("leaderboard.json", [], True),
    ):
        if current:
            write_leaderboard(folder)
        else:
            board.unlink(missing_ok=True)
        runs = [timed(["leaderboard", str(folder), *args]) for _ in range(repeat)]
        ways[way] = {"median_s": statistics.median(w for w, _ in runs), "runs_s": [w for w, _ in runs]}
        ways[way]["peak_rss_mib"] = max(r for _, r in runs)
    startup = [timed(["--help"]) for _ in range(repeat)]
    return {
        "trials": trials,
        "epochs": epochs,
        "write_s": written,
        "ways": ways,
        "aavs_help_median_s": statistics.median(w for w, _ in startup),  # interpreter and CLI start alone
    }


# ------------------------------------------------------------------------------------------ main
def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus-per-node", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=4, help="declared; the trials' CPUs are real")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--board-trials", type=int, default=64)
    parser.add_argument("--board-epochs", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each leaderboard command")
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--skip-leaderboard", action="store_true")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}
    console = Console()
    with tempfile.TemporaryDirectory(prefix="aavs-bench-gpu-") as tmp:
        if not args.skip_cluster:
            work = Path(tmp) / "cluster"
            work.mkdir()
            figures = cluster_run(work, args.nodes, args.gpus_per_node, args.cpus_per_node, args.trials)
            report["cluster"] = figures
            table = Table(
                title=f"{args.trials} one-epoch trials + stage two on {args.nodes} nodes x {args.gpus_per_node} GPUs"
            )
            for column in (
                "wall",
                "driver CPU",
                "driver peak RSS",
                "stage one span",
                "most at once",
                "trials per node",
            ):
                table.add_column(column)
            table.add_row(
                f"{figures['wall_s']:.0f} s",
                f"{figures['driver_cpu_s']:.1f} s",
                f"{figures['driver_peak_rss_mib']:.0f} MiB",
                f"{figures['stage_one_span_s']:.0f} s",
                str(figures["most_at_once"]),
                ", ".join(f"{n}: {c}" for n, c in sorted(figures["trials_per_node"].items())),
            )
            console.print(table)
        if not args.skip_leaderboard:
            work = Path(tmp) / "board"
            work.mkdir()
            board = leaderboard_times(work, args.board_trials, args.board_epochs, args.repeat)
            report["leaderboard"] = board
            table = Table(
                title=f"aavs leaderboard, one stage of {args.board_trials} trials x {args.board_epochs} epochs "
                f"(median of {args.repeat}; aavs --help alone {board['aavs_help_median_s']:.2f} s)"
            )
            for column in ("from", "wall", "runs", "peak RSS"):
                table.add_column(column)
            for way, figures in board["ways"].items():
                table.add_row(
                    way,
                    f"{figures['median_s']:.2f} s",
                    " ".join(f"{w:.2f}" for w in figures["runs_s"]),
                    f"{figures['peak_rss_mib']:.0f} MiB",
                )
            console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    run()
