"""The one seam from the driver to the views: what a run shows and writes for people while it runs
(the live view, ``leaderboard.json``) and after each stage (the report's pictures). Nothing else under
``experiment/`` imports :mod:`aavs.orchestrator.views`."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aavs.orchestrator.views.figures import write_report
from aavs.orchestrator.views.leaderboard import write_leaderboard
from aavs.orchestrator.views.live import LiveView

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)


def watching(results_dir: Path, console: Console | None) -> AbstractContextManager[Any]:
    """While the stages run: leaderboard.json kept current as trials report, and progress and the
    leaderboard drawn on ``console`` (None: nothing drawn)."""
    return LiveView(results_dir, console)


def trials_ended(results_dir: Path) -> None:
    """A stage's search ended: the leaderboard as it stands."""
    write_leaderboard(results_dir)


def stage_ended(results_dir: Path) -> None:
    """A stage completed (its best.json written): the leaderboard, then the report's pictures (drawn from
    what the stage's tasks wrote); if they fail, the stage's results stand and the run goes on."""
    write_leaderboard(results_dir)
    try:
        write_report(results_dir)
    except Exception:  # noqa: BLE001 - a missing picture must not cost the experiment
        log.exception("writing the report failed; `aavs report %s` tries again", results_dir)
