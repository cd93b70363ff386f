"""Commands that read a results folder: ``aavs leaderboard``, ``aavs report``, ``aavs logs`` and
``aavs check-results``. The leaderboard and the report refuse a folder with a link out of it before reading it
(:func:`aavs.orchestrator.results.check_tree`): it may come from someone else.

Each ``cmd_*`` imports the module it drives in its body (as in every module of the CLI), so that
``aavs --help`` does not import matplotlib, torch or the views.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from aavs.orchestrator.cli.common import EXIT_OK, add_json, console, emit, write_through

if TYPE_CHECKING:
    from aavs.orchestrator.cli.common import Subparsers


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from aavs.orchestrator.results import check_tree
    from aavs.orchestrator.views.leaderboard import load_leaderboard, render_leaderboard, select

    check_tree(args.results_dir)

    if args.watch and not args.json:
        from aavs.orchestrator.views.live import watch  # the live view only for --watch

        watch(args.results_dir, console(), args.stage, args.top)
        return EXIT_OK
    board = load_leaderboard(args.results_dir)
    shown = select(board, args.stage, args.top)  # an InputError for an unknown --stage or a bad --top
    emit(args, shown, lambda out: out.print(render_leaderboard(shown)))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from aavs.orchestrator.results import check_tree
    from aavs.orchestrator.views.figures import write_report

    check_tree(args.results_dir)  # (before the report writes into the folder, too)
    write_report(args.results_dir)
    return EXIT_OK


def cmd_check_results(args: argparse.Namespace) -> int:
    """Every file a reader reads, read through its record; exit status 2 naming the first bad one."""
    from aavs.orchestrator.results import check_folder

    trials = check_folder(args.results_dir)
    sys.stdout.write(f"{args.results_dir}: readable ({trials} trials)\n")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """A log file (``STAGE/TRIAL`` or ``STAGE/TASK``), or the list of them; ``--follow`` keeps printing
    new lines until the trial (or, for the list, the whole experiment) has ended."""
    from aavs.orchestrator.recipe import output_capture

    results = args.results_dir
    files: Callable[[], list[output_capture.LogFile]]
    done: Callable[[], bool]
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
        return EXIT_OK
    output_capture.follow(files, write_through, done, prefix)
    return EXIT_OK


def register(sub: Subparsers) -> None:
    p = sub.add_parser("leaderboard", help="rich table of trials and stages")
    p.add_argument("results_dir")
    p.add_argument("--watch", action="store_true", help="refresh in place as trials report")
    add_json(p)
    p.add_argument("--stage", default=None, help="only this stage")
    p.add_argument("--top", type=int, default=None, help="only the K best trials of each stage")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("report", help="write RESULTS/<name>/report: learning curves, per-class IoU, sample grids")
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "check-results",
        help="check a results folder (e.g. one someone sent): every file the readers read, links, its format",
    )
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_check_results)

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
