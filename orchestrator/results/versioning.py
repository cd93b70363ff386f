"""``format.json`` and ``provenance.json``: the layout version a folder was written in, and what wrote
into it at each ``aavs run`` and ``aavs resume`` (see the format rules in :mod:`aavs.orchestrator.results`)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from aavs.datasets.errors import InputError
from aavs.orchestrator.results.names import FORMAT_FILE, FORMAT_VERSION, PROVENANCE_FILE
from aavs.orchestrator.results.records import Record, read_record, write_record

# Versions recorded in provenance.json; read from the installed metadata, never imported.
PROVENANCE_PACKAGES = ("torch", "transformers", "ray", "accelerate", "deepspeed")


class FormatRecord(Record):
    """``format.json``: the layout version the folder was written in."""

    format_version: int


def folder_version(results_dir: str | os.PathLike[str]) -> int:
    """The folder's format version; 1 for a folder written before versioning (no format.json)."""
    record = read_record(Path(results_dir) / FORMAT_FILE, FormatRecord)
    return record.format_version if record else 1


def check_format(results_dir: str | os.PathLike[str]) -> int:
    """The folder's format version, if this aavs reads it; an InputError naming both versions if not."""
    found = folder_version(results_dir)
    if found > FORMAT_VERSION:
        raise InputError(
            f"{results_dir}: results format version {found} is newer than this aavs "
            f"({aavs_version()}) reads (format version {FORMAT_VERSION}); upgrade aavs to read it"
        )
    return found


class Provenance(Record):
    """What wrote into a results folder at one ``aavs run`` or ``aavs resume``."""

    command: Literal["run", "resume"]
    time: float
    format_version: int
    aavs_version: str | None
    git_commit: str | None  # the checkout aavs was imported from; None if it is not a git checkout
    python: str
    hostname: str
    packages: dict[str, str | None]  # PROVENANCE_PACKAGES' installed versions (None: not installed)
    accelerators: list[str]  # one name per device; [] without any


class ProvenanceLog(Record):
    """``provenance.json``: every run and resume of the folder, oldest first (an upgrade shows)."""

    runs: list[Provenance] = Field(default_factory=list)


def aavs_version() -> str | None:
    return _package_version("aavs")


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """HEAD of the checkout aavs runs from (the folder above ``orchestrator/`` holds ``.git``), else None."""
    root = Path(__file__).resolve().parents[2]  # <checkout>/orchestrator/results/versioning.py
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _accelerators() -> list[str]:
    """The machine's GPUs by name. torch is asked only if this process already set CUDA up (asking
    otherwise would create a CUDA context in the driver); else nvidia-smi, and [] without it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def provenance(command: Literal["run", "resume"]) -> Provenance:
    """This process's provenance (imports none of the packages it names)."""
    return Provenance(
        command=command,
        time=time.time(),
        format_version=FORMAT_VERSION,
        aavs_version=aavs_version(),
        git_commit=_git_commit(),
        python=platform.python_version(),
        hostname=socket.gethostname(),
        packages={name: _package_version(name) for name in PROVENANCE_PACKAGES},
        accelerators=_accelerators(),
    )


def read_provenance(results_dir: str | os.PathLike[str]) -> ProvenanceLog:
    return read_record(Path(results_dir) / PROVENANCE_FILE, ProvenanceLog) or ProvenanceLog()


def open_results(results_dir: str | os.PathLike[str], command: Literal["run", "resume"]) -> None:
    """Before ``aavs run``/``resume`` writes anything: refuse a newer folder, then record this format
    version and this run's provenance."""
    results_dir = Path(results_dir)
    check_format(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    write_record(results_dir / FORMAT_FILE, FormatRecord(format_version=FORMAT_VERSION))
    runs = read_provenance(results_dir)
    runs.runs.append(provenance(command))
    write_record(results_dir / PROVENANCE_FILE, runs)
