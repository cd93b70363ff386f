"""The leaderboard as rich tables: one per stage, best first, and the line that sums the stages up.

The data (``leaderboard.json``, or the same rebuilt from the folder) is :mod:`aavs.orchestrator.views.board`'s;
its names are re-exported here, so ``aavs.orchestrator.views.leaderboard`` is the one import of a caller
that builds and draws a leaderboard.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from aavs.orchestrator.results import TrialStatus
from aavs.orchestrator.views.board import (
    FILE,
    ablation,
    build_leaderboard,
    load_leaderboard,
    pct,
    select,
    sources_digest,
    summary_text,
    write_leaderboard,
)

STATUS_LABEL: dict[str, str] = {TrialStatus.STOPPED: "stopped early"}
STATUS_STYLE: dict[str, str] = {
    TrialStatus.DONE: "green",
    TrialStatus.RUNNING: "yellow",
    TrialStatus.STOPPED: "magenta",
    TrialStatus.FAILED: "bold red",
    TrialStatus.INTERRUPTED: "red",
    TrialStatus.PENDING: "dim",
}
BEST_STYLE = "bold green"

__all__ = [
    "BEST_STYLE",
    "FILE",
    "STATUS_LABEL",
    "STATUS_STYLE",
    "ablation",
    "ablation_text",
    "build_leaderboard",
    "load_leaderboard",
    "pct",
    "render_leaderboard",
    "select",
    "sources_digest",
    "stage_table",
    "status_label",
    "summary_text",
    "write_leaderboard",
]


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
    repeats = stage.get("repeats", 1) > 1
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    table.add_column("#", justify="right")
    table.add_column("trial")
    table.add_column("status")
    for p in stage["searched"]:
        table.add_column(p, justify="right")
    table.add_column("ep", justify="right")
    if repeats:
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
            *([f"{pct(row.get('mean'))} ± {pct(row.get('std'))}"] if repeats else []),
            pct(row["val/miou"]),
            pct(row["val/fscore"]),
            f"{pct(test.get('miou'))}/{pct(test.get('fscore'))}" if test else "-",
        ]
        if upstream:
            fed = row["fed_by"] or {}
            cells.append(_link_label(fed.get("prior") or fed.get("init")))
        table.add_row(*cells, style=BEST_STYLE if row["leader"] else None)
    notes = _notes(stage)
    if notes:
        table.caption, table.caption_justify = "\n".join(notes), "left"
    return table


def _notes(stage: dict[str, Any]) -> list[str]:
    """The lines under a stage's table: fixed values, how repeats rank, PBT schedules, hidden rows, failures."""
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
    return notes


def _schedule_note(trial: dict[str, Any]) -> str:
    """``t001: lr 0.00035, from epoch 3 lr 0.0015 (t000's state)``: a PBT trial's parameters over time."""
    spans = trial["schedule"]
    changed = sorted({k for span in spans for k, v in span["params"].items() if v != spans[0]["params"].get(k)})
    parts = []
    for span in spans:
        values = " ".join(f"{k} {_fmt_param(span['params'].get(k))}" for k in changed)
        origin = f" ({span['exploited']}'s state)" if span.get("exploited") else ""
        parts.append(values if span["from_epoch"] == 0 else f"from epoch {span['from_epoch'] + 1} {values}{origin}")
    return f"{trial['trial_id']}: " + ", ".join(parts)


def ablation_text(arms: list[dict[str, Any]]) -> str:
    """``Stepping Stones (localize -> semantic, 20 epochs) test mIoU/F 30.12/33.40 | end-to-end (...) ...``"""
    return " | ".join(
        f"{a['arm']} ({' -> '.join(a['stages'])}, {a['epochs']} epochs) test mIoU/F "
        f"{pct(a['test_miou'])}/{pct(a['test_fscore'])}"
        for a in arms
    )


def render_leaderboard(board: dict[str, Any], stage: str | None = None, top: int | None = None) -> Group:
    board = select(board, stage, top)
    heading = Text(f"experiment {board['name']} ({board['status']})", style="bold")
    tables = [part for s in board["stages"] for part in (stage_table(s), Text(""))]
    footer = [Text(board["summary"], style="bold")]
    if board.get("ablation"):
        footer.append(Text(ablation_text(board["ablation"]), style="bold"))
    return Group(heading, Text(""), *tables, *footer)
