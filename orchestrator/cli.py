"""The `aavs` command line.

Each sub-command parses its arguments here and calls one library function; the functions live
beside the code they drive (data commands in ``aavs.datasets``, model commands in ``aavs.models``,
experiments in ``aavs.orchestrator``). Imports are lazy so ``aavs --help`` stays fast.

Exit status: 0 on success, 2 on bad input (one line on stderr naming the file, key or value), 1 on an
internal failure. ``--json`` prints exactly one JSON object on stdout and nothing else there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aavs.datasets.atomic import NoSpaceLeft
from aavs.datasets.errors import InputError
from aavs.datasets.tasks import task_names
from aavs.orchestrator.experiment.stopping import ExperimentStopped

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("aavs")

DEFAULT_JOB_API = "http://127.0.0.1:8265"  # the dashboard's job API on a head started as cluster/README.md says
# The embeddings default to VGGish's raw last-fc output, as the reference feeds them (docs/method.md
# §2); the AudioSet post-processing is a different feature space, only on request.
VGGISH_PCA_HELP = (
    "opt-in: AudioSet post-processing (PCA, clip, 8-bit quantise) with these PCA parameters "
    "(.pth or .npz; needs --vggish) instead of the raw last-fc output"
)
FORCE_HELP = (
    "take over the results folder's lock left by a run on another host (that run must be gone; "
    "a stale lock of this host is taken over without it)"
)
DATA_CLASSES_HELP = "a data root whose label2idx.json names the avss classes (default: AVSBench's 71)"


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _console():
    from rich.console import Console

    return Console(stderr=False)


# ---------------------------------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> int:
    from aavs.datasets.synth import write_synthetic_avsbench

    root = write_synthetic_avsbench(
        args.out,
        videos_per_split=args.videos_per_split,
        seed=args.seed,
        eval_videos_per_split=args.eval_videos_per_split,
    )
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

    info = model_info(preset=args.preset, pretrained=args.pretrained, task=args.task, classes=_data_classes(args.data))
    if args.json:
        _print_json({k: info[k] for k in ("total_params", "trainable_params", "adapter_params")})
    else:
        render_model_info(_console(), info)
    return 0


def _data_classes(data: str | None) -> tuple[str, ...] | None:
    """The semantic classes of ``--data`` (its label2idx.json); None without it (AVSBench's 71)."""
    from aavs.datasets.layout import class_names

    return None if data is None else class_names(data)


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from aavs.models.checkpoint import import_released_checkpoint

    out = import_released_checkpoint(
        args.released, base=args.base, task=args.task, out=args.out, classes=_data_classes(args.data)
    )
    log.info("wrote %s", out)
    return 0


# --------------------------------------------------------------------------------- experiments
def cmd_evaluate(args: argparse.Namespace) -> int:
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
    if args.json:
        _print_json(scores)
    else:
        from aavs.datasets.score import render_scores

        render_scores(_console(), scores, title=f"{args.checkpoint} on {args.split}")
    return 0


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
    )
    if args.json:
        _print_json(summary)
    else:
        log.info(
            "%d videos predicted, %d skipped, %d failed (%d s of video in %.1f s) -> %s",
            summary["done"],
            summary["skipped"],
            summary["failed"],
            summary["seconds"],
            summary["wall_s"],
            args.out,
        )
    for video in summary["videos"]:
        if video["status"] == "failed":
            sys.stderr.write(f"aavs: failed: {video['error']}\n")
    return 2 if summary["failed"] else 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    from aavs.orchestrator.experiment.stages import run_experiment
    from aavs.orchestrator.views.leaderboard import load_leaderboard, render_leaderboard

    if args.print_config:
        import yaml

        from aavs.orchestrator.experiment.spec import load_spec
        from aavs.orchestrator.experiment.stages import effective_config

        spec, _ = load_spec(args.experiment, args.set)
        sys.stdout.write(
            yaml.safe_dump(effective_config(spec, args.results), sort_keys=False, allow_unicode=True, width=1000)
        )
        return 0
    with _run_console() as console:
        results = run_experiment(
            args.experiment,
            overrides=args.set,
            results_root=args.results,
            local=args.local,
            console=console,
            verbose=args.verbose,
            force=args.force,
        )
        console.print(render_leaderboard(load_leaderboard(results)), soft_wrap=True)
        _logs_hint(console, results)
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    """``aavs run --dry-run``: every problem of the experiment file and its data root on stderr, one a
    line; exit status 2 if there is any. No results folder is made."""
    from aavs.orchestrator.experiment.validate import experiment_problems

    problems = experiment_problems(args.experiment, args.set)
    for line in problems:
        sys.stderr.write(f"aavs: error: {line}\n")
    if problems:
        return 2
    sys.stdout.write(f"{args.experiment}: valid\n")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from aavs.orchestrator.experiment.spec import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from aavs.orchestrator.experiment.stages import resume_experiment
    from aavs.orchestrator.views.leaderboard import load_leaderboard, render_leaderboard

    with _run_console() as console:
        results = resume_experiment(
            args.results_dir, local=args.local, console=console, verbose=args.verbose, force=args.force
        )
        console.print(render_leaderboard(load_leaderboard(results)), soft_wrap=True)
        _logs_hint(console, results)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from aavs.orchestrator.experiment.stages import results_path
    from aavs.orchestrator.experiment.stopping import request_stop

    sys.stdout.write(request_stop(results_path(args.results_dir)) + "\n")
    return 0


