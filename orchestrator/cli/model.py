"""Model commands, on a preset or a checkpoint: ``aavs model-info``, ``aavs import-checkpoint``,
``aavs evaluate`` and ``aavs predict``.

The networks are reached through :mod:`aavs.models.registry`: ``--type`` names the model type of a
new network (``model-info``, ``import-checkpoint``; AAVS by default), and a checkpoint's own record
names its type (``evaluate``, ``predict``). Each ``cmd_*`` imports the module it drives in its body (as in every
module of the CLI), so that ``aavs --help`` does not import torch or transformers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from aavs.datasets.errors import InputError
from aavs.datasets.layout import class_names
from aavs.datasets.tasks import task_names
from aavs.models.registry import DEFAULT_TYPE, get_model_type, model_presets, model_types
from aavs.orchestrator.cli.common import (
    EXIT_INPUT,
    EXIT_OK,
    add_data_classes,
    add_json,
    add_split,
    add_vggish,
    emit,
)

if TYPE_CHECKING:
    from aavs.orchestrator.cli.common import Subparsers

log = logging.getLogger("aavs")

INFO_JSON_KEYS = ("total_params", "trainable_params", "adapter_params")  # what `model-info --json` prints


def _data_classes(data: str | None) -> tuple[str, ...] | None:
    """The semantic classes of ``--data`` (its label2idx.json); None without it (AVSBench's 71)."""
    return None if data is None else class_names(data)


def cmd_model_info(args: argparse.Namespace) -> int:
    model_type = get_model_type(args.type)
    if args.preset is not None and args.preset not in model_type.presets:
        raise InputError(
            f"--preset {args.preset}: model type {model_type.name} has the presets {', '.join(model_type.presets)}"
        )
    info = model_type.function("info")(
        preset=args.preset, pretrained=args.pretrained, task=args.task, classes=_data_classes(args.data)
    )
    render = model_type.function("render_info")
    emit(args, {k: info[k] for k in INFO_JSON_KEYS}, lambda console: render(console, info))
    return EXIT_OK


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    out = get_model_type(args.type).function("import_released")(
        args.released, base=args.base, task=args.task, out=args.out, classes=_data_classes(args.data)
    )
    log.info("wrote %s", out)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from aavs.datasets.score import render_scores
    from aavs.orchestrator.recipe.evaluation import evaluate_checkpoint

    scores = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        task=args.task,
        split=args.split,
        prior=args.prior,
        save_masks=args.save_masks,
        base=args.base,
        vggish=args.vggish,
        vggish_pca=args.vggish_pca,
    )
    title = f"{args.checkpoint} on {args.split}"
    emit(args, scores, lambda console: render_scores(console, scores, title=title))
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 2 when any video failed (each is named on stderr); the others are still written."""
    from aavs.orchestrator.predict import model_source, predict_videos

    source = model_source(
        args.checkpoint,
        args.prior_checkpoint,
        args.experiment,
        args.stage,
        args.base,
        args.vggish,
        args.vggish_pca,
        args.cache,
    )
    summary = predict_videos(
        args.inputs,
        args.out,
        source,
        overwrite=args.overwrite,
        use_ray=args.ray,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        recursive=args.recursive,
        overlay_height=None if args.no_overlay else args.overlay_height,
    )
    emit(
        args,
        summary,
        lambda _: log.info(
            "%d videos predicted, %d skipped, %d failed (%d s of video in %.1f s) -> %s",
            summary["done"],
            summary["skipped"],
            summary["failed"],
            summary["seconds"],
            summary["wall_s"],
            args.out,
        ),
    )
    for video in summary["videos"]:
        if video["status"] == "failed":
            sys.stderr.write(f"aavs: failed: {video['error']}\n")
    return EXIT_INPUT if summary["failed"] else EXIT_OK


def add_model_type(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--type", default=DEFAULT_TYPE, choices=model_types(), help=f"the model type (default {DEFAULT_TYPE})"
    )


def register(sub: Subparsers) -> None:
    p = sub.add_parser("model-info", help="architecture summary and parameter counts")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help=f"a preset of the model type ({DEFAULT_TYPE}: {', '.join(model_presets())})")
    g.add_argument("--pretrained", help="local Mask2Former checkpoint folder (Hugging Face format)")
    add_model_type(p)
    p.add_argument("--task", required=True, choices=task_names(standalone_only=True))
    add_data_classes(p)
    add_json(p)
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("import-checkpoint", help="convert a released .pth (Stepping Stones, AVSBench) to our format")
    p.add_argument("released")
    p.add_argument(
        "--base",
        default=None,
        help="aavs: the Mask2Former folder (or preset) the release was trained from (required); "
        "avsbench: its backbone preset, read from the file when left out",
    )
    add_model_type(p)
    p.add_argument("--task", required=True, choices=task_names(standalone_only=True))
    p.add_argument("--out", required=True)
    add_data_classes(p)
    p.set_defaults(func=cmd_import_checkpoint)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on one split (and its masks)")
    p.add_argument("checkpoint", help="our checkpoint folder, or a released .pth with --base and --task")
    p.add_argument("--data", required=True)
    p.add_argument("--task", choices=task_names(), default=None, help="default: the checkpoint's own task")
    add_split(p)
    p.add_argument("--prior", default=None, help="stage one's masks folder (AVSS)")
    p.add_argument("--save-masks", default=None, help="write the predicted masks here")
    p.add_argument("--base", default=None, help="Mask2Former folder (released .pth only)")
    add_vggish(p)
    add_json(p)
    p.set_defaults(func=cmd_evaluate)

    _register_predict(sub)


def _overlay_height(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 16 <= value <= 4320:
        raise argparse.ArgumentTypeError(f"expected a height in pixels from 16 to 4320, got {text!r}")
    return value


def _register_predict(sub: Subparsers) -> None:
    p = sub.add_parser("predict", help="sounding-object masks, overlay and timeline of any video")
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_DIR", help="video files, or folders of them")
    p.add_argument("--out", required=True, help="writes OUT/<video name>/ (masks/, overlay.mp4, timeline.json)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--experiment", help="results/<name>: its best checkpoints, stage one feeding stage two")
    g.add_argument("--checkpoint", help="our checkpoint folder (aavs import-checkpoint converts a release)")
    p.add_argument("--stage", default=None, help="with --experiment: this stage (default: the last one with a prior)")
    p.add_argument("--prior-checkpoint", default=None, help="with --checkpoint: the stage-one network feeding it")
    p.add_argument("--base", default=None, help="Mask2Former folder, when the checkpoint's base has moved")
    add_vggish(p, "converted VGGish weights (default: the experiment's; random init)")
    p.add_argument(
        "--cache", default=None, help="embedding cache folder (default: the experiment's, or $AAVS_CACHE_DIR)"
    )
    p.add_argument("--overwrite", action="store_true", help="redo videos whose output folder exists")
    p.add_argument(
        "--no-recursive",
        dest="recursive",
        action="store_false",
        help="a folder's own videos only (default: its subfolders' too, OUT keeping their relative paths)",
    )
    p.add_argument("--no-overlay", action="store_true", help="masks and timeline.json only, no overlay.mp4")
    p.add_argument(
        "--overlay-height",
        type=_overlay_height,
        default=0,
        help="overlay.mp4's height in pixels (default: the input's)",
    )
    p.add_argument("--ray", action="store_true", help="run as a Ray Data pipeline (decode, embed, predict, write)")
    p.add_argument("--actors", type=int, default=1, help="--ray: prediction actors (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="--ray: GPUs per prediction actor (default 0)")
    add_json(p)
    p.set_defaults(func=cmd_predict)
