"""What a reader of a results folder may open: only what lies inside the folder.

A results folder may come from someone else (copied, unpacked, mounted): a symbolic link in it, or a
path one of its JSON files records, may point anywhere on this machine. The readers (``aavs
leaderboard``, ``report``, ``evaluate``, ``predict --experiment``) never follow one out of the folder:

- :func:`inside`: one path, which must resolve (links followed) to the folder or below it;
- :func:`check_tree`: every entry under the folder, before a reader starts: a link must resolve
  inside, and nothing may be other than a file, a folder or such a link (a FIFO would block a read);
- :func:`own_copy`: the folder's own copy of a path it recorded when it was written (``best.json``'s
  checkpoint, a trial's prior masks): absolute paths of the machine that wrote it, which a folder
  moved or copied elsewhere no longer holds.

Each refusal is an InputError naming the entry (exit status 2). ``aavs resume`` trusts the folder as
docs/reliability.md says (it runs what the folder's writer could run); these checks are the readers'.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aavs.datasets.errors import InputError

# How deep the paths a results folder records lie in it: a checkpoint <stage>/trials/<id>/best, a
# stage's masks <stage>/masks (own_copy's depth).
CHECKPOINT_DEPTH = 4
MASKS_DEPTH = 2


def _resolved(path: Path) -> Path:
    """``path`` with every link followed (a missing tail is kept as it is); a loop is an InputError."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # a link loop: RuntimeError before Python 3.13, OSError after
        raise InputError(f"{path}: a symbolic link that cannot be followed ({err})") from None


def inside(results_dir: str | os.PathLike[str], path: str | os.PathLike[str], what: str = "the results folder") -> Path:
    """``path`` itself, if it resolves (links followed) to ``results_dir`` or below it; an InputError
    naming it otherwise: a link, or a ``..``, that leads out of the results folder (``what``)."""
    root = _resolved(Path(results_dir))
    target = _resolved(Path(path))
    if target != root and root not in target.parents:
        raise InputError(f"{path}: leads out of {what} {root} (to {target}); refused")
    return Path(path)


def check_tree(results_dir: str | os.PathLike[str], what: str = "the results folder") -> None:
    """Every entry under ``results_dir`` a reader could open: links resolve inside the folder, and
    nothing else than files and folders (a FIFO, socket or device would hang or mislead a reader).
    The first that is not is an InputError naming it. Reads names and types only (one ``scandir`` a
    folder), so a folder of many mask files costs little."""
    root = Path(results_dir)
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):  # removed meanwhile (a run replaces folders)
            continue
        except OSError as err:
            raise InputError(f"{folder}: cannot be read ({err.strerror})") from None
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    inside(root, path, what)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(path)
                elif not entry.is_file(follow_symlinks=False):
                    kind = stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)
                    raise InputError(f"{path}: not a file or folder (mode {kind:o}); refused")
            except FileNotFoundError:  # removed meanwhile
                continue


def own_copy(
    results_dir: str | os.PathLike[str], recorded: str | None, depth: int, source: str | os.PathLike[str]
) -> Path | None:
    """The folder's own copy of a path that its file ``source`` recorded: ``recorded`` itself when it
    lies inside the folder, else its last ``depth`` parts below ``results_dir`` (``<stage>/trials/<id>/best``
    is 4, ``<stage>/masks`` 2) when that exists; None without either. Parts that climb out of the
    folder (``..``, or a link on the way) are an InputError naming ``source``."""
    if not recorded:
        return None
    root = _resolved(Path(results_dir))
    path = Path(recorded)
    if path.is_absolute():
        found = _resolved(path)
        if found == root or root in found.parents:
            return path
    if len(path.parts) < depth + path.is_absolute():
        return None
    candidate = root.joinpath(*path.parts[-depth:])
    found = _resolved(candidate)
    if found != root and root not in found.parents:
        raise InputError(f"{source}: {recorded!r} leads out of the results folder {root} (to {found}); refused")
    return candidate if candidate.exists() else None
