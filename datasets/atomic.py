"""Write files and folders so that, at every instant, a reader finds the old version or the new one,
also after the process is killed at any step or the machine loses power.

**Files** (:func:`atomic_path`, :func:`write_bytes`, ...): the new content goes to a temporary name in
the same folder (``.<name>.<random>.tmp``), is fsynced, renamed onto the name (``rename`` replaces a
name atomically on POSIX filesystems), and the folder is fsynced so that the rename itself survives a
power loss. **Appends** (:func:`append_line`): one ``write`` per line, then fsync; a torn last line is
the old version (readers skip it).

**Folders** (:func:`atomic_dir`) cannot be replaced by one rename, so a commit takes four steps, each
durable before the next:

    1. fill ``.<name>.<random>.tmp``; fsync every file and folder in it
    2. rename it to ``.<name>.new``                      the new version is complete
    3. rename ``<name>`` to ``.<name>.old``               (when there was an old version)
    4. rename ``.<name>.new`` to ``<name>``; remove ``.<name>.old``

The invariant: **a complete version is always at** ``<name>`` **or** ``.<name>.new`` **(or, only between
steps 3 and 4, at** ``.<name>.old`` **with the new one at** ``.<name>.new``**)**. :func:`readable`
returns where a reader finds it without changing anything (``<name>``, else ``.<name>.new``, else
``.<name>.old``). :func:`settle` finishes a half-done commit in place (rolls it forward: ``.new``
becomes ``<name>``; a left-over ``.old`` and staging folders are removed); only a writer of that folder
calls it, and :func:`sweep` settles every folder and removes every staging file under a results folder
before a run or resume touches it.

Every filesystem call goes through :data:`FS`, so that tests can record the sequence, stop a process at
any position of it, and replay what a power loss would have kept (tests/crash_consistency.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NEW, OLD, TMP = ".new", ".old", ".tmp"  # suffixes of a commit's staging names (``.<name><suffix>``)


class FileSystem:
    """The filesystem calls of a commit, one method each (a test replaces :data:`FS` to watch them)."""

    def fill(self, path: Path) -> None:
        """A caller has just written ``path`` (a temporary file or folder) by its own means."""

    def fsync(self, path: Path) -> None:
        """``path``'s content (a file) or entries (a folder) on the disk."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError as err:  # some filesystems cannot fsync a folder; their renames are durable anyway
            if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
                raise
        finally:
            os.close(fd)

    def rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def remove(self, path: Path) -> None:
        """A file or a whole folder, gone (a missing one is not an error)."""
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def append(self, path: Path, data: bytes) -> None:
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


FS = FileSystem()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give the result the usual permissions,
    so a results folder on shared storage stays readable by the team and the cluster's other users."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


class NoSpaceLeft(OSError):
    """The disk filled up while aavs wrote ``path``; what was there before is intact."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}; what was there before is intact")


def _is_no_space(err: BaseException | None) -> bool:
    """ENOSPC, as an OSError or as the message of a library's own error (torch.save, safetensors)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC or "No space left" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def naming_a_full_disk(path: str | os.PathLike[str]) -> Iterator[None]:
    """A full disk while writing ``path`` raises :class:`NoSpaceLeft` naming ``path``."""
    try:
        yield
    except NoSpaceLeft:
        raise
    except Exception as err:
        if _is_no_space(err):
            raise NoSpaceLeft(path) from err
        raise


def staged(path: Path, suffix: str) -> Path:
    """``.<name><suffix>`` beside ``path``: where a commit of ``path`` stages its versions."""
    return path.with_name(f".{path.name}{suffix}")


def probe_write(path: Path, content: bytes) -> None:
    """Whether a folder takes writes, tried: a new file ``path`` (never an existing one) written, fsynced
    and removed; the OSError of the first step that fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def make_dirs(folder: Path) -> None:
    """``folder`` and its missing parents created, each new entry fsynced in its parent, so that what is
    then written into it survives a power loss with its folder."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        FS.fsync(created.parent)


