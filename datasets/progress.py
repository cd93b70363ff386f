"""One progress bar for the long loops of the data layer (decoding, checking, embedding)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import rich.progress
from rich.console import Console

T = TypeVar("T")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """``items``, with a transient bar on stderr while they are consumed. Only on a terminal: on a pipe
    or in a log file a bar would only leave an empty line (stdout stays free for ``--json``)."""
    console = Console(stderr=True)
    yield from rich.progress.track(
        items, description=description, total=total, console=console, transient=True, disable=not console.is_terminal
    )
