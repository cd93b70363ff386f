"""Data commands: ``aavs data synth``, ``aavs data check``, ``aavs features`` and ``aavs score``.

Each ``cmd_*`` imports the module it drives in its body (as in every module of the CLI), so that
``aavs --help`` does not import numpy, torch or the data readers.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from aavs.datasets.tasks import task_names
from aavs.orchestrator.cli.common import EXIT_INPUT, EXIT_OK, add_json, add_split, add_vggish, emit

if TYPE_CHECKING:
    from aavs.orchestrator.cli.common import Subparsers

log = logging.getLogger("aavs")


def cmd_data_synth(args: argparse.Namespace) -> int:
    from aavs.datasets.synth import write_synthetic_avsbench

    root = write_synthetic_avsbench(
        args.out,
        videos_per_split=args.videos_per_split,
        seed=args.seed,
        eval_videos_per_split=args.eval_videos_per_split,
        layout=args.layout,
    )
    log.info("wrote a synthetic AVSBench data set to %s", root)
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
    p.add_argument("--videos-per-split", type=int, default=8)
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
