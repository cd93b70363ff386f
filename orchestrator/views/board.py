"""``results/<name>/leaderboard.json``: the leaderboard's data, built from the results folder alone.

The leaderboard is built from the results folder (spec, trial folders, ``best.json``), so any machine
that sees the folder (another terminal, a laptop with the cluster's shared storage mounted) gets the
same data. The driver of a run keeps ``leaderboard.json`` current (at stage boundaries and, through
:mod:`aavs.orchestrator.views.live`, whenever a trial reports); readers (``aavs leaderboard``, its
``--json`` and ``--watch``, the report) take that file, and rebuild the same data in memory only when
its recorded fingerprint of the source files no longer matches them: a reader never writes into the
folder, yet never shows stale data. Its files' records are in :mod:`aavs.orchestrator.results`; its
trials are ranked by the driver's rule (:func:`aavs.orchestrator.results.ranking.rank_trials`), and
:mod:`aavs.orchestrator.views.leaderboard` draws it.

A stage's row: its name, task, metric and mode, epochs, status, planned and started trials, searched
keys and fixed values, repeats, what fed it (``prior_from``, ``init_from``), its ``best.json`` summary
and its trials, ranked first. A trial's row: rank (None without a best checkpoint), status, error and
log, params and their schedule (PBT), epochs done, ``best`` (the stage metric of its best checkpoint),
``best_epoch``, ``val/miou`` and ``val/fscore`` (of that checkpoint), its configuration's ``mean``,
``std`` and ``seeds`` (with repeats), test scores (the stage's best), ``leader``, ``fed_by`` and
``history`` (every epoch reported in ``metrics.jsonl``: the curves).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import get_task
from aavs.models.registry import read_checkpoint_classes
from aavs.orchestrator import results
from aavs.orchestrator.results import StageStatus, TrialStatus
from aavs.orchestrator.results.ranking import RankedTrial, configuration_key, rank_trials
from aavs.orchestrator.results.stage_plan import fixed, planned_trials, searched

FILE = results.LEADERBOARD_FILE
# The per-trial files a leaderboard is built from (relative to a stage folder); their sizes and
# modification times make the fingerprint that tells whether leaderboard.json is current.
_STAGE_SOURCES = (
    results.BEST_FILE,
    results.DONE_FILE,
    f"{results.MASKS_DIR}/{results.MASKS_SUCCESS_FILE}",
    *(
        f"trials/*/{name}"
        for name in (
            results.METRICS_FILE,
            results.STATUS_FILE,
            results.PARAMS_FILE,
            results.CONFIG_FILE,
            results.SCHEDULE_FILE,
        )
    ),
    f"trials/*/{results.BEST}/{results.CHECKPOINT_METRICS_FILE}",
)
GROUND_TRUTH_PRIOR = "ground-truth"  # the true masks as a prior: aavs.datasets.avsbench.GROUND_TRUTH (it imports torch)


def ended(status: str) -> bool:
    """Whether a trial row's status is final (done, stopped early, failed)."""
    return TrialStatus(status).ended


