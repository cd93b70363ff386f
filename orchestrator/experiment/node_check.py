"""Before the first trial on Ray: every node that can run trials sees the data root and the results
folder that this driver sees, at the same path, with the same content.

A node that mounts another copy of the data, a stale one, or no shared storage at all would otherwise
train on other videos than its neighbours (a search whose trials are not comparable), or write its
checkpoints where no other node finds them (stage two, a retried trial and the leaderboard then fail
much later). :func:`check_nodes` runs one Ray task pinned to each such node (``NodeAffinitySchedulingStrategy``,
not soft) and compares what it sees with what this process sees:

* the data root: the SHA-256 of its metadata files (``metadata.csv``, ``label2idx.json``, AVSBench-object's
  ``*_meta_data.csv``) and, for each folder a split reads (``v1s``, ``v1m``, ``v2``; ``Single-source``,
  ``Multi-sources``), how many files it holds and their bytes: a listing and a ``stat`` per file, no file
  read, so a copy at the same path (rsync, a baked image) passes as shared storage does;
* the results folder: it exists and takes writes there, and a marker file that this process wrote
  into it just before (``.aavs-node-check.<token>.tmp``, a staging name that a later sweep removes if
  the driver is killed mid-check) is visible with the same contents: the proof that it is the same
  storage, not a folder of the same name.

A node that differs stops the run before any trial, with an :class:`InputError` (exit status 2) that
names each such node (its id, address and host name), the path and what differs.

Which nodes: every alive node that could run a one-worker trial or a stage task (at least a worker's
CPUs and GPUs); a head started with ``num_cpus=0`` and no GPUs never runs one, and is skipped. With
several workers per trial, every alive node: a trial's controller asks only for a token of memory
(runners/ray.py) and writes into the trial's folder wherever Ray puts it.

Nodes that join later (an autoscaler) are not checked; a node that dies during the check is skipped
with a warning (Tune will not place trials there either).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aavs.datasets.atomic import probe_write
from aavs.datasets.errors import InputError
from aavs.datasets.layout import LABEL2IDX, METADATA, OBJECT_SUBSETS, SUBSETS

if TYPE_CHECKING:  # the nodes import this module for node_view: nothing more than it needs
    from aavs.orchestrator.experiment.spec import ExperimentSpec

log = logging.getLogger(__name__)

MARKER = ".aavs-node-check.{token}.tmp"
TIMEOUT_S = 600.0  # a node's first task may wait for its runtime environment (a job's pip packages)
# The metadata files of both layouts (aavs.datasets.layout), relative to the data root.
METADATA_FILES = (
    METADATA,
    LABEL2IDX,
    *(f"{folder}/{prefix}_meta_data.csv" for folder, prefix in OBJECT_SUBSETS.values()),
)
# The folders a split's frames, masks and audio are read from, in either layout.
DATA_FOLDERS = (*SUBSETS, *(folder for folder, _ in OBJECT_SUBSETS.values()))


# ----------------------------------------------------------------------------- what a node sees
def data_summary(root: str) -> dict[str, Any] | None:
    """What identifies the data root's content without reading its frames: ``{"files": {metadata file:
    sha256}, "folders": {folder: [file count, bytes]}}``; None when ``root`` is not a folder."""
    path = Path(root)
    if not path.is_dir():
        return None
    files = {}
    for name in METADATA_FILES:
        if (path / name).is_file():
            files[name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    folders = {}
    for name in DATA_FOLDERS:
        if (path / name).is_dir():
            count = size = 0
            for folder, _, names in os.walk(path / name):
                for file in names:
                    count, size = count + 1, size + os.stat(os.path.join(folder, file)).st_size
            folders[name] = [count, size]
    return {"files": files, "folders": folders}


def results_view(results_dir: str, marker: str) -> dict[str, str | None]:
    """``{"problem": why the folder cannot be used here, or None; "marker": the marker file's contents
    as read here, or None}``. Writing is tried with a probe file of this node's own, removed at once."""
    path = Path(results_dir)
    if not path.is_dir():
        return {"problem": "missing", "marker": None}
    probe = path / MARKER.format(token=f"{uuid.uuid4().hex}-probe")
    try:
        probe_write(probe, b"aavs node check\n")
    except OSError as err:
        return {"problem": f"not writable ({err.strerror})", "marker": None}
    try:
        seen: str | None = (path / marker).read_text(encoding="utf-8", errors="replace")
    except OSError:
        seen = None
    return {"problem": None, "marker": seen}


