"""``results/<name>/leaderboard.json`` and the rich tables drawn from it.

The leaderboard is built from the results folder alone (spec, trial folders, ``best.json``), so any
machine that sees the folder (another terminal, a laptop with the cluster's shared storage mounted)
gets the same data. The driver of a run keeps ``leaderboard.json`` current (at stage boundaries and,
through :mod:`aavs.orchestrator.views.live`, whenever a trial reports); readers (``aavs leaderboard``, its
``--json`` and ``--watch``, the report) take that file, and rebuild the same data in memory only
when its recorded fingerprint of the source files no longer matches them: a reader never writes
into the folder, yet never shows stale data. Its files' records are in :mod:`aavs.orchestrator.results`.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import get_task
from aavs.orchestrator import results
from aavs.orchestrator.experiment.spec import StageSpec, configuration_key, fixed, planned_trials, searched
from aavs.orchestrator.results import StageStatus, TrialStatus

FILE = results.LEADERBOARD_FILE
STATUS_LABEL = {TrialStatus.STOPPED: "stopped early"}
STATUS_STYLE = {
    TrialStatus.DONE: "green",
    TrialStatus.RUNNING: "yellow",
    TrialStatus.STOPPED: "magenta",
    TrialStatus.FAILED: "bold red",
    TrialStatus.INTERRUPTED: "red",
    TrialStatus.PENDING: "dim",
}
BEST_STYLE = "bold green"
# The per-trial files a leaderboard is built from (relative to a stage folder); their sizes and
# modification times make the fingerprint that tells whether leaderboard.json is current.
_STAGE_SOURCES = (
    results.BEST_FILE,
    results.DONE_FILE,
    f"masks/{results.MASKS_SUCCESS_FILE}",
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
    f"trials/*/best/{results.CHECKPOINT_METRICS_FILE}",
)  # recipe.checkpointing.BEST (it imports torch)


def _ended(status: str) -> bool:
    return TrialStatus(status).ended


def _number(value: Any) -> float | None:
    """A finite float, or None (NaN and infinities would make leaderboard.json invalid JSON)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


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
        "trials_done": sum(sum(_ended(t["status"]) for t in s["trials"]) for s in stages),
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
    board = {
        "name": spec.spec["name"],
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
    return sum(t["epochs"] if _ended(t["status"]) else min(t["epochs_done"], t["epochs"]) for t in stage["trials"])


def _stage(results_dir: Path, stage: dict[str, Any]) -> dict[str, Any]:
    stage_dir = results_dir / stage["name"]
    metric, mode = stage["tune"]["metric"], stage["tune"]["mode"]
    searched_keys = sorted(searched(stage["params"]))
    planned = planned_trials(StageSpec.model_validate(stage))
    prior_from = _upstream(results_dir, stage.get("prior"))
    init_from = _upstream(results_dir, stage.get("init_from"))
    trials = [
        _trial(results_dir, d, metric, mode, stage["epochs"])
        for d in sorted((stage_dir / "trials").glob("t*"))
        if d.is_dir()
    ]
    sign = -1.0 if mode == "max" else 1.0
    repeats = int(stage["tune"].get("repeats", 1))
    configurations = _configurations(trials) if repeats > 1 else {}
    ranked = sorted(
        (t for t in trials if t["best"] is not None),
        key=lambda t: (
            sign * configurations.get(t["configuration"], {}).get("mean", 0.0),
            sign * t["best"],
            t["trial_id"],
        ),
    )
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    for row in trials:  # with repeats: the mean and std over the seeds of the trial's configuration
        row.update(configurations.get(row["configuration"], {}))
    for row in trials:  # a trial that has not started yet will be fed what the stage feeds now
        if row["fed_by"] is None and (prior_from or init_from):
            row["fed_by"] = {"prior": prior_from, "init": init_from}
    best = results.read_best(stage_dir)
    done = results.read_done(stage_dir) is not None and best is not None
    leader = best.trial_id if best else (ranked[0]["trial_id"] if ranked else None)
    for row in trials:
        row["leader"] = row["trial_id"] == leader
        if best and row["trial_id"] == best.trial_id:
            row["test"] = best.test
    if done:
        status = StageStatus.DONE
    elif not trials:
        status = StageStatus.PENDING
    elif len(trials) == planned and all(_ended(t["status"]) for t in trials) and not ranked:
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
        "searched": searched_keys,
        "fixed": fixed(stage["params"]),
        "repeats": repeats,
        "prior_from": prior_from,
        "init_from": init_from,
        "best": _best_summary(best) if best else None,
        "trials": sorted(trials, key=lambda t: (t["rank"] or 10**6, t["trial_id"])),
    }


