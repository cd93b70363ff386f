"""Frames per second one DataLoader worker delivers to a training step: the loader before the frame
store (every item decodes its JPEGs and PNGs and normalises the frames) against the training loop's
(compact items read from the frame store, aavs.datasets.frame_store, normalised on the accelerator),
in one run.

    .venv/bin/python tests/benchmarks/bench_loader.py --scale 1 --work /data/bench   # AVSBench's size
    .venv/bin/python tests/benchmarks/bench_loader.py --data DATA_ROOT               # a real release

What an item carries is what a stage-two AVSS training step takes: the frames at ``--size`` (384),
the audio embeddings, the labels and the prior (the true sounding mask), for one full epoch of the
train split in the training order of seed 3407 (stage one's shuffle), with ``cache_mb=0`` (no
whole-split cache in memory). Before each timed epoch the page cache of every file it reads is dropped
(``posix_fadvise(DONTNEED)`` on the data root's and the store's files, and with ``--drop-caches``
``/proc/sys/vm/drop_caches`` too), so each epoch reads the disk as a first epoch would.

A sample of items from the store is compared with decoded items first: the benchmark fails (exit 1)
when they differ. The figures: frames/s per worker, the store's one-time build time and disk use,
and the workers one GPU needs at ``--gpu-frames`` frames/s (1,000: swin-base on an H100 at 40 %
MFU, issue 21). ``--json FILE`` writes them for docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Subset

from aavs.datasets.avsbench import AVSBenchDataset, collate_videos
from aavs.orchestrator.recipe.config import TrainConfig
from aavs.orchestrator.recipe.evaluation import model_inputs
from aavs.orchestrator.recipe.train import epoch_videos

SEED = 3407


def drop_page_cache(*folders: Path, everything: bool = False) -> str:
    """Every file under ``folders`` out of the page cache (and with ``everything`` the whole machine's,
    where /proc/sys/vm/drop_caches is writable); returns how."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    if not everything:
        return "fadvise"
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches + fadvise"
    except OSError:
        return "fadvise"


def peak_rss_kib() -> int:
    """The larger peak RSS of this process and of its largest finished child (a loader worker)."""
    return max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )


def epoch(data: AVSBenchDataset, workers: int) -> tuple[int, float]:
    """(frames, seconds) of one training-order epoch through a DataLoader with ``workers`` processes."""
    cfg = TrainConfig(task=data.task, data_root=str(data.root), trial_dir=".", seed=SEED, shuffle=True)
    indices = epoch_videos(cfg, data, 0, 1, 0)
    loader = DataLoader(Subset(data, indices), batch_size=1, num_workers=workers, collate_fn=collate_videos)
    start, frames = time.perf_counter(), 0
    for batch in loader:
        frames += int(batch["pixel_values"].shape[0])
    return frames, time.perf_counter() - start


