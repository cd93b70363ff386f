"""``results/<name>/leaderboard.json`` and the rich tables drawn from it.

The JSON file is rebuilt from the results folder alone (spec, trial folders, ``best.json``), so any
machine that sees the folder (another terminal, a laptop with the cluster's shared storage mounted)
renders the same table, and ``--watch`` simply re-reads it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from aavs.datasets import atomic
from aavs.datasets.errors import InputError
from aavs.orchestrator.reporting import read_metrics

FILE = "leaderboard.json"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_leaderboard(results_dir: str | Path) -> dict[str, Any]:
    """The leaderboard of an experiment folder, from its files."""
    results_dir = Path(results_dir)
    spec = _read(results_dir / "spec.json")
    if spec is None:
        raise InputError(f"{results_dir}: not an experiment results folder (no spec.json)")
    stages = []
    for stage in spec["spec"]["stages"]:
        stage_dir = results_dir / stage["name"]
        metric, mode = stage["tune"]["metric"], stage["tune"]["mode"]
        best = _read(stage_dir / "best.json")
        trials = [_trial_row(d, metric, stage["epochs"]) for d in sorted((stage_dir / "trials").glob("t*"))
                  if d.is_dir()]
        ranked = sorted((t for t in trials if t["best"] is not None),
                        key=lambda t: (-t["best"] if mode == "max" else t["best"], t["trial_id"]))
        for rank, row in enumerate(ranked, 1):
            row["rank"] = rank
        prior_from = None
        if stage.get("prior"):
            upstream = _read(results_dir / stage["prior"] / "best.json")
            if upstream:
                prior_from = {"stage": stage["prior"], "trial_id": upstream["trial_id"],
                              "checkpoint": upstream["checkpoint"], "masks": upstream.get("masks")}
        done = (stage_dir / "done.json").exists()
        status = "done" if done else ("running" if trials else "pending")
        stages.append({"name": stage["name"], "task": stage["task"], "metric": metric, "mode": mode,
                       "epochs": stage["epochs"], "status": status, "best": best, "prior_from": prior_from,
                       "trials": sorted(trials, key=lambda t: (t.get("rank") or 10**6, t["trial_id"]))})
    return {"name": spec["spec"]["name"], "updated": time.time(), "stages": stages}


def _trial_row(trial_dir: Path, metric: str, epochs: int) -> dict[str, Any]:
    rows = read_metrics(trial_dir)
    status = (_read(trial_dir / "status.json") or {}).get("status", "pending")
    values = [r.get(metric) for r in rows]
    finite = [(v, r) for v, r in zip(values, rows) if isinstance(v, (int, float)) and not math.isnan(v)]
    best_row = None
    if finite:
        best_row = (max if not metric.endswith("loss") else min)(finite, key=lambda x: x[0])[1]
    return {
        "trial_id": trial_dir.name, "rank": None, "status": status,
        "params": _read(trial_dir / "params.json") or {},
        "epochs_done": len(rows), "epochs": epochs,
        "best": best_row.get(metric) if best_row else None,
        "best_epoch": best_row.get("epoch") if best_row else None,
        "val/miou": best_row.get("val/miou") if best_row else None,
        "val/fscore": best_row.get("val/fscore") if best_row else None,
        "curve": [r.get(metric) for r in rows],
    }


def write_leaderboard(results_dir: str | Path) -> dict[str, Any]:
    board = build_leaderboard(results_dir)
    atomic.write_json(Path(results_dir) / FILE, board)
    return board


def load_leaderboard(results_dir: str | Path) -> dict[str, Any]:
    """The current leaderboard: rebuilt from the folder (always fresh, also while a run writes)."""
    return build_leaderboard(results_dir)


# ------------------------------------------------------------------------------------- rendering
def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) or math.isnan(value) else f"{100 * value:.2f}"


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


STATUS_STYLE = {"done": "green", "running": "yellow", "stopped": "dim", "failed": "red", "pending": "dim"}


def stage_table(stage: dict[str, Any], top: int | None = None) -> Table:
    title = f"{stage['name']} ({stage['task']}, {stage['status']})"
    if stage.get("prior_from"):
        p = stage["prior_from"]
        title += f"  prior: {p['stage']}/{p['trial_id']}"
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    params = sorted({k for t in stage["trials"] for k in t["params"]})
    table.add_column("#", justify="right")
    table.add_column("trial")
    table.add_column("status")
    for p in params:
        table.add_column(p, justify="right")
    table.add_column("ep", justify="right")
    table.add_column("mIoU", justify="right")
    table.add_column("F", justify="right")
    table.add_column("test mIoU/F", justify="right")
    best_id = stage["best"]["trial_id"] if stage.get("best") else (stage["trials"][0]["trial_id"] if stage["trials"] and stage["trials"][0]["rank"] == 1 else None)
    for row in stage["trials"][: top or None]:
        test = stage["best"].get("test") if stage.get("best") and row["trial_id"] == stage["best"]["trial_id"] else None
        cells = [str(row["rank"] or "-"), row["trial_id"],
                 Text(row["status"], style=STATUS_STYLE.get(row["status"], "")),
                 *[_fmt_param(row["params"].get(p, "-")) for p in params],
                 f"{row['epochs_done']}/{row['epochs']}", _pct(row["val/miou"]), _pct(row["val/fscore"]),
                 f"{_pct(test.get('miou'))}/{_pct(test.get('fscore'))}" if test else "-"]
        table.add_row(*cells, style="bold green" if row["trial_id"] == best_id else None)
    return table


def summary_line(board: dict[str, Any]) -> Text:
    parts = []
    for stage in board["stages"]:
        best = stage.get("best")
        if best:
            test = best.get("test") or {}
            parts.append(f"{stage['name']}: {best['trial_id']} val {_pct(best['value'])} test mIoU {_pct(test.get('miou'))} F {_pct(test.get('fscore'))}")
        else:
            parts.append(f"{stage['name']}: {stage['status']}")
    return Text(" | ".join(parts), style="bold")


def render_leaderboard(board: dict[str, Any], stage: str | None = None, top: int | None = None) -> Group:
    stages = [s for s in board["stages"] if stage is None or s["name"] == stage]
    if stage is not None and not stages:
        raise InputError(f"--stage {stage}: no such stage; expected one of {[s['name'] for s in board['stages']]}")
    return Group(Text(f"experiment {board['name']}", style="bold"), *[stage_table(s, top) for s in stages],
                 summary_line(board))


def watch(results_dir: Path, console: Console, stage: str | None, top: int | None, interval: float = 2.0) -> None:
    from rich.live import Live

    with Live(render_leaderboard(load_leaderboard(results_dir), stage, top), console=console,
              refresh_per_second=1) as live:
        while True:
            time.sleep(interval)
            board = load_leaderboard(results_dir)
            live.update(render_leaderboard(board, stage, top))
            if all(s["status"] == "done" for s in board["stages"]):
                break
