"""What the command groups share: exit statuses, the flags several commands take, and one way to print a
result (:func:`emit`: one JSON object on stdout with ``--json``, else a rich rendering).

Only light modules are imported here, as in every module of the CLI: ``aavs --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aavs.datasets.layout import SPLITS

if TYPE_CHECKING:
    from typing import TypeAlias

    from rich.console import Console

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

# Exit statuses (docs/architecture.md): bad input names the file, key or value in one line on stderr.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, or `aavs stop`: `aavs resume` continues

Command = Callable[[argparse.Namespace], int]

# The embeddings default to VGGish's raw last-fc output, as the reference feeds them (docs/method.md
# §2); the AudioSet post-processing is a different feature space, only on request.
VGGISH_HELP = "converted VGGish weights (.pth); random init without"
VGGISH_PCA_HELP = (
    "opt-in: AudioSet post-processing (PCA, clip, 8-bit quantise) with these PCA parameters "
    "(.pth or .npz; needs --vggish) instead of the raw last-fc output"
)
FORCE_HELP = (
    "take over the results folder's lock left by a run on another host (that run must be gone; "
    "a stale lock of this host is taken over without it)"
)
SET_HELP = "override a key of the file"
DATA_CLASSES_HELP = "a data root whose label2idx.json names the avss classes (default: AVSBench's 71)"


# ------------------------------------------------------------------------------------------- flags
def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")


def add_vggish(parser: argparse.ArgumentParser, vggish_help: str = VGGISH_HELP) -> None:
    """``--vggish`` and ``--vggish-pca``: the audio encoder's weights and its optional post-processing."""
    parser.add_argument("--vggish", default=None, help=vggish_help)
    parser.add_argument("--vggish-pca", default=None, help=VGGISH_PCA_HELP)


def add_set(parser: argparse.ArgumentParser) -> None:
    """``--set KEY.PATH=VALUE``, repeatable: overrides of the experiment file."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help=SET_HELP)


def add_results(parser: argparse.ArgumentParser, results_help: str = "results root (default: ./results)") -> None:
    parser.add_argument("--results", default="results", help=results_help)


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def add_split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="test", choices=SPLITS)


def add_data_classes(parser: argparse.ArgumentParser) -> None:
    """``--data``, optional: the data root whose class names size a semantic network."""
    parser.add_argument("--data", default=None, help=DATA_CLASSES_HELP)


# ------------------------------------------------------------------------------------------ output
def console() -> Console:
    """A rich console on stdout."""
    from rich.console import Console  # rich's console is imported on first output, not for --help

    return Console(stderr=False)


def print_json(obj: Any) -> None:
    """``obj`` as one JSON line on stdout (keys sorted), flushed."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def emit(args: argparse.Namespace, data: Any, render: Callable[[Console], object] | None = None) -> None:
    """With ``--json``: ``data`` as the one JSON object on stdout. Else ``render`` it on a console (a
    table, or a log line; nothing without ``render``)."""
    if args.json:
        print_json(data)
    elif render is not None:
        render(console())


def write_through(text: str) -> None:
    """``text`` on stdout as it comes (followed logs)."""
    sys.stdout.write(text)
    sys.stdout.flush()
