"""Everything that reads a whole data set, at AVSBench's size: time and peak memory of each step.

    .venv/bin/python tests/benchmarks/scale_run.py --scale 1 --work /data/scale --json scale.json

Steps, each in a process of its own (its peak RSS is the larger of its own and its largest child's,
e.g. a DataLoader worker):

    synth      aavs data synth --shape avsbench --scale F   (skipped with --data; resumed if cut off)
    check      aavs data check
    features   aavs features (VGGish embeddings of every clip into the cache; random weights here)
    dataset    AVSBenchDataset of AVSS train at 384 px as training builds it: cache_mb=0, embeddings
               from the cache, compact items from the frame store in <work>/store (built there first)
    epoch      one epoch of that dataset through a DataLoader (2 workers)
    export     stage one's masks: `aavs evaluate --save-masks` of a tiny-preset avss-binary network,
               val, test, then train (the largest)
    score      aavs score of the exported test masks (after export-test)

docs/scale.md reports its output. Nothing here is a test: the suite runs bench_loader.py small.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Runs `code` (which may read ARGV), then prints the step's peak RSS in KiB as the last line.
RUNNER = textwrap.dedent(
    """
    import json, resource, sys
    ARGV = json.loads(sys.argv[1])
    {code}
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print("PEAK_RSS_KIB", peak)
    """
)
CLI = "from aavs.orchestrator.cli import main\ncode = main(ARGV)\nassert code == 0, code"
DATASET = """
import time, torch
from torch.utils.data import DataLoader
from aavs.datasets.avsbench import AVSBenchDataset, collate_videos
root, cache, store, epoch = ARGV
data = AVSBenchDataset(root, "avss", "train", image_size=384, prior="ground-truth", training=True, cache_mb=0, cache_dir=cache, frame_store=store, store_workers=2, compact=True)
if epoch == "1":
    frames = 0
    for batch in DataLoader(data, batch_size=1, num_workers=2, collate_fn=collate_videos):
        frames += int(batch["pixel_values"].shape[0])
    print("frames", frames)
"""
TINY = """
from aavs.datasets.layout import class_names
from aavs.models import build_model, save_checkpoint
save_checkpoint(build_model("avss-binary", preset="tiny"), ARGV[0])
"""


def step(name: str, code: str, argv: list[str], cache: Path, rows: list[dict]) -> None:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER.format(code=code), json.dumps(argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "AAVS_CACHE_DIR": str(cache)},  # every step reads the embeddings `features` wrote
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    peak = int(done.stdout.strip().splitlines()[-1].split()[-1])
    rows.append({"step": name, "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024, 1)})
    Console(stderr=True).print(f"{name}: {seconds:.1f} s, peak RSS {peak / 1024:.0f} MiB")


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="an existing data root")
    source.add_argument("--scale", type=float, help="generate an AVSBench-shaped set at this scale")
    parser.add_argument("--work", required=True)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--skip", nargs="*", default=[], help="steps to leave out")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root = Path(args.data) if args.data else work / f"avsbench-{args.scale:g}"
    cache, masks, tiny = work / "cache", work / "masks", work / "tiny"
    rows: list[dict] = []
    plan = []
    if not args.data:
        plan.append(("synth", CLI, ["data", "synth", str(root), "--shape", "avsbench", "--scale", str(args.scale)]))
    plan += [
        ("check", CLI, ["data", "check", str(root), "--json"]),
        ("features", CLI, ["features", str(root), "--json"]),
        ("dataset", DATASET, [str(root), str(cache), str(work / "store"), "0"]),
        ("epoch", DATASET, [str(root), str(cache), str(work / "store"), "1"]),
        ("tiny", TINY, [str(tiny)]),
    ]
    for split in ("val", "test", "train"):  # train last: the largest, and stage two trains on the true masks
        export = ["evaluate", str(tiny), "--data", str(root), "--split", split, "--save-masks", str(masks), "--json"]
        plan.append((f"export-{split}", CLI, export))
        if split == "test":
            score = ["score", str(masks), "--data", str(root), "--task", "avss-binary", "--split", "test", "--json"]
            plan.append(("score", CLI, score))
    for name, code, step_argv in plan:
        if name not in args.skip:
            step(name, code, step_argv, cache, rows)
            if args.json:  # what has run so far, in case a later step is cut off
                Path(args.json).write_text(json.dumps({"data": str(root), "steps": rows}, indent=2) + "\n")
    report = {"data": str(root), "data_bytes": disk_bytes(root), "steps": rows}
    table = Table(title=f"{root}: {report['data_bytes'] / 1e9:.1f} GB")
    for column in ("step", "seconds", "peak RSS (MiB)"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["step"], str(row["seconds"]), str(row["peak_rss_mib"]))
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