def same_items(a: AVSBenchDataset, b: AVSBenchDataset, count: int) -> int:
    """Compares ``count`` evenly spread items of the two datasets as the network and the loss get them
    (``b`` compact: converted by model_inputs); returns how many were compared."""
    step = max(1, len(a) // count)
    picked = range(0, len(a), step)
    for i in picked:
        x, y = collate_videos([a[i]]), collate_videos([b[i]])
        inputs_x, inputs_y = model_inputs(x, "cpu", torch.float32), model_inputs(y, "cpu", torch.float32)
        for key in ("pixel_values", "audio", "prior", "labels", "class_map"):
            same = (
                torch.equal(x[key], y[key].long())
                if key in ("labels", "class_map")
                else torch.equal(inputs_x[key], inputs_y[key])
            )
            if not same:
                raise SystemExit(f"item {i} ({x['uids'][0]}): {key} differs between the store and decoding")
    return len(picked)


def _data_root(args: argparse.Namespace, work: Path) -> Path:
    if args.data:
        return Path(args.data)
    root = work / f"avsbench-{args.scale:g}"
    command = ["data", "synth", str(root), "--shape", "avsbench", "--scale", str(args.scale)]
    subprocess.run([sys.executable, "-m", "aavs.orchestrator.cli", *command], check=True, stdout=subprocess.DEVNULL)
    return root


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-loader-"))
    root = _data_root(args, work)
    torch.set_num_threads(1)  # a loader worker's share of a node
    common = dict(image_size=args.size, prior="ground-truth", training=True, cache_mb=0, cache_dir=work / "cache")
    start = time.perf_counter()
    decoded = AVSBenchDataset(root, args.task, "train", **common)  # embeds the audio once (cached)
    construction = time.perf_counter() - start
    start = time.perf_counter()
    stored = AVSBenchDataset(
        root, args.task, "train", frame_store=work / "store", store_workers=args.store_workers, compact=True, **common
    )
    build = time.perf_counter() - start
    assert stored.frame_store is not None
    compared = same_items(decoded, stored, args.compare)
    report: dict = {
        "data": str(root),
        "task": args.task,
        "videos": len(decoded),
        "size": args.size,
        "workers": args.workers,
        "construction_s": round(construction, 2),
        "store_build_s": round(build, 2),
        "store_bytes": stored.frame_store.nbytes(),
        "items_compared": compared,
        "gpu_frames_per_s": args.gpu_frames,
    }
    for name, data in (("decode", decoded), ("store", stored)):
        if name not in args.loaders:
            continue
        report["page_cache"] = drop_page_cache(root, work / "store", everything=args.drop_caches)
        frames, seconds = epoch(data, args.workers)
        per_worker = frames / seconds / max(1, args.workers)
        report[name] = {
            "frames": frames,
            "seconds": round(seconds, 2),
            "frames_per_s_per_worker": round(per_worker, 1),
            "workers_per_gpu": math.ceil(args.gpu_frames / per_worker),
        }
    report["peak_rss_mib"] = round(peak_rss_kib() / 1024, 1)
    if {"decode", "store"} <= set(report):
        report["speedup"] = round(
            report["store"]["frames_per_s_per_worker"] / report["decode"]["frames_per_s_per_worker"], 2
        )
    return report


def show(report: dict) -> None:
    table = Table(
        title=f"{report['task']} train, {report['videos']} videos at {report['size']} px, {report['workers']} worker(s)"
    )
    for column in (
        "loader",
        "frames",
        "seconds",
        "frames/s per worker",
        f"workers per GPU at {report['gpu_frames_per_s']}/s",
    ):
        table.add_column(column, justify="right")
    for name in ("decode", "store"):
        if name not in report:
            continue
        row = report[name]
        table.add_row(
            name,
            str(row["frames"]),
            str(row["seconds"]),
            str(row["frames_per_s_per_worker"]),
            str(row["workers_per_gpu"]),
        )
    console = Console()
    console.print(table)
    console.print(
        f"store: {report['store_bytes'] / 1e9:.2f} GB, built in {report['store_build_s']} s; "
        + (f"{report['speedup']}x per worker; " if "speedup" in report else "")
        + f"{report['items_compared']} items equal to decoding; "
        f"peak RSS {report['peak_rss_mib']:.0f} MiB; "
        f"page cache dropped by {report['page_cache']}"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a data root (AVSBench-semantic layout)")
    source.add_argument("--scale", type=float, help="generate an AVSBench-shaped set at this scale first")
    parser.add_argument("--work", help="folder for the generated set, caches and the store (default: a temporary one)")
    parser.add_argument("--task", default="avss")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes of the timed epochs")
    parser.add_argument("--store-workers", type=int, default=0, help="processes that decode into the store (once)")
    parser.add_argument("--gpu-frames", type=float, default=1000.0)
    parser.add_argument("--compare", type=int, default=20, help="items compared between the store and decoding")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--loaders", nargs="+", default=["decode", "store"], choices=["decode", "store"], help="the epochs to time"
    )
    parser.add_argument(
        "--drop-caches", action="store_true", help="also drop the whole machine's page cache (root) before each epoch"
    )
    args = parser.parse_args(argv)
    report = run(args)
    show(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
