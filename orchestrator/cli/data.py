"""Data commands: ``aavs data synth``, ``aavs data check``, ``aavs features`` and ``aavs score``.

Each ``cmd_*`` imports the module it drives in its body (as in every module of the CLI), so that
``aavs --help`` does not import numpy, torch or the data readers.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import task_names
from aavs.orchestrator.cli.common import EXIT_INPUT, EXIT_OK, add_json, add_split, add_vggish, emit

if TYPE_CHECKING:
    from aavs.orchestrator.cli.common import Subparsers

log = logging.getLogger("aavs")


def cmd_data_synth(args: argparse.Namespace) -> int:
    if args.shape is not None or args.shape_from is not None:
        return _synth_shaped(args)
    for flag, value in (("--scale", args.scale), ("--workers", args.workers)):
        if value is not None:
            raise InputError(f"{flag} applies to --shape avsbench (or --shape-from), not to the demo set")
    from aavs.datasets.synth import write_synthetic_avsbench

    root = write_synthetic_avsbench(
        args.out,
        videos_per_split=8 if args.videos_per_split is None else args.videos_per_split,
        seed=args.seed,
        eval_videos_per_split=args.eval_videos_per_split,
        layout=args.layout,
    )
    log.info("wrote a synthetic AVSBench data set to %s", root)
    return EXIT_OK


def _synth_shaped(args: argparse.Namespace) -> int:
    """``--shape avsbench`` / ``--shape-from``: AVSBench's size and shape (aavs.datasets.synth_shape)."""
    if args.layout != "avsbench-semantic":
        raise InputError(
            f"--shape avsbench writes AVSBench-semantic's layout; it cannot be combined with --layout {args.layout}"
        )
    for flag, value in (
        ("--videos-per-split", args.videos_per_split),
        ("--eval-videos-per-split", args.eval_videos_per_split),
    ):
        if value is not None:
            raise InputError(f"{flag} sizes the demo set; with --shape the counts are AVSBench's (use --scale)")
    from aavs.datasets.synth_shape import write_shaped_avsbench

    root = write_shaped_avsbench(
        args.out,
        seed=args.seed,
        scale=1.0 if args.scale is None else args.scale,
        shape_from=args.shape_from,
        workers=args.workers,
    )
    log.info("wrote an AVSBench-shaped synthetic data set to %s", root)
    return EXIT_OK


def cmd_data_check(args: argparse.Namespace) -> int:
    """Exit status 2 when the data root has any problem."""
    from aavs.datasets.check import check_data_root, render_problems

    problems = check_data_root(args.data)
    summary = {"data": str(args.data), "problems": [p.as_dict() for p in problems]}
    emit(args, summary, lambda console: render_problems(console, args.data, problems))
    return EXIT_INPUT if problems else EXIT_OK


def cmd_features(args: argparse.Namespace) -> int:
    from aavs.datasets.audio_features import compute_features

    summary = compute_features(args.data, vggish=args.vggish, cache_dir=args.cache, vggish_pca=args.vggish_pca)
    emit(args, summary)  # without --json: the progress and log lines only
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    from aavs.datasets.score import render_scores, score_predictions

    scores = score_predictions(args.predictions, args.data, task=args.task, split=args.split)
    title = f"{args.task} / {args.split}: {args.predictions}"
    emit(args, scores, lambda console: render_scores(console, scores, title=title))
    return EXIT_OK


def register(sub: Subparsers) -> None:
    data = sub.add_parser("data", help="AVSBench data sets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a small learnable AVSBench-format data set")
    p.add_argument("out")
    p.add_argument("--videos-per-split", type=int, help="videos of each subset in each split (default 8)")
    p.add_argument(
        "--eval-videos-per-split", type=int, help="videos of each subset in val and test (default: as train)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout",
        choices=("avsbench-semantic", "avsbench-object"),
        default="avsbench-semantic",
        help="the release layout: AVSBench-semantic's (all subsets, the default) or AVSBench-object's (S4 and MS3)",
    )
    p.add_argument(
        "--shape",
        choices=("avsbench",),
        help="AVSBench-semantic's size and shape instead of the demo set: its videos per subset and split, "
        "71 classes with a long tail, frames at the releases' sizes (resumable; docs: README, data section)",
    )
    p.add_argument(
        "--scale", type=float, help="with --shape: this fraction (0 < F <= 1) of every subset and split (default 1)"
    )
    p.add_argument(
        "--shape-from", metavar="METADATA_CSV", help="the exact videos (uid, subset, split) of a real metadata.csv"
    )
    p.add_argument("--workers", type=int, help="with --shape: processes writing videos (default: every core)")
    p.set_defaults(func=cmd_data_synth)

    p = data.add_parser("check", help="validate a data root and report every problem")
    p.add_argument("data")
    add_json(p)
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("features", help="compute and cache the VGGish audio embeddings")
    p.add_argument("data")
    add_vggish(p)
    p.add_argument("--cache", default=None, help="cache folder (default: $AAVS_CACHE_DIR or ~/.cache/aavs/vggish)")
    add_json(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("score", help="metrics of predicted masks on disk")
    p.add_argument("predictions")
    p.add_argument("--data", required=True)
    p.add_argument("--task", required=True, choices=task_names())
    add_split(p)
    add_json(p)
    p.set_defaults(func=cmd_score)
