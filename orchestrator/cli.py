"""The `aavs` command line.

Each sub-command parses its arguments here and calls one library function; the functions live
beside the code they drive (data commands in ``aavs.datasets``, model commands in ``aavs.models``,
experiments in ``aavs.orchestrator``). Imports are lazy so ``aavs --help`` stays fast.

Exit status: 0 on success, 2 on bad input (one line on stderr naming the file, key or value), 1 on an
internal failure. ``--json`` prints exactly one JSON object on stdout and nothing else there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Sequence

from aavs.datasets.errors import InputError

log = logging.getLogger("aavs")

TASKS = ("s4", "ms3", "avss")


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _console():
    from rich.console import Console

    return Console(stderr=False)


# ---------------------------------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> int:
    from aavs.datasets.synth import write_synthetic_avsbench

    root = write_synthetic_avsbench(args.out, videos_per_split=args.videos_per_split, seed=args.seed)
    log.info("wrote a synthetic AVSBench data set to %s", root)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from aavs.datasets.check import check_data_root, render_problems

    problems = check_data_root(args.data)
    if args.json:
        _print_json({"data": str(args.data), "problems": [p.as_dict() for p in problems]})
    else:
        render_problems(_console(), args.data, problems)
    return 2 if problems else 0


def cmd_features(args: argparse.Namespace) -> int:
    from aavs.datasets.audio_features import compute_features

    summary = compute_features(args.data, vggish=args.vggish, cache_dir=args.cache, vggish_pca=args.vggish_pca)
    if args.json:
        _print_json(summary)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from aavs.datasets.score import render_scores, score_predictions

    scores = score_predictions(args.predictions, args.data, task=args.task, split=args.split)
    if args.json:
        _print_json(scores)
    else:
        render_scores(_console(), scores, title=f"{args.task} / {args.split}: {args.predictions}")
    return 0


# --------------------------------------------------------------------------------------- model
def cmd_model_info(args: argparse.Namespace) -> int:
    from aavs.models.info import model_info, render_model_info

    info = model_info(preset=args.preset, pretrained=args.pretrained, task=args.task)
    if args.json:
        _print_json({k: info[k] for k in ("total_params", "trainable_params", "adapter_params")})
    else:
        render_model_info(_console(), info)
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from aavs.models.checkpoint import import_released_checkpoint

    out = import_released_checkpoint(args.released, base=args.base, task=args.task, out=args.out)
    log.info("wrote %s", out)
    return 0


# ------------------------------------------------------------------------------------- parsing
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aavs", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="AVSBench data sets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a small learnable AVSBench-format data set")
    p.add_argument("out")
    p.add_argument("--videos-per-split", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("check", help="validate a data root and report every problem")
    p.add_argument("data")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("features", help="compute and cache the VGGish audio embeddings")
    p.add_argument("data")
    p.add_argument("--vggish", default=None, help="converted VGGish weights (.pth); random init without")
    p.add_argument("--vggish-pca", default=None, help="VGGish PCA parameters (.pth or .npz), with --vggish")
    p.add_argument("--cache", default=None, help="cache folder (default: $AAVS_CACHE_DIR or ~/.cache/aavs/vggish)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("score", help="metrics of predicted masks on disk")
    p.add_argument("predictions")
    p.add_argument("--data", required=True)
    p.add_argument("--task", required=True, choices=TASKS + ("avss-binary",))
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("model-info", help="architecture summary and parameter counts")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", choices=("tiny", "swin-base"))
    g.add_argument("--pretrained", help="local Mask2Former checkpoint folder (Hugging Face format)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("import-checkpoint", help="convert a released Stepping Stones .pth to our format")
    p.add_argument("released")
    p.add_argument("--base", required=True, help="the Mask2Former folder the release was trained from")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_import_checkpoint)
    return parser


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=__import__("rich.console").console.Console(stderr=True), show_path=False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as err:
        sys.stderr.write(f"aavs: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("aavs: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
