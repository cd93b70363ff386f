"""``aavs run EXPERIMENT --dry-run``: is this experiment runnable as written? No results folder is made
(only the data check's cache is written).

The experiment file is parsed and validated (with its ``--set`` overrides), and its data root checked
(:func:`aavs.datasets.check.check_data_root`, cached by :mod:`aavs.datasets.check_cache`). A synthetic
data set is generated at run time, so it has nothing to check yet. ``aavs run`` runs the same data check
before any trial starts (:func:`require_clean_data`).
"""

from __future__ import annotations

from pathlib import Path

from aavs.datasets.check import Problem
from aavs.datasets.check_cache import cached_check_data_root
from aavs.datasets.errors import InputError
from aavs.orchestrator.experiment.spec import ExperimentSpec, load_spec

SHOWN = 10  # problems of a data root quoted in ``aavs run``'s refusal (`aavs data check` lists all)


def experiment_problems(path: str | Path, overrides: list[str] | None = None) -> list[str]:
    """Every problem found, one line each naming the file and key, or the data file; empty: runnable."""
    try:
        spec, _ = load_spec(path, overrides)
    except InputError as err:
        return str(err).splitlines()
    return [f"{path}: data.root: {_line(p)}" for p in data_problems(spec)]


def data_problems(spec: ExperimentSpec) -> list[Problem]:
    """The problems of the spec's data root; none for a synthetic set (written by the run itself)."""
    return [] if spec.data.root is None else cached_check_data_root(spec.data.root)


def _line(problem: Problem) -> str:
    """A problem as one line: a line break or other control character in a file name or message (a
    metadata.csv field may hold one) is shown escaped."""
    text = f"{problem.path}: {problem.message}"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def require_clean_data(spec: ExperimentSpec) -> None:
    """An InputError quoting the data root's first problems, before any trial starts."""
    problems = data_problems(spec)
    if problems:
        shown = "\n".join(f"  {_line(p)}" for p in problems[:SHOWN])
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise InputError(
            f"data.root {spec.data.root}: {len(problems)} problem(s); `aavs data check "
            f"{spec.data.root}` lists them all:\n{shown}{more}"
        )
