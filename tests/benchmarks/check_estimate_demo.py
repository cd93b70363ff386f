"""Does ``aavs estimate experiments/demo.yaml --device cpu`` foretell a finished demo? (issue 21)

Compares the estimate with the demo's results folder: the trials of each stage, the training and
validation frames per epoch and the checkpoints' tensor bytes exactly, the checkpoints' file bytes
within 1 %, and the whole run's wall time within 30 %. What the folder says is read from its files
alone, never through the estimate's code: trials are ``<stage>/trials/*``, frames are the frame files
of the data set the run wrote (``data/<subset>/<uid>/frames``, per metadata.csv's split, for the
stage task's subsets), tensor bytes are the safetensors payloads of ``best/`` and
``checkpoints/last/model/`` plus the tensors of ``checkpoints/last/accelerate/optimizer.bin``.

    .venv/bin/python tests/benchmarks/check_estimate_demo.py [--results DIR]

Without a finished demo in ``DIR/demo`` it runs one first (``aavs run experiments/demo.yaml --results
DIR``: about 7 minutes on 2 idle cores) and records its wall time in ``DIR/demo-wall.json``; a folder
without that record is timed from its provenance.json to its leaderboard.json. The estimate runs
right after, on the same machine, so its measured CPU rates see the same load. Exit status 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from aavs.datasets.tasks import get_task

REPO = Path(__file__).resolve().parents[2]
AAVS = [sys.executable, "-m", "aavs.orchestrator.cli"]
EXPERIMENT = REPO / "experiments" / "demo.yaml"
WALL_TOLERANCE = 0.30
FILE_BYTES_TOLERANCE = 0.01


def run_demo(results: Path) -> float:
    """``aavs run`` the demo into ``results``; its wall time, recorded beside it."""
    started = time.perf_counter()
    subprocess.run([*AAVS, "run", str(EXPERIMENT), "--results", str(results)], check=True, cwd=REPO)
    wall = time.perf_counter() - started
    (results / "demo-wall.json").write_text(json.dumps({"wall_s": wall}))
    return wall


def recorded_wall(results: Path) -> float:
    record = results / "demo-wall.json"
    if record.is_file():
        return float(json.loads(record.read_text())["wall_s"])
    folder = results / "demo"
    started = json.loads((folder / "provenance.json").read_text())["runs"][0]["time"]
    return (folder / "leaderboard.json").stat().st_mtime - started


def frames(folder: Path, task: str, split: str) -> int:
    """Frame files of the task's videos in ``split`` (a v1s training video's one labelled frame is
    fed five times: it has five frame files all the same)."""
    with open(folder / "data" / "metadata.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and r["label"] in get_task(task).subsets]
    return sum(len(list((folder / "data" / r["label"] / r["uid"] / "frames").iterdir())) for r in rows)


def safetensors_payload(path: Path) -> int:
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return path.stat().st_size - 8 - header


def tensor_bytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def trial_checkpoints(trial: Path) -> tuple[int, int]:
    """(file bytes, tensor bytes) of a trial's ``best/`` and ``checkpoints/``."""
    files = [p for d in (trial / "best", trial / "checkpoints") for p in d.rglob("*") if p.is_file()]
    tensors = sum(safetensors_payload(p) for p in files if p.suffix == ".safetensors")
    optimizer = torch.load(trial / "checkpoints/last/accelerate/optimizer.bin", weights_only=True)
    return sum(p.stat().st_size for p in files), tensors + tensor_bytes(optimizer["state"])


def parts(folder: Path, sheet: dict) -> list[tuple[str, float, float]]:
    """Where the time went, for reading a failed wall-time check: the base's pre-training (its record's
    seconds) and each stage (from the end of the one before, or of the pre-training, to its done.json)."""
    base = json.loads((folder / "base" / "pretraining.json").read_text())
    out = [("pre-training the base", sheet["once"]["pretraining"]["wall_s"], base["seconds"])]
    before = (folder / "base" / "pretraining.json").stat().st_mtime
    for stage in sheet["stages"]:
        done = (folder / stage["name"] / "done.json").stat().st_mtime
        out.append((f"stage {stage['name']}", stage["wall_s"], done - before))
        before = done
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=None, help="results root (default: a temporary folder)")
    args = parser.parse_args()
    results = (args.results or Path(tempfile.mkdtemp(prefix="estimate-demo-"))).resolve()
    folder = results / "demo"
    done = all((folder / s / "done.json").is_file() for s in ("localize", "semantic", "end-to-end"))
    wall = recorded_wall(results) if done else run_demo(results)
    out = subprocess.run(
        [*AAVS, "estimate", str(EXPERIMENT), "--device", "cpu", "--results", str(results), "--json"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    sheet = json.loads(out.stdout)
    failures: list[str] = []

    def check(what: str, estimated: float, actual: float, tolerance: float = 0.0) -> None:
        ok = abs(estimated - actual) <= tolerance * abs(actual)
        print(f"{'ok  ' if ok else 'FAIL'} {what}: estimated {estimated:,.10g}, actual {actual:,.10g}")
        if not ok:
            failures.append(what)

    for stage in sheet["stages"]:
        name, task = stage["name"], stage["task"]
        trials = sorted((folder / name / "trials").iterdir())
        check(f"{name}: trials", stage["trials"], len(trials))
        check(f"{name}: training frames / epoch", stage["frames"]["train_per_epoch"], frames(folder, task, "train"))
        check(f"{name}: validation frames / epoch", stage["frames"]["eval_per_epoch"], frames(folder, task, "val"))
        kept = [trial_checkpoints(t) for t in trials]
        check(f"{name}: checkpoint tensor bytes", stage["checkpoints"]["search_tensor_bytes"], sum(t for _, t in kept))
        check(
            f"{name}: checkpoint file bytes",
            stage["checkpoints"]["search_bytes"],
            sum(f for f, _ in kept),
            FILE_BYTES_TOLERANCE,
        )
    check("wall time (s)", sheet["total"]["wall_s"], wall, WALL_TOLERANCE)
    for what, estimated, actual in parts(folder, sheet):
        print(f"     {what}: estimated {estimated:.0f} s, actual {actual:.0f} s")
    device, once = sheet["device"], sheet["once"]
    print(
        f"device: {device['peak_flops_per_s'] / 1e9:.1f} GFLOP/s per core ({device['peak_source']}); "
        f"MFU {device['mfu']:.3f} ({device['mfu_source']}); pre-training MFU {once['pretraining']['mfu']:.3f}"
    )
    stages = ", ".join(f"{s['name']} {s['wall_s']:.0f} s" for s in sheet["stages"])
    print(f"estimated wall time per stage: {stages}; once per run: {once['wall_s']:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
