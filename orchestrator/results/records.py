"""What every file of the results folder is made of: the statuses, the record base classes, and the
plumbing that reads and writes a record (a torn or missing file reads as None; one that is not its
record is an InputError naming it)."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from aavs.datasets import atomic
from aavs.datasets.errors import InputError

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, enum.Enum):
        """``enum.StrEnum`` before 3.11: members are their values, also in f-strings."""

        def __str__(self) -> str:
            return str(self.value)

        __format__ = str.__format__  # type: ignore[assignment]


class TrialStatus(StrEnum):
    """A trial's ``status.json`` status (a missing file: PENDING)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"  # a scheduler (ASHA) ended it early
    FAILED = "failed"
    # (format 2) stopped from outside, not by its own fault: by `aavs stop` or Ctrl-C, or by its
    # surroundings (a full disk); `aavs resume` continues it.
    INTERRUPTED = "interrupted"

    @property
    def ended(self) -> bool:
        """Nothing more will happen to the trial: done, stopped early or failed."""
        return self in (TrialStatus.DONE, TrialStatus.STOPPED, TrialStatus.FAILED)


class StageStatus(StrEnum):
    """A stage's status on the leaderboard (and the whole experiment's: the stages' together)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # every trial ended without a checkpoint

    @property
    def ended(self) -> bool:
        return self in (StageStatus.DONE, StageStatus.FAILED)


class Record(BaseModel):
    """A JSON file of the results folder. Unknown keys are kept (see the package docstring)."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object (Python mode: a NaN metric stays NaN, as ``json`` writes it)."""
        return self.model_dump()


class OpenRecord(Record):
    """A record whose keys are open-ended (metric names such as ``val/miou``), read by key; it is
    written with the keys it was given, no others."""

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: str) -> bool:
        return key in self.model_fields_set or key in (self.model_extra or {})


R = TypeVar("R", bound=Record)


def load_json(path: str | Path) -> Any:
    """The JSON of ``path``; None when it is missing or torn (a writer killed before atomic files; any
    text that is not JSON, or not UTF-8, reads so). Something there that cannot be read as a file (a
    folder) is an InputError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too many digits, too deep
        return None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None


def read_record(path: str | Path, record: type[R]) -> R | None:
    """``path`` as ``record``; None when missing or torn. A file that is not such a record is an
    InputError naming it (it was not written by aavs, or by an aavs of an unknown format)."""
    data = load_json(path)
    if data is None:
        return None
    try:
        return record.model_validate(data)
    except ValidationError as err:
        raise InputError(
            f"{path}: not a {record.__name__} record ({err.error_count()} problem(s): "
            f"{err.errors()[0]['loc']} {err.errors()[0]['msg']})"
        ) from None


def write_record(path: str | Path, record: Record) -> None:
    """``record`` as the file ``path``, written atomically."""
    atomic.write_json(path, record.to_json())