def durable_tree(path: Path) -> None:
    """Every file and folder under ``path`` (and ``path`` itself) fsynced, deepest first."""
    if path.is_dir():
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                FS.fsync(Path(root) / name)
            for name in dirs:
                FS.fsync(Path(root) / name)
    FS.fsync(path)


# ------------------------------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it replaces ``path``, durably."""
    path = Path(path)
    make_dirs(path.parent)
    with naming_a_full_disk(path):
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with naming_a_full_disk(path):
            yield tmp
        FS.fill(tmp)
        _usual_mode(tmp, directory=False)
        FS.fsync(tmp)
        FS.rename(tmp, path)
        FS.fsync(path.parent)
    finally:
        if tmp.exists():
            FS.remove(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """``line`` (ending in a newline) appended to ``path`` in one write, fsynced before it returns."""
    path = Path(path)
    created = not path.exists()
    with naming_a_full_disk(path):
        FS.append(path, line.encode("utf-8"))
    if created:  # the new name in its folder survives a power loss too
        FS.fsync(path.parent)


# ----------------------------------------------------------------------------------------- folders
@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole (the
    module's four steps), leaving the old or the new version at every instant."""
    path = Path(path)
    make_dirs(path.parent)
    settle(path)  # a commit of ours killed half-way: finished first, so there is one version to replace
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP, dir=path.parent))
    try:
        with naming_a_full_disk(path):
            yield tmp
        FS.fill(tmp)
        _usual_mode(tmp, directory=True)
        with naming_a_full_disk(path):
            durable_tree(tmp)
        new, old = staged(path, NEW), staged(path, OLD)
        FS.rename(tmp, new)
        FS.fsync(path.parent)
        if path.exists():
            FS.rename(path, old)
            FS.fsync(path.parent)
        FS.rename(new, path)
        FS.fsync(path.parent)
        FS.remove(old)
    finally:
        if tmp.exists():
            FS.remove(tmp)


def readable(path: str | os.PathLike[str]) -> Path:
    """Where a reader finds the current version of a folder written by :func:`atomic_dir`, changing
    nothing (a writer may be at work): ``path``, else its staged new version, else its old one."""
    path = Path(path)
    for candidate in (path, staged(path, NEW), staged(path, OLD)):
        if candidate.exists():
            return candidate
    return path


def settle(path: str | os.PathLike[str]) -> bool:
    """Finish a commit of ``path`` that was stopped half-way (roll it forward) and remove its staging
    entries; returns whether there was anything to do. Only a writer of ``path`` may call it."""
    path = Path(path)
    new, old = staged(path, NEW), staged(path, OLD)
    changed = False
    if new.exists():  # a complete new version: steps 2-3 done, 4 not
        if path.exists():
            FS.rename(path, old)
            FS.fsync(path.parent)
        FS.rename(new, path)
        FS.fsync(path.parent)
        changed = True
    elif old.exists() and not path.exists():  # cannot follow from the steps; keep the version there is
        FS.rename(old, path)
        FS.fsync(path.parent)
        changed = True
    if old.exists():
        FS.remove(old)
        changed = True
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*{TMP}"):
        FS.remove(stale)
        changed = True
    return changed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


_STAGING = re.compile(r"^\.(?P<name>.+?)(?:\.new|\.old|\.[^.]+\.tmp)$")


def sweep(folder: str | os.PathLike[str]) -> list[Path]:
    """Every commit under ``folder`` that a killed process left half-done, finished, and every staging
    file removed; returns the names it settled. For a results folder before a run or resume (whose
    lock says nobody else writes there)."""
    settled: list[Path] = []
    for root, dirs, files in os.walk(folder):
        for entry in [*dirs, *files]:
            match = _STAGING.match(entry)
            if match and settle(Path(root) / match.group("name")):
                settled.append(Path(root) / match.group("name"))
        dirs[:] = [d for d in dirs if not _STAGING.match(d) and (Path(root) / d).exists()]
    return settled
