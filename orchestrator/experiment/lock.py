"""One ``aavs run``/``resume`` per results folder: ``results/<name>/lock.json``.

Two drivers on one folder would sample, run and supersede the same trials at once and tear each
other's records, so the second one is refused, with the first one named (host, pid, command, start).
The lock file is created whole and atomically (a hard link of a finished temporary file, which fails
when the name exists, also on NFS), and removed when the driver ends, also on an exception.

A driver killed with SIGKILL leaves its lock behind. On the same host its pid is then dead, and the
next run takes the lock over with a warning. A lock from another host cannot be checked from here: it
is refused unless ``--force`` says that run is gone. A live pid on this host is always refused, even
with ``--force``: stop that process first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from aavs.datasets import atomic
from aavs.datasets.errors import InputError

log = logging.getLogger(__name__)

LOCK_FILE = "lock.json"
ATTEMPTS = 5  # rounds of "create, or judge the holder and take a stale lock over" before giving up


@dataclass(frozen=True)
class Holder:
    """Who holds a results folder: enough to find the process, and to tell it from a later one."""

    host: str
    pid: int
    started: str  # ISO 8601, UTC
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (`{self.command}`, since {self.started})"


def this_process(command: str | None = None) -> Holder:
    """The holder record of this process (``command``: default, this process's command line)."""
    return Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=command or shlex.join(["aavs", *sys.argv[1:]]),
    )


@contextlib.contextmanager
def held(results_dir: str | os.PathLike, command: str | None = None, force: bool = False) -> Iterator[Holder]:
    """The results folder's lock for the duration of the block (created with the folder if need be)."""
    holder = acquire(results_dir, command, force)
    try:
        yield holder
    finally:
        release(results_dir, holder)


def acquire(results_dir: str | os.PathLike, command: str | None = None, force: bool = False) -> Holder:
    """Take the lock, taking over a stale one; InputError (exit status 2) naming the holder otherwise."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    mine = this_process(command)
    for _ in range(ATTEMPTS):
        if _create(folder / LOCK_FILE, mine):
            return mine
        current = read_holder(folder)
        if current is None:  # released between our attempt and the read: try again
            continue
        _judge(folder, current, mine, force)
        _take_over(folder / LOCK_FILE, current)
    raise InputError(f"{folder / LOCK_FILE}: other aavs processes keep taking this results folder; run one at a time")


def release(results_dir: str | os.PathLike, holder: Holder) -> None:
    """Remove the lock if it is still ours (a ``--force`` run elsewhere may have taken it over)."""
    path = Path(results_dir) / LOCK_FILE
    current = _read(path)
    if current == holder:
        path.unlink(missing_ok=True)
    elif current is not None:
        log.warning("%s: now held by %s; left in place", path, current.describe())


def read_holder(results_dir: str | os.PathLike) -> Holder | None:
    """The folder's lock holder; None when it is not locked. An unreadable lock file is an InputError."""
    return _read(Path(results_dir) / LOCK_FILE)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _judge(folder: Path, current: Holder, mine: Holder, force: bool) -> None:
    """Return when ``current``'s lock may be taken over; raise the refusal otherwise."""
    if current.host == mine.host:
        if pid_alive(current.pid):
            raise InputError(
                f"{folder}: in use by {current.describe()}; wait for it to end or stop it "
                f"(if that pid is no aavs process, remove {folder / LOCK_FILE})"
            )
        log.warning("%s: taking over the lock of %s, which is no longer running", folder, current.describe())
    elif not force:
        raise InputError(
            f"{folder}: locked by {current.describe()}; this host ({mine.host}) cannot tell "
            "whether it still runs: if it does not, pass --force to take the lock over"
        )
    else:
        log.warning("%s: --force: taking over the lock of %s", folder, current.describe())


def _create(path: Path, holder: Holder) -> bool:
    """Create ``path`` holding ``holder``, complete from its first instant; False when it exists."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(asdict(holder), sort_keys=True) + "\n", encoding="utf-8")
    try:
        atomic.FS.fsync(tmp)  # whole on the disk before its name can be seen (aavs.datasets.atomic)
        os.link(tmp, path)
        atomic.FS.fsync(path.parent)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(path: Path, stale: Holder) -> None:
    """Remove the lock of ``stale``, unless someone else has already replaced it (then leave theirs)."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != stale:  # a racing driver's fresh lock: put it back (unless yet another exists)
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def _read(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(
            host=str(data["host"]), pid=int(data["pid"]), started=str(data["started"]), command=str(data["command"])
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise InputError(
            f"{path}: not an aavs lock file ({type(err).__name__}: {err}); if no aavs run uses this folder, remove it"
        ) from None
