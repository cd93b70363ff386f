"""The identity of a file's content: what caches, stage inputs and reports key on."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20  # read 1 MiB at a time: a checkpoint or a weights file never sits in memory whole


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def aavs_cache(*parts: str) -> Path:
    """``$AAVS_CACHE_DIR/<parts>``, else ``~/.cache/aavs/<parts>``: the node-local caches (frame store,
    data checks, FLOP counts, compiled kernels)."""
    env = os.environ.get("AAVS_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "aavs").joinpath(*parts)