@contextlib.contextmanager
def _run_console() -> Iterator[Console]:
    """The console of ``aavs run``/``resume``, on a duplicate of stdout's descriptor: a ``--local``
    trial points descriptors 1 and 2 at its log file, and the live view must stay on the terminal."""
    from rich.console import Console

    try:
        fd = os.dup(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stdout without a descriptor (a test's capture)
        fd = None
    if fd is None:  # this object, not whatever sys.stdout is while a trial runs
        yield Console(file=sys.stdout)
        return
    with open(fd, "w", encoding="utf-8", buffering=1) as out:
        yield Console(file=out)


def _logs_hint(console: Console, results: Path) -> None:
    from aavs.orchestrator.views.live import plain_line

    plain_line(console, f"trial logs: aavs logs {results} [STAGE/TRIAL]")


def cmd_logs(args: argparse.Namespace) -> int:
    """A log file (``STAGE/TRIAL`` or ``STAGE/TASK``), or the list of them; ``--follow`` keeps printing
    new lines until the trial (or, for the list, the whole experiment) has ended."""
    from aavs.orchestrator.recipe import output_capture

    results = args.results_dir
    if args.target:
        target = output_capture.resolve(results, args.target)
        files, done, prefix = (lambda: [target]), (lambda: not args.follow or output_capture.trial_done(target)), False
    elif args.follow:
        files, done, prefix = (
            (lambda: output_capture.log_files(results)),
            (lambda: output_capture.experiment_done(results)),
            True,
        )
    else:
        rows = output_capture.log_files(results)
        width = max((len(f.label) for f in rows), default=0)
        for f in rows:
            sys.stdout.write(f"{f.label:<{width}}  {f.status:<8} {f.path.stat().st_size:>9} B  {f.path}\n")
        if not rows:
            sys.stdout.write(f"no log files yet in {results}\n")
        return 0
    output_capture.follow(files, _write_through, done, prefix)
    return 0


def _write_through(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_submit(args: argparse.Namespace) -> int:
    """Exit status 0 once submitted (with --follow: when the job SUCCEEDED), 1 when it did not succeed."""
    from aavs.orchestrator.experiment import submit

    job = submit.prepare_submission(
        args.experiment, args.set, results=args.results, working_dir=args.working_dir, runtime_env_file=args.runtime_env
    )
    client = submit.connect(args.address, insecure=args.insecure)
    job_id = submit.submit(client, job)
    sys.stdout.write(job_id + "\n")
    sys.stdout.flush()
    if not args.follow:
        return 0
    status = submit.follow(client, job_id, _write_through)
    log.info("job %s: %s", job_id, status.value)
    from aavs.orchestrator.results import LEADERBOARD_FILE

    if (job.results_dir / LEADERBOARD_FILE).is_file():
        from aavs.orchestrator.views.leaderboard import load_leaderboard, render_leaderboard

        _console().print(render_leaderboard(load_leaderboard(job.results_dir)))
    else:
        log.warning(
            "%s is not visible from this machine: run `aavs leaderboard` where the cluster's storage is mounted",
            job.results_dir,
        )
    return 0 if status.value == "SUCCEEDED" else 1


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from aavs.orchestrator.views.leaderboard import load_leaderboard, render_leaderboard, select
    from aavs.orchestrator.views.live import watch

    if args.json:
        _print_json(select(load_leaderboard(args.results_dir), args.stage, args.top))
    elif args.watch:
        watch(args.results_dir, _console(), args.stage, args.top)
    else:
        _console().print(render_leaderboard(load_leaderboard(args.results_dir), args.stage, args.top))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from aavs.orchestrator.views.figures import write_report

    write_report(args.results_dir)
    return 0


# ------------------------------------------------------------------------------------- parsing
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aavs", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging; `run`/`resume`: the trials' output also on this terminal",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="AVSBench data sets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a small learnable AVSBench-format data set")
    p.add_argument("out")
    p.add_argument("--videos-per-split", type=int, default=8)
    p.add_argument(
        "--eval-videos-per-split", type=int, help="videos of each subset in val and test (default: as train)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("check", help="validate a data root and report every problem")
    p.add_argument("data")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("features", help="compute and cache the VGGish audio embeddings")
    p.add_argument("data")
    p.add_argument("--vggish", default=None, help="converted VGGish weights (.pth); random init without")
    p.add_argument("--vggish-pca", default=None, help=VGGISH_PCA_HELP)
    p.add_argument("--cache", default=None, help="cache folder (default: $AAVS_CACHE_DIR or ~/.cache/aavs/vggish)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("score", help="metrics of predicted masks on disk")
    p.add_argument("predictions")
    p.add_argument("--data", required=True)
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("model-info", help="architecture summary and parameter counts")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", choices=("tiny", "swin-base"))
    g.add_argument("--pretrained", help="local Mask2Former checkpoint folder (Hugging Face format)")
    p.add_argument("--task", required=True, choices=task_names(standalone_only=True))
    p.add_argument("--data", default=None, help=DATA_CLASSES_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("import-checkpoint", help="convert a released Stepping Stones .pth to our format")
    p.add_argument("released")
    p.add_argument("--base", required=True, help="the Mask2Former folder the release was trained from")
    p.add_argument("--task", required=True, choices=task_names(standalone_only=True))
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None, help=DATA_CLASSES_HELP)
    p.set_defaults(func=cmd_import_checkpoint)
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on one split (and its masks)")
    p.add_argument("checkpoint", help="our checkpoint folder, or a released .pth with --base and --task")
    p.add_argument("--data", required=True)
    p.add_argument("--task", choices=task_names(), default=None, help="default: the checkpoint's own task")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--prior", default=None, help="stage one's masks folder (AVSS)")
    p.add_argument("--save-masks", default=None, help="write the predicted masks here")
    p.add_argument("--base", default=None, help="Mask2Former folder (released .pth only)")
    p.add_argument("--vggish", default=None, help="converted VGGish weights (.pth); random init without")
    p.add_argument("--vggish-pca", default=None, help=VGGISH_PCA_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="sounding-object masks, overlay and timeline of any video")
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_DIR", help="video files, or folders of them")
    p.add_argument("--out", required=True, help="writes OUT/<video name>/ (masks/, overlay.mp4, timeline.json)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--experiment", help="results/<name>: its best checkpoints, stage one feeding stage two")
    g.add_argument("--checkpoint", help="our checkpoint folder (aavs import-checkpoint converts a release)")
    p.add_argument("--stage", default=None, help="with --experiment: this stage (default: the last one with a prior)")
    p.add_argument("--prior-checkpoint", default=None, help="with --checkpoint: the stage-one network feeding it")
    p.add_argument("--base", default=None, help="Mask2Former folder, when the checkpoint's base has moved")
    p.add_argument("--vggish", default=None, help="converted VGGish weights (default: the experiment's; random init)")
    p.add_argument("--vggish-pca", default=None, help=VGGISH_PCA_HELP)
    p.add_argument(
        "--cache", default=None, help="embedding cache folder (default: the experiment's, or $AAVS_CACHE_DIR)"
    )
    p.add_argument("--overwrite", action="store_true", help="redo videos whose output folder exists")
    p.add_argument("--ray", action="store_true", help="run as a Ray Data pipeline (decode, embed, predict, write)")
    p.add_argument("--actors", type=int, default=1, help="--ray: prediction actors (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="--ray: GPUs per prediction actor (default 0)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("run", help="run an experiment: every stage, Ray Tune trials, best checkpoint hand-over")
    p.add_argument("experiment")
    p.add_argument("--local", action="store_true", help="no Ray: trials one after another in this process")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a key of the file")
    p.add_argument("--results", default="results", help="results root (default: ./results)")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print every stage's training config with the method's defaults, and run nothing",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the file and check its data root, run nothing (exit status 2 on any problem); "
        "writes only the data check's cache ($AAVS_CACHE_DIR/data-check)",
    )
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("schema", help="the experiment file's JSON Schema (every key, its type and default)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("resume", help="continue an interrupted experiment (in the mode it was started in)")
    p.add_argument("results_dir")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--local",
        dest="local",
        action="store_true",
        default=None,
        help="continue in this process, whatever the run was started with",
    )
    mode.add_argument("--ray", dest="local", action="store_false", help="continue on Ray")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("stop", help="ask a running experiment to stop (`aavs resume` continues it)")
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("submit", help="run an experiment on a Ray cluster (Ray job submission)")
    p.add_argument("experiment", help="experiment file inside the working directory")
    p.add_argument("--address", default=DEFAULT_JOB_API, help=f"the cluster's job API (default: {DEFAULT_JOB_API})")
    p.add_argument("--follow", action="store_true", help="stream the job's logs, then show the leaderboard")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a key of the file")
    p.add_argument(
        "--results",
        default="results",
        help="results root, a path every node sees (made absolute here; default: ./results)",
    )
    p.add_argument("--working-dir", default=".", help="folder uploaded with the job (default: .)")
    p.add_argument("--runtime-env", default=None, help="a Ray runtime_env YAML to start from (pip, env_vars ...)")
    p.add_argument(
        "--insecure", action="store_true", help="submit to a job API on another host without a token (RAY_AUTH_TOKEN)"
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("leaderboard", help="rich table of trials and stages")
    p.add_argument("results_dir")
    p.add_argument("--watch", action="store_true", help="refresh in place as trials report")
    p.add_argument("--json", action="store_true")
    p.add_argument("--stage", default=None, help="only this stage")
    p.add_argument("--top", type=int, default=None, help="only the K best trials of each stage")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("report", help="write RESULTS/<name>/report: learning curves, per-class IoU, sample grids")
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("logs", help="the trials' and tasks' output (without TARGET: the list of log files)")
    p.add_argument("results_dir")
    p.add_argument(
        "target",
        nargs="?",
        default=None,
        metavar="STAGE/TRIAL",
        help="a trial (localize/t000) or a stage's task (localize/masks, localize/test, localize/report)",
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new lines until the trial ends (without TARGET: every log, until the run ends)",
    )
    p.set_defaults(func=cmd_logs)
    return parser


class _PlainHandler(logging.StreamHandler):
    """A record as one plain line on (the current) stderr: a pipe or a CI log gets no wrapping and no
    colour codes."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(verbose: bool) -> None:
    """Our messages on stderr (stdout stays free for --json): through rich on a terminal, plain lines
    elsewhere. Other libraries keep their own logging setup, and the root logger is left alone."""
    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("aavs")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, (RichHandler, _PlainHandler)) for h in logger.handlers):
        console = Console(stderr=True)
        logger.addHandler(RichHandler(console=console, show_path=False) if console.is_terminal else _PlainHandler())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as err:
        sys.stderr.write(f"aavs: error: {err}\n")
        return 2
    except ExperimentStopped as err:
        sys.stderr.write(f"aavs: {err}\n")
        return 130
    except NoSpaceLeft as err:
        sys.stderr.write(f"aavs: error: {err.strerror}; free some space, then `aavs resume`\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("aavs: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