def number(value: Any) -> float | None:
    """A finite float, or None (NaN and infinities would make leaderboard.json invalid JSON)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def pct(value: Any) -> str:
    """A score in [0, 1] as a percentage with two decimals; ``-`` when there is none."""
    found = number(value)
    return "-" if found is None else f"{100 * found:.2f}"


# ------------------------------------------------------------------------------------ building
def sources_digest(results_dir: str | Path) -> str:
    """A digest of the names, sizes and modification times of every file the leaderboard reads."""
    results_dir = Path(results_dir)
    spec = results.read_spec(results_dir)
    files = [results_dir / results.SPEC_FILE]
    for name in spec.stage_names if spec else []:
        for pattern in _STAGE_SOURCES:
            files.extend(sorted((results_dir / name).glob(pattern)))
    h = hashlib.sha256()
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        h.update(f"{f.relative_to(results_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def build_leaderboard(results_dir: str | Path) -> dict[str, Any]:
    """The leaderboard of an experiment folder, from its files (see the module docstring)."""
    results_dir = Path(results_dir)
    digest = sources_digest(results_dir)  # before reading: a file changed meanwhile makes it stale, never fresh
    spec = results.require_spec(results_dir)
    stages = [_stage(results_dir, stage) for stage in spec.stages]
    progress = {
        "trials_done": sum(sum(ended(t["status"]) for t in s["trials"]) for s in stages),
        "trials": sum(s["planned_trials"] for s in stages),
        "epochs_done": sum(_epochs_done(s) for s in stages),
        "epochs": sum(s["planned_trials"] * s["epochs"] for s in stages),
    }
    statuses = {s["status"] for s in stages}
    status = (
        StageStatus.DONE
        if statuses == {StageStatus.DONE}
        else StageStatus.FAILED
        if StageStatus.FAILED in statuses
        else StageStatus.PENDING
        if statuses == {StageStatus.PENDING}
        else StageStatus.RUNNING
    )
    board: dict[str, Any] = {
        "name": spec.spec.get("name") or results_dir.name,
        "results_dir": str(results_dir),
        "updated": time.time(),
        "sources_digest": digest,
        "status": status,
        "progress": progress,
        "stages": stages,
    }
    board["summary"] = summary_text(board)
    board["ablation"] = ablation(board)
    return board


def _epochs_done(stage: dict[str, Any]) -> int:
    """Epochs trained, counting a trial that ended early (stopped, failed) as all of its epochs."""
    return sum(t["epochs"] if ended(t["status"]) else min(t["epochs_done"], t["epochs"]) for t in stage["trials"])


def _stage(results_dir: Path, stage: dict[str, Any]) -> dict[str, Any]:
    stage_dir = results_dir / stage["name"]
    for key in ("tune", "epochs"):  # (spec.json's record checks their types when present)
        if stage.get(key) is None:
            raise InputError(f"{results_dir / results.SPEC_FILE}: stage {stage['name']} has no {key}")
    metric, mode = stage["tune"]["metric"], stage["tune"]["mode"]
    planned = planned_trials(stage)
    prior_from = _upstream(results_dir, stage.get("prior"))
    init_from = _upstream(results_dir, stage.get("init_from"))
    ranked = rank_trials(stage_dir, metric, mode)
    by_id = {r.trial_id: r for r in ranked}
    trials = [
        _trial(results_dir, d, by_id.get(d.name), metric, stage["epochs"])
        for d in sorted((stage_dir / "trials").glob("t*"))
        if d.is_dir()
    ]
    rows = {t["trial_id"]: t for t in trials}
    for rank, ranked_trial in enumerate((r for r in ranked if r.trial_id in rows), 1):
        rows[ranked_trial.trial_id]["rank"] = rank
    repeats = int(stage["tune"].get("repeats", 1))
    if repeats > 1:  # the mean and std over the seeds of each trial's configuration
        configurations = {
            configuration_key(r.params): {
                "mean": r.configuration_mean,
                "std": r.configuration_std,
                "seeds": len(r.configuration_values),
            }
            for r in ranked
        }
        for row in trials:
            row.update(configurations.get(row["configuration"], {}))
    for row in trials:  # a trial that has not started yet will be fed what the stage feeds now
        if row["fed_by"] is None and (prior_from or init_from):
            row["fed_by"] = {"prior": prior_from, "init": init_from}
    best = results.read_best(stage_dir)
    done = results.read_done(stage_dir) is not None and best is not None
    leader = best.trial_id if best else (ranked[0].trial_id if ranked else None)
    for row in trials:
        row["leader"] = row["trial_id"] == leader
        if best and row["trial_id"] == best.trial_id:
            row["test"] = best.test
    if done:
        status = StageStatus.DONE
    elif not trials:
        status = StageStatus.PENDING
    elif len(trials) == planned and all(ended(t["status"]) for t in trials) and not ranked:
        status = StageStatus.FAILED
    else:
        status = StageStatus.RUNNING
    return {
        "name": stage["name"],
        "task": stage["task"],
        "metric": metric,
        "mode": mode,
        "epochs": stage["epochs"],
        "status": status,
        "planned_trials": max(planned, len(trials)),
        "trial_count": len(trials),
        "searched": sorted(searched(stage["params"])),
        "fixed": fixed(stage["params"]),
        "repeats": repeats,
        "prior_from": prior_from,
        "init_from": init_from,
        "best": _best_summary(results_dir, stage["name"], best) if best else None,
        "trials": sorted(trials, key=lambda t: (t["rank"] or 10**6, t["trial_id"])),
    }


def _best_summary(results_dir: Path, name: str, best: results.BestTrial) -> dict[str, Any]:
    """best.json's summary, with the class names its checkpoint (the folder's own copy) records (the
    data's label2idx.json for a semantic stage; None when the checkpoint cannot be read)."""
    keys = {
        "trial_id",
        "metric",
        "mode",
        "value",
        "checkpoint",
        "checkpoint_sha256",
        "params",
        "test",
        "masks",
        "data_root",
    }
    source = results_dir / name / results.BEST_FILE
    checkpoint = results.own_copy(results_dir, best.checkpoint, results.CHECKPOINT_DEPTH, source)
    classes = read_checkpoint_classes(checkpoint) if checkpoint else None
    return {**best.model_dump(include=keys), "classes": classes}


def _trial(results_dir: Path, trial_dir: Path, ranked: RankedTrial | None, metric: str, epochs: int) -> dict[str, Any]:
    """A trial's row. Its best-checkpoint columns come from ``best/metrics.json`` (``ranked``: the
    ranking read it), its epochs and curves from ``metrics.jsonl``."""
    status_doc = results.read_status(trial_dir)
    config = results.read_trial_config(trial_dir) or {}
    by_epoch: dict[int, results.MetricsRow] = {}
    for row in results.read_metrics(trial_dir):  # a finished trial run again reports its last epoch again
        if isinstance(row.epoch, int):
            by_epoch[row.epoch] = row
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    history: dict[str, list[Any]] = {"epoch": [r.epoch for r in rows], "phase": [r.phase for r in rows]}
    for key in dict.fromkeys(("val/miou", "val/fscore", metric)):
        history[key] = [number(r.get(key)) for r in rows]
    checkpoint = results.read_checkpoint_metrics(trial_dir / results.BEST) if ranked else None
    params = results.read_params(trial_dir) or {}
    schedule = results.read_schedule(trial_dir)  # population-based training: what held from which epoch
    source = trial_dir / results.CONFIG_FILE
    links = {
        "prior": _checkpoint_link(
            results_dir, _masks_checkpoint(results_dir, _text(config.get("prior")), source), source
        ),
        "init": _checkpoint_link(results_dir, _text(config.get("init_from")), source),
    }
    log_file = trial_dir / results.TRIAL_LOG
    return {
        "trial_id": trial_dir.name,
        "rank": None,
        "status": status_doc.status if status_doc else TrialStatus.PENDING,
        "error": status_doc.error if status_doc else None,
        # where its running epoch stands (step, frames/s, ETAs), while it runs
        "progress": status_doc.progress if status_doc and status_doc.status == TrialStatus.RUNNING else None,
        "log": str(log_file) if log_file.exists() else None,
        "params": params,
        "configuration": configuration_key(params),
        "schedule": [span.model_dump() for span in schedule.spans] if schedule and len(schedule.spans) > 1 else None,
        "epochs_done": len(rows),
        "epochs": _count(config.get("epochs"), epochs),
        "best": number(ranked.value) if ranked else None,
        "best_epoch": checkpoint.epoch if checkpoint else None,
        "val/miou": number(checkpoint.get("val/miou")) if checkpoint else None,
        "val/fscore": number(checkpoint.get("val/fscore")) if checkpoint else None,
        "test": None,
        "leader": False,
        "fed_by": links if links["prior"] or links["init"] else None,
        "history": history,
    }


def _text(value: Any) -> str | None:
    """A path a trial's config.json records (a hand-edited one may hold anything): a string, or None."""
    return value if isinstance(value, str) else None


def _count(value: Any, default: int) -> int:
    """An epoch count a trial's config.json records, or ``default`` when it holds no count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _masks_checkpoint(results_dir: Path, masks: str | None, source: Path) -> str | None:
    """The checkpoint a stage-one masks folder (recorded in ``source``) was exported from (its
    ``_SUCCESS.json``), read from the results folder's own copy of that folder (none: None)."""
    if not masks or masks == GROUND_TRUTH_PRIOR:
        return None
    folder = results.own_copy(results_dir, masks, results.MASKS_DEPTH, source)
    success = results.read_masks_success(folder) if folder else None
    return success.checkpoint if success else None


def _checkpoint_link(results_dir: Path, checkpoint: str | None, source: Path) -> dict[str, Any] | None:
    """``.../<stage>/trials/<trial>/best`` (recorded in ``source``) as {stage, trial_id, epoch,
    checkpoint}; None if not such a path.

    The stage and trial come from the path's last parts, so a results folder moved or mounted
    elsewhere still links (the checkpoint's epoch is read from the folder's own copy).
    """
    if not checkpoint:
        return None
    parts = Path(checkpoint).parts
    if len(parts) < 4 or parts[-3] != "trials":
        return {"stage": None, "trial_id": None, "epoch": None, "checkpoint": checkpoint}
    stage, trial_id = parts[-4], parts[-2]
    own = results.own_copy(results_dir, checkpoint, results.CHECKPOINT_DEPTH, source)
    metrics = results.read_checkpoint_metrics(own) if own else None
    return {"stage": stage, "trial_id": trial_id, "epoch": metrics.epoch if metrics else None, "checkpoint": checkpoint}


def _upstream(results_dir: Path, stage_name: str | None) -> dict[str, Any] | None:
    """What the best trial of an earlier stage hands over: its checkpoint (and masks)."""
    if not stage_name:
        return None
    best = results.read_best(results_dir / stage_name)
    if not best:
        return {"stage": stage_name, "trial_id": None, "epoch": None, "checkpoint": None}
    link = _checkpoint_link(results_dir, best.checkpoint, results_dir / stage_name / results.BEST_FILE) or {}
    return {
        "stage": stage_name,
        "trial_id": best.trial_id,
        "epoch": link.get("epoch"),
        "checkpoint": best.checkpoint,
        "checkpoint_sha256": best.checkpoint_sha256,
        "masks": best.masks,
    }


def write_leaderboard(results_dir: str | Path) -> dict[str, Any]:
    board = build_leaderboard(results_dir)
    results.write_leaderboard(results_dir, board)
    return board


def load_leaderboard(results_dir: str | Path) -> dict[str, Any]:
    """``leaderboard.json`` if it is current, else the same data rebuilt in memory (nothing written)."""
    results_dir = Path(results_dir)
    board = results.read_leaderboard(results_dir)
    if board and board.get("sources_digest") == sources_digest(results_dir):
        return board
    return build_leaderboard(results_dir)


# ------------------------------------------------------------------------------- what it sums up
def summary_text(board: dict[str, Any]) -> str:
    """One line comparing the stages: each one's best trial, its val score and test scores."""
    parts = []
    for stage in board["stages"]:
        done = sum(ended(t["status"]) for t in stage["trials"])
        head = f"{stage['name']} {done}/{stage['planned_trials']}"
        best = stage.get("best")
        leader = next((t for t in stage["trials"] if t["leader"]), None)
        if best:
            test = best.get("test") or {}
            parts.append(
                f"{head} best {best['trial_id']} val {pct(best['value'])}"
                f" test {pct(test.get('miou'))}/{pct(test.get('fscore'))}"
            )
        elif leader:
            parts.append(f"{head} leading {leader['trial_id']} val {pct(leader['best'])}")
        else:
            parts.append(f"{head} {stage['status']}")
    return " -> ".join(parts)


def ablation(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's comparison, when the experiment has both arms: each semantic stage fed by a prior
    (Stepping Stones) and each without one (end-to-end), with its best trial's test scores and the
    epochs its arm trained in all (its own plus those of the stages it was fed by)."""
    by_name = {s["name"]: s for s in board["stages"]}
    semantic = [s for s in board["stages"] if get_task(s["task"]).semantic]
    if not any(s["prior_from"] for s in semantic) or all(s["prior_from"] for s in semantic):
        return []

    def upstream(stage: dict[str, Any]) -> set[str]:
        names = {link["stage"] for link in (stage["prior_from"], stage["init_from"]) if link}
        return names.union(*(upstream(by_name[n]) for n in names))

    arms = []
    for stage in semantic:
        test = (stage.get("best") or {}).get("test") or {}
        fed_by = sorted(upstream(stage), key=list(by_name).index)
        arms.append(
            {
                "stage": stage["name"],
                "arm": "Stepping Stones" if stage["prior_from"] else "end-to-end",
                "stages": [*fed_by, stage["name"]],
                "epochs": sum(by_name[n]["epochs"] for n in [*fed_by, stage["name"]]),
                "test_miou": test.get("miou"),
                "test_fscore": test.get("fscore"),
            }
        )
    return arms


def select(board: dict[str, Any], stage: str | None = None, top: int | None = None) -> dict[str, Any]:
    """The board with only ``stage`` (default all) and each stage's first ``top`` trials (default all)."""
    stages = [s for s in board["stages"] if stage is None or s["name"] == stage]
    if stage is not None and not stages:
        raise InputError(f"--stage {stage}: no such stage; expected one of {[s['name'] for s in board['stages']]}")
    if top is not None and top < 1:
        raise InputError(f"--top {top}: expected a positive number of trials")
    return {**board, "stages": [{**s, "trials": s["trials"][:top]} for s in stages]}
