"""Write files and folders so that a reader never sees half of them.

Everything aavs writes goes to a temporary name in the same folder first and is then renamed into
place (``os.replace`` is atomic on POSIX filesystems), so an interrupted run leaves either the old
content or the new, never a truncated file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}; what was there before is intact")


def _is_no_space(err: BaseException | None) -> bool:
    """ENOSPC, as an OSError or as the message of a library's own error (torch.save, safetensors)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC or "No space left" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def naming_a_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """A full disk while writing ``path`` raises :class:`NoSpaceLeft` naming ``path``."""
    try:
        yield
    except NoSpaceLeft:
        raise
    except Exception as err:
        if _is_no_space(err):
            raise NoSpaceLeft(path) from err
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_a_full_disk(path):
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with naming_a_full_disk(path):
            yield tmp
        _usual_mode(tmp, directory=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with naming_a_full_disk(path):
            yield tmp
        _usual_mode(tmp, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
