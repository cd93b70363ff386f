"""``check_data_root`` remembered: a data root is decoded again only when one of its files changed.

Checking decodes every frame, mask and wav, which takes minutes on the real AVSBench; ``aavs run``
checks its data root before any trial starts, so the result is cached in ``data-check/`` of
``$AAVS_CACHE_DIR`` (default ~/.cache/aavs), one JSON file per root, keyed by the root's absolute path and valid while every file's relative path, size and mtime are unchanged (a
listing and a ``stat`` per file, no reads).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from aavs.datasets import atomic
from aavs.datasets.check import Problem, check_data_root
from aavs.datasets.files import aavs_cache
from aavs.datasets.layout import has_metadata

CACHE_VERSION = 1  # bump when check_data_root finds problems it did not find before


def cached_check_data_root(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> list[Problem]:
    """``check_data_root(root)``, or its cached answer when no file of the root changed since."""
    root = Path(root).expanduser().resolve()
    if not has_metadata(root):  # nothing to decode (and no walk of a mistyped "/" or "~")
        return check_data_root(root)
    entry = _cache_file(root, cache_dir)
    key = fingerprint(root)
    cached = _read(entry, key)
    if cached is not None:
        return cached
    problems = check_data_root(root)
    atomic.write_json(
        entry,
        {"version": CACHE_VERSION, "root": str(root), "fingerprint": key, "problems": [p.as_dict() for p in problems]},
    )
    return problems


def fingerprint(root: Path) -> str:
    """A digest of every file's relative path, size and modification time under ``root``."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            st = path.stat()
            digest.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_file(root: Path, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:  # not audio_features.default_cache_dir: that import costs torch's start-up
        cache_dir = aavs_cache("data-check")
    base = Path(cache_dir)
    return base / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"


def _read(entry: Path, key: str) -> list[Problem] | None:
    """The cached problems when ``entry`` is of this version and fingerprint; None otherwise (also when
    it is missing or unreadable: the cache is only ever a shortcut)."""
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        if data["version"] != CACHE_VERSION or data["fingerprint"] != key:
            return None
        return [Problem(str(p["path"]), str(p["message"])) for p in data["problems"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
