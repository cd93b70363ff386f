"""The `aavs` command line.

Each sub-command parses its arguments and calls one library function; the functions live beside the
code they drive (data commands in ``aavs.datasets``, model commands in ``aavs.models``, experiments in
``aavs.orchestrator``). One module per command group, each with its ``cmd_*`` functions and a
``register(subparsers)`` that adds its parsers: :mod:`.data`, :mod:`.model`, :mod:`.experiment` and
:mod:`.views`; :mod:`.common` holds the shared flags and the ``--json``-or-table output.

Imports of the libraries are deferred into the ``cmd_*`` bodies, so ``aavs --help`` stays fast.

Exit status: 0 on success, 2 on bad input (one line on stderr naming the file, key or value), 1 on an
internal failure, 130 when interrupted or stopped. ``--json`` prints exactly one JSON object on stdout
and nothing else there.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aavs.datasets.atomic import NoSpaceLeft
from aavs.datasets.errors import InputError
from aavs.orchestrator.cli import data, experiment, model, views
from aavs.orchestrator.cli.common import EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, Command
from aavs.orchestrator.experiment.stopping import ExperimentStopped
from aavs.orchestrator.recipe import kernels

__all__ = ["build_parser", "main"]

# The groups in the order `aavs --help` lists their commands.
GROUPS = (data, model, experiment, views)


def build_parser() -> argparse.ArgumentParser:
    description = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="aavs", description=description)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging; `run`/`resume`: the trials' output also on this terminal",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
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
    from rich.console import Console  # rich's console and logging are imported after parsing, not for --help
    from rich.logging import RichHandler

    logger = logging.getLogger("aavs")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, (RichHandler, _PlainHandler)) for h in logger.handlers):
        console = Console(stderr=True)
        logger.addHandler(RichHandler(console=console, show_path=False) if console.is_terminal else _PlainHandler())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (an uncaught exception is the internal failure, status 1).

    Without ``argv`` (a program's start: the ``aavs`` script, ``python -m aavs.orchestrator.cli``, a Ray
    job's entrypoint) the math libraries' CPU code paths are pinned first, before anything imports torch
    (aavs.orchestrator.recipe.kernels); a caller that passes ``argv`` (a notebook, the tests) has its
    libraries loaded already and keeps its environment as it is."""
    replaced: dict[str, str] = {}
    if argv is None:
        try:
            replaced = kernels.pin_kernels()
        except InputError as err:
            sys.stderr.write(f"aavs: error: {err}\n")
            return EXIT_INPUT
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    if replaced:
        logging.getLogger("aavs").info(
            "kernel pins replace %s (the same numbers on every AVX2 machine; %s=1 keeps yours)",
            ", ".join(f"{name}={value}" for name, value in replaced.items()),
            kernels.FAST_KERNELS,
        )
    func: Command = args.func
    try:
        return func(args)
    except InputError as err:
        sys.stderr.write(f"aavs: error: {err}\n")
        return EXIT_INPUT
    except ExperimentStopped as err:
        sys.stderr.write(f"aavs: {err}\n")
        return EXIT_INTERRUPTED
    except NoSpaceLeft as err:
        sys.stderr.write(f"aavs: error: {err.strerror}; free some space, then `aavs resume`\n")
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        sys.stderr.write("aavs: interrupted\n")
        return EXIT_INTERRUPTED