def node_view(data_root: str, results_dir: str, marker: str) -> dict[str, Any]:
    """What one node sees: its host name, :func:`data_summary` and :func:`results_view` (a Ray task)."""
    return {
        "host": socket.gethostname(),
        "data": data_summary(data_root),
        "results": results_view(results_dir, marker),
    }


# ----------------------------------------------------------------------------------- the check
def trial_nodes(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """The alive nodes (``ray.nodes()`` entries) where a trial or a stage task can run (the module
    docstring says which)."""
    import ray

    c = spec.compute
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if c.workers_per_trial > 1:
        return nodes
    return [
        n
        for n in nodes
        if n["Resources"].get("CPU", 0) >= c.cpus_per_worker and n["Resources"].get("GPU", 0) >= c.gpus_per_worker
    ]


def check_nodes(spec: ExperimentSpec, data_root: Path, results_dir: Path) -> list[str]:
    """Every node of :func:`trial_nodes` sees ``data_root`` and ``results_dir`` as this process does, or
    the InputError that names each node that does not, the path and what differs. Returns the ids of
    the nodes checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = trial_nodes(spec)
    if not nodes:
        return []
    token = uuid.uuid4().hex
    marker, wanted = MARKER.format(token=token), f"{token} {socket.gethostname()} {os.getpid()}\n"
    fd = os.open(results_dir / marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, wanted.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        expected = data_summary(str(data_root))
        view = ray.remote(node_view)
        refs = {
            view.options(
                num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(data_root), str(results_dir), marker): n
            for n in nodes
        }
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=TIMEOUT_S)
        for ref in late:
            ray.cancel(ref)
    finally:
        (results_dir / marker).unlink(missing_ok=True)
    problems, checked = [], []
    for ref, node in refs.items():
        name = f"node {node['NodeID']} ({node['NodeManagerAddress']}, host {node['NodeManagerHostname']})"
        if ref not in ready:
            problems.append(f"{name}: did not answer the check in {TIMEOUT_S:.0f} s")
            continue
        try:
            seen = ray.get(ref)
        except (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError) as err:
            log.warning("%s left during the check (%s); not checked", name, type(err).__name__)
            continue
        checked.append(node["NodeID"])
        problems += [f"{name}: data.root {data_root}: {d}" for d in data_differences(expected, seen["data"])]
        problem = results_difference(wanted, seen["results"], marker)
        if problem:
            problems.append(f"{name}: results folder {results_dir}: {problem}")
    if problems:
        raise InputError(
            f"{len(problems)} difference(s) between what this driver and the nodes that run trials see "
            "(each must see the data root and the results folder at the same path with the same content: "
            "shared storage such as NFS, or for the data an identical copy):\n" + "\n".join(f"  {p}" for p in problems)
        )
    log.info("%d node(s) see the data root and the results folder as this driver does", len(checked))
    return checked


def data_differences(expected: dict[str, Any] | None, seen: dict[str, Any] | None) -> list[str]:
    """What a node's :func:`data_summary` has that the driver's has not, one phrase each."""
    if seen is None:
        return ["missing on this node (the driver has it)"]
    assert expected is not None, "the driver's data root was checked before the run started"
    out = []
    for name in sorted({*expected["files"], *seen["files"]}):
        mine, theirs = expected["files"].get(name), seen["files"].get(name)
        if theirs is None:
            out.append(f"{name} missing on this node")
        elif mine is None:
            out.append(f"{name} exists on this node but not on the driver")
        elif mine != theirs:
            out.append(f"{name} differs (sha256 {theirs[:12]} here, {mine[:12]} on the driver)")
    for name in sorted({*expected["folders"], *seen["folders"]}):
        mine, theirs = expected["folders"].get(name), seen["folders"].get(name)
        if theirs is None:
            out.append(f"{name}/ missing on this node")
        elif mine is None:
            out.append(f"{name}/ exists on this node but not on the driver")
        elif mine != theirs:
            count, size = theirs
            out.append(f"{name}/ holds {count} files of {size} bytes here, {mine[0]} of {mine[1]} bytes on the driver")
    return out


def results_difference(wanted: str, seen: dict[str, str | None], marker: str) -> str | None:
    """Why a node's :func:`results_view` shows other storage than the driver's (None: the same)."""
    if seen["problem"]:
        return f"{seen['problem']} on this node"
    if seen["marker"] is None:
        return (
            f"the file {marker} that the driver wrote into it is not there on this node: another folder "
            "of the same name, not the driver's storage"
        )
    if seen["marker"] != wanted:
        return f"the file {marker} that the driver wrote reads otherwise on this node ({seen['marker'].strip()!r})"
    return None