def _best_summary(best: results.BestTrial) -> dict[str, Any]:
    """best.json's summary, with the class names its checkpoint records (the data's label2idx.json
    for a semantic stage; None when the checkpoint cannot be read)."""
    keys = (
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
    )
    return {**best.model_dump(include=set(keys)), "classes": _checkpoint_classes(Path(best.checkpoint))}


def _checkpoint_classes(checkpoint: Path) -> list[str] | None:
    """The class names a checkpoint's ``aavs.json`` (aavs.models' metadata, not a results file) records."""
    try:
        meta = json.loads((checkpoint / "aavs.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return meta.get("classes")


def _configurations(trials: list[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Per configuration (the trials that differ only in their seed): the mean, standard deviation and
    number of its trials' best values so far."""
    values: dict[str, list[float]] = {}
    for t in trials:
        if t["best"] is not None:
            values.setdefault(t["configuration"], []).append(t["best"])
    return {
        key: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "seeds": len(v)}
        for key, v in values.items()
    }


def _trial(results_dir: Path, trial_dir: Path, metric: str, mode: str, epochs: int) -> dict[str, Any]:
    status_doc = results.read_status(trial_dir)
    config = results.read_trial_config(trial_dir) or {}
    by_epoch: dict[int, results.MetricsRow] = {}
    for row in results.read_metrics(trial_dir):  # a finished trial run again reports its last epoch again
        if isinstance(row.epoch, int):
            by_epoch[row.epoch] = row
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    scored = [r for r in rows if _number(r.get(metric)) is not None]
    best_row = None
    if scored:  # the first of equal values: the checkpoint a strict improvement kept
        best_row = (max if mode == "max" else min)(scored, key=lambda r: r[metric])
    history = {"epoch": [r.epoch for r in rows], "phase": [r.phase for r in rows]}
    for key in dict.fromkeys(("val/miou", "val/fscore", metric)):
        history[key] = [_number(r.get(key)) for r in rows]
    params = results.read_params(trial_dir) or {}
    schedule = results.read_schedule(trial_dir)  # population-based training: what held from which epoch
    links = {
        "prior": _checkpoint_link(results_dir, _masks_checkpoint(config.get("prior"))),
        "init": _checkpoint_link(results_dir, config.get("init_from")),
    }
    return {
        "trial_id": trial_dir.name,
        "rank": None,
        "status": status_doc.status if status_doc else TrialStatus.PENDING,
        "error": status_doc.error if status_doc else None,
        "log": str(trial_dir / "log.txt")
        if (trial_dir / "log.txt").exists()
        else None,  # aavs.orchestrator.recipe.output_capture
        "params": params,
        "configuration": configuration_key(params),
        "schedule": [span.model_dump() for span in schedule.spans] if schedule and len(schedule.spans) > 1 else None,
        "epochs_done": len(rows),
        "epochs": int(config.get("epochs", epochs)),
        "best": _number(best_row[metric]) if best_row else None,
        "best_epoch": best_row.epoch if best_row else None,
        "val/miou": _number(best_row.get("val/miou")) if best_row else None,
        "val/fscore": _number(best_row.get("val/fscore")) if best_row else None,
        "test": None,
        "leader": False,
        "fed_by": links if links["prior"] or links["init"] else None,
        "history": history,
    }


def _masks_checkpoint(masks: str | None) -> str | None:
    """The checkpoint a stage-one masks folder was exported from (its ``_SUCCESS.json``)."""
    if not masks or masks == "ground-truth":
        return None
    success = results.read_masks_success(masks)
    return success.checkpoint if success else None


def _checkpoint_link(results_dir: Path, checkpoint: str | None) -> dict[str, Any] | None:
    """``.../<stage>/trials/<trial>/best`` as {stage, trial_id, epoch, checkpoint}; None if not such a path.

    The stage and trial come from the path's last parts, so a results folder moved or mounted
    elsewhere still links (the checkpoint's epoch is read from the folder's own copy).
    """
    if not checkpoint:
        return None
    parts = Path(checkpoint).parts
    if len(parts) < 4 or parts[-3] != "trials":
        return {"stage": None, "trial_id": None, "epoch": None, "checkpoint": checkpoint}
    stage, trial_id = parts[-4], parts[-2]
    metrics = results.read_checkpoint_metrics(results_dir / stage / "trials" / trial_id / parts[-1])
    return {"stage": stage, "trial_id": trial_id, "epoch": metrics.epoch if metrics else None, "checkpoint": checkpoint}


def _upstream(results_dir: Path, stage_name: str | None) -> dict[str, Any] | None:
    """What the best trial of an earlier stage hands over: its checkpoint (and masks)."""
    if not stage_name:
        return None
    best = results.read_best(results_dir / stage_name)
    if not best:
        return {"stage": stage_name, "trial_id": None, "epoch": None, "checkpoint": None}
    link = _checkpoint_link(results_dir, best.checkpoint) or {}
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


# ------------------------------------------------------------------------------------- rendering
def pct(value: Any) -> str:
    """A score in [0, 1] as a percentage with two decimals; ``-`` when there is none."""
    value = _number(value)
    return "-" if value is None else f"{100 * value:.2f}"


def _fmt_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _link_label(link: dict[str, Any] | None, with_stage: bool = False) -> str:
    if not link or not link.get("trial_id"):
        return "-"
    label = link["trial_id"] + (f"@e{link['epoch']}" if link.get("epoch") is not None else "")
    return f"{link['stage']}/{label}" if with_stage else label


def status_label(status: str) -> str:
    return STATUS_LABEL.get(status, status)


def stage_table(stage: dict[str, Any]) -> Table:
    """One stage's trials, best first; the best (or, while running, the leading) trial in BEST_STYLE."""
    title = Text(f"{stage['name']}", style="bold")
    title.append(f" {stage['task']}, {stage['status']}, by {stage['metric']} ({stage['mode']})", style="")
    classes = (stage.get("best") or {}).get("classes")
    if classes:
        title.append(f" over {len(classes)} classes", style="")
    upstream = stage.get("prior_from") or stage.get("init_from")
    if upstream:
        sha = (upstream.get("checkpoint_sha256") or "")[:8]
        title.append(f"\n  fed by {_link_label(upstream, with_stage=True)}" + (f" (sha {sha})" if sha else ""))
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    table.add_column("#", justify="right")
    table.add_column("trial")
    table.add_column("status")
    for p in stage["searched"]:
        table.add_column(p, justify="right")
    table.add_column("ep", justify="right")
    if stage.get("repeats", 1) > 1:
        table.add_column("mean ± std", justify="right")
    table.add_column("val mIoU", justify="right")
    table.add_column("val F", justify="right")
    table.add_column("test mIoU/F", justify="right")
    if upstream:
        table.add_column("from")
    for row in stage["trials"]:
        test = row.get("test")
        cells: list[Any] = [
            str(row["rank"] or "-"),
            row["trial_id"],
            Text(status_label(row["status"]), style=STATUS_STYLE.get(row["status"], "")),
            *[_fmt_param(row["params"].get(p, "-")) for p in stage["searched"]],
            f"{row['epochs_done']}/{row['epochs']}",
            *([f"{pct(row.get('mean'))} ± {pct(row.get('std'))}"] if stage.get("repeats", 1) > 1 else []),
            pct(row["val/miou"]),
            pct(row["val/fscore"]),
            f"{pct(test.get('miou'))}/{pct(test.get('fscore'))}" if test else "-",
        ]
        if upstream:
            fed = row["fed_by"] or {}
            cells.append(_link_label(fed.get("prior") or fed.get("init")))
        table.add_row(*cells, style=BEST_STYLE if row["leader"] else None)
    notes = []
    if stage["fixed"]:
        notes.append("fixed: " + ", ".join(f"{k}={_fmt_param(v)}" for k, v in stage["fixed"].items()))
    if stage.get("repeats", 1) > 1:
        notes.append(f"ranked by the mean over each configuration's {stage['repeats']} seeds")
    notes.extend(_schedule_note(t) for t in stage["trials"] if t.get("schedule"))
    hidden = stage["trial_count"] - len(stage["trials"])
    if hidden > 0:
        notes.append(f"{hidden} more trial(s) not shown")
    notes.extend(
        f"{t['trial_id']} failed: {t['error'] or 'see its log'}" + (f" (log: {t['log']})" if t.get("log") else "")
        for t in stage["trials"]
        if t["status"] in (TrialStatus.FAILED, TrialStatus.INTERRUPTED)
    )
    if not stage["trials"]:
        notes.append(f"{stage['planned_trials']} trial(s) planned, none started")
    if notes:
        table.caption, table.caption_justify = "\n".join(notes), "left"
    return table


def _schedule_note(trial: dict[str, Any]) -> str:
    """``t001: lr 0.00035, from epoch 3 0.0015 (t000's state)``: a PBT trial's parameters over time."""
    spans = trial["schedule"]
    changed = sorted({k for span in spans for k, v in span["params"].items() if v != spans[0]["params"].get(k)})
    parts = []
    for span in spans:
        values = " ".join(f"{k} {_fmt_param(span['params'].get(k))}" for k in changed)
        origin = f" ({span['exploited']}'s state)" if span.get("exploited") else ""
        parts.append(values if span["from_epoch"] == 0 else f"from epoch {span['from_epoch'] + 1} {values}{origin}")
    return f"{trial['trial_id']}: " + ", ".join(parts)


def summary_text(board: dict[str, Any]) -> str:
    """One line comparing the stages: each one's best trial, its val score and test scores."""
    parts = []
    for stage in board["stages"]:
        done = sum(_ended(t["status"]) for t in stage["trials"])
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


def ablation_text(arms: list[dict[str, Any]]) -> str:
    """``Stepping Stones (localize -> semantic, 20 epochs) test mIoU/F 30.12/33.40 | end-to-end (...) ...``"""
    return " | ".join(
        f"{a['arm']} ({' -> '.join(a['stages'])}, {a['epochs']} epochs) test mIoU/F "
        f"{pct(a['test_miou'])}/{pct(a['test_fscore'])}"
        for a in arms
    )


def select(board: dict[str, Any], stage: str | None = None, top: int | None = None) -> dict[str, Any]:
    """The board with only ``stage`` (default all) and each stage's first ``top`` trials (default all)."""
    stages = [s for s in board["stages"] if stage is None or s["name"] == stage]
    if stage is not None and not stages:
        raise InputError(f"--stage {stage}: no such stage; expected one of {[s['name'] for s in board['stages']]}")
    if top is not None and top < 1:
        raise InputError(f"--top {top}: expected a positive number of trials")
    return {**board, "stages": [{**s, "trials": s["trials"][:top]} for s in stages]}


def render_leaderboard(board: dict[str, Any], stage: str | None = None, top: int | None = None) -> Group:
    board = select(board, stage, top)
    heading = Text(f"experiment {board['name']} ({board['status']})", style="bold")
    tables = [part for s in board["stages"] for part in (stage_table(s), Text(""))]
    footer = [Text(board["summary"], style="bold")]
    if board.get("ablation"):
        footer.append(Text(ablation_text(board["ablation"]), style="bold"))
    return Group(heading, Text(""), *tables, *footer)
