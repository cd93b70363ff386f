"""What an older crash or a bad disk can leave in a stage's folder, found and set right before the
stage runs again (``aavs run``/``resume``). Each repair is logged as a warning that names the file and
says what was done; nothing damaged is ever loaded.

    damaged                                   what happens
    <trial>/status.json unreadable            removed: the trial's own files say again where it stands
    <trial>/metrics.jsonl torn line           rewritten with its whole lines (the next report would
                                              otherwise be glued to the torn one)
    <trial>/checkpoints/last/ damaged         moved aside; an unfinished trial restarts from its first
                                              epoch (runs are deterministic: the same numbers), a
                                              finished one keeps its results
    <trial>/best/ damaged                     moved aside with the training state; the trial runs again
    <stage>/masks/ incomplete                 exported again from the best checkpoint (masks_problem)

"Damaged": a safetensors file whose header or length is wrong, a JSON file that does not parse, a torch
zip archive whose CRCs fail.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from pathlib import Path

from aavs.datasets.errors import InputError
from aavs.orchestrator import results

log = logging.getLogger(__name__)

LAST, BEST = Path(results.LAST), Path(results.BEST)


def file_problem(path: Path) -> str | None:
    """Why ``path`` can't be read back (None: it can), by its kind; other files are not checked."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open  # here: only a damaged stage reaches it

            try:
                with safe_open(str(path), "pt") as f:
                    f.keys()
            except SafetensorError as err:
                return str(err)
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                return f"not JSON ({err})"
        elif zipfile.is_zipfile(path):  # torch.save's format (optimizer and RNG states)
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"archive member {bad} is corrupt"
    except (OSError, zipfile.BadZipFile) as err:
        return str(err)
    return None


def folder_problem(folder: Path) -> str | None:
    """The first damaged file under ``folder``, and why (None: every file reads back)."""
    if not folder.is_dir():
        return None
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        problem = file_problem(path)
        if problem:
            return f"{path}: {problem}"
    return None


def repair_trial(trial_dir: Path) -> bool:
    """Set one trial folder right; True when the trial has to train again (its status was reset)."""
    _repair_status(trial_dir)
    _repair_metrics(trial_dir)
    finished = results.trial_status(trial_dir) == results.TrialStatus.DONE
    best_problem = folder_problem(trial_dir / BEST)
    if best_problem:
        _set_aside(trial_dir, (BEST, LAST))
        log.warning("%s; the trial's best checkpoint is lost: it trains again from its first epoch", best_problem)
        return True
    last_problem = folder_problem(trial_dir / LAST)
    if last_problem and finished:
        _set_aside(trial_dir, (LAST,))
        log.warning("%s; the trial had finished and its best checkpoint is intact: its results stand", last_problem)
    elif last_problem:
        _set_aside(trial_dir, (LAST,))
        log.warning("%s; the trial restarts from its first epoch (no earlier training state is kept)", last_problem)
        return True
    return False


def _repair_status(trial_dir: Path) -> None:
    path = trial_dir / results.STATUS_FILE
    if not path.exists():
        return
    try:
        results.read_status(trial_dir)
        problem = file_problem(path) or (None if path.stat().st_size else "empty")
    except InputError as err:
        problem = str(err)
    if problem:
        path.unlink()
        log.warning("%s: unreadable (%s); removed, the trial's checkpoints say again where it stands", path, problem)


def _repair_metrics(trial_dir: Path) -> None:
    path = trial_dir / results.METRICS_FILE
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = results.read_metrics(trial_dir)
    if len(rows) != len(lines) or not path.read_bytes().endswith(b"\n") and lines:
        results.write_metrics(trial_dir, rows)
        log.warning("%s: %d torn line(s) dropped, %d report(s) kept", path, len(lines) - len(rows), len(rows))


def _set_aside(trial_dir: Path, parts: tuple[Path, ...]) -> None:
    """Move damaged folders out of the way (kept for a post-mortem) and reset the trial's status."""
    aside = trial_dir / f".damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    for part in parts:
        if (trial_dir / part).exists():
            (aside / part).parent.mkdir(parents=True, exist_ok=True)
            os.replace(trial_dir / part, aside / part)
    (trial_dir / results.STATUS_FILE).unlink(missing_ok=True)


def repair_stage(stage_dir: Path) -> list[Path]:
    """Every trial folder of the stage set right; the trials that have to train again."""
    root = stage_dir / "trials"
    trials = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [t for t in trials if repair_trial(t)]


def masks_problem(masks_dir: Path) -> str | None:
    """Why an exported masks folder can't be used as a prior (None: it can): no ``_SUCCESS.json``, or a
    file it lists missing or of another size."""
    record = results.read_masks_success(masks_dir)
    if record is None:
        return f"{masks_dir}: no {results.MASKS_SUCCESS_FILE} (the export did not finish)"
    for name, size in (record.files or {}).items():
        path = masks_dir / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != size:
            return f"{path}: {path.stat().st_size} bytes, {size} when exported"
    return None
