"""Leaderboard tables, ``aavs leaderboard --json`` and the live view, on the folder of a real tiny run.

One ``aavs run --local`` (tiny preset, 2 videos per split; 3 stage-one trials, 2 stage-two trials,
2 epochs each) makes the results folder once per session (``tiny_run`` and ``tiny_results`` in
conftest.py; test_figures.py uses them too); tests that need a failed or still-running trial edit a copy of it.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import threading
import time
from pathlib import Path

from rich.console import Console

from aavs.datasets.layout import class_names
from aavs.orchestrator import results
from aavs.orchestrator.cli import main
from aavs.orchestrator.views.leaderboard import (
    BEST_STYLE,
    FILE,
    build_leaderboard,
    load_leaderboard,
    render_leaderboard,
    stage_table,
)
from aavs.orchestrator.views.live import LiveView, watch

ROW = re.compile(r"^\s*(\d+|-)\s+(t\d{3})\s+(done|running|failed|pending|stopped early)\s+(.*)$")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def render(board: dict, **kwargs) -> tuple[str, str]:
    """(plain text, text with ANSI styles) of the leaderboard at 80 columns."""
    console = Console(file=io.StringIO(), record=True, width=80, force_terminal=True, color_system="standard")
    console.print(render_leaderboard(board, **kwargs))
    return console.export_text(clear=False), console.export_text(styles=True)


def table_rows(text: str, stage: str) -> list[tuple[str, ...]]:
    """The rows of one stage's table in a rendered leaderboard: (rank, trial, status, rest...)."""
    section = text.split(f"\n{stage} ", 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if not line.strip():
            if rows:
                break
            continue
        match = ROW.match(line)
        if match:
            rows.append((*match.groups()[:3], *match.group(4).split()))
    return rows


def best_values(results: Path, stage: str) -> dict[str, float]:
    """Each trial's best val/miou from its own best checkpoint (not from the leaderboard)."""
    return {t.name: read(t / "best" / "metrics.json")["val/miou"] for t in (results / stage / "trials").iterdir()}


def copy_results(results: Path, tmp_path: Path) -> Path:
    return Path(
        shutil.copytree(results, tmp_path / "tiny", ignore=shutil.ignore_patterns("checkpoints", "data", "cache"))
    )


# --------------------------------------------------------------------------------------- tables
def test_rows_are_ranked_by_the_metric_and_the_best_is_highlighted(tiny_results: Path):
    board = load_leaderboard(tiny_results)
    text, styled = render(board)
    assert max(len(line) for line in text.splitlines()) <= 80
    # Each stage names the classes its best checkpoint predicts: the synthetic data's for stage two.
    assert [s["best"]["classes"] for s in board["stages"]] == [
        ["background", "sounding"],
        list(class_names(tiny_results / "data")),
    ]
    assert "localize avss-binary, done, by val/miou (max) over 2 classes" in text
    assert "semantic avss, done, by val/miou (max) over 9 classes" in text
    for stage in ("localize", "semantic"):
        values = best_values(tiny_results, stage)
        rows = table_rows(text, stage)
        expected = sorted(values, key=lambda t: (-values[t], t))
        assert [r[1] for r in rows] == expected
        assert [r[0] for r in rows] == [str(i) for i in range(1, len(expected) + 1)]
        assert all(r[2] == "done" for r in rows)
        assert [r[5] for r in rows] == [f"{100 * values[t]:.2f}" for t in expected]  # val mIoU column
        best = read(tiny_results / stage / "best.json")
        assert best["trial_id"] == expected[0]
        # The best row, and only it, carries the highlight style, and its test scores.
        table = stage_table(next(s for s in board["stages"] if s["name"] == stage))
        assert [r.style for r in table.rows] == [BEST_STYLE] + [None] * (len(expected) - 1)
        styled_rows = [line for line in styled.splitlines() if ROW.match(re.sub(r"\x1b\[[0-9;]*m", "", line))]
        best_line = next(line for line in styled_rows if f"{100 * best['value']:.2f}" in line)
        assert best["trial_id"] in best_line and "\x1b[1;32m" in best_line  # bold green in the rendered output
        assert sum("\x1b[1;32m" in line for line in styled_rows) == 2  # one highlighted row per stage
        test = best["test"]
        assert rows[0][-1 if stage == "localize" else -2] == f"{100 * test['miou']:.2f}/{100 * test['fscore']:.2f}"
        assert all(r[-1 if stage == "localize" else -2] == "-" for r in rows[1:])


def test_stage_two_rows_show_the_stage_one_trial_and_checkpoint_that_fed_them(tiny_results: Path):
    text, _ = render(load_leaderboard(tiny_results))
    one = read(tiny_results / "localize" / "best.json")
    epoch = read(Path(one["checkpoint"]) / "metrics.json")["epoch"]
    assert f"fed by localize/{one['trial_id']}@e{epoch} (sha {one['checkpoint_sha256'][:8]})" in text
    rows = table_rows(text, "semantic")
    assert len(rows) == 2 and all(r[-1] == f"{one['trial_id']}@e{epoch}" for r in rows)
    assert "from" not in text.split("\nlocalize ", 1)[1].split("\n\n")[0]  # stage one was fed by nothing
    # The summary compares the stages' bests.
    two = read(tiny_results / "semantic" / "best.json")
    summary = " ".join(text.split("\n\n")[-1].split())
    assert f"localize 3/3 best {one['trial_id']} val {100 * one['value']:.2f}" in summary
    assert f"-> semantic 2/2 best {two['trial_id']} val {100 * two['value']:.2f}" in summary


def test_json_output_is_the_table_data_and_leaderboard_json(tiny_results: Path, capsys):
    assert main(["leaderboard", str(tiny_results), "--json"]) == 0
    out = capsys.readouterr().out
    board = json.loads(out)  # one object, nothing else on stdout
    assert board == read(tiny_results / FILE)  # leaderboard.json was current: it is the source
    text, _ = render(board)
    for stage in board["stages"]:
        rows = table_rows(text, stage["name"])
        assert [(r[0], r[1], r[2]) for r in rows] == [
            (str(t["rank"]), t["trial_id"], t["status"]) for t in stage["trials"]
        ]
        for row, trial in zip(rows, stage["trials"]):
            assert row[3] == f"{trial['params']['lr']:.3g}"
            assert row[4] == f"{trial['epochs_done']}/{trial['epochs']}"
            assert row[5:7] == (f"{100 * trial['val/miou']:.2f}", f"{100 * trial['val/fscore']:.2f}")
    assert main(["leaderboard", str(tiny_results), "--json", "--stage", "semantic", "--top", "1"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in one["stages"]] == ["semantic"]
    assert [t["trial_id"] for t in one["stages"][0]["trials"]] == [
        read(tiny_results / "semantic" / "best.json")["trial_id"]
    ]
    text, _ = render(board, stage="localize", top=1)
    assert len(table_rows(text, "localize")) == 1 and "2 more trial(s) not shown" in text and "\nsemantic " not in text
    assert main(["leaderboard", str(tiny_results), "--stage", "nope"]) == 2


def test_run_printed_plain_lines_when_stdout_is_not_a_terminal(tiny_run: tuple[Path, str]):
    results, out = tiny_run
    assert "\x1b[" not in out  # no cursor movement or colours in a log
    lines = out.splitlines()
    for stage in ("localize", "semantic"):
        for trial in sorted((results / stage / "trials").iterdir()):
            for epoch in (1, 2):
                assert sum(f"] {stage} {trial.name} epoch {epoch}/2: val mIoU" in line for line in lines) == 1
            assert sum(f"] {stage} {trial.name} done after 2/2 epochs" in line for line in lines) == 1
    done_one = next(i for i, line in enumerate(lines) if "stage localize done: best" in line)
    first_two = next(i for i, line in enumerate(lines) if "] semantic " in line)
    assert done_one < first_two
    assert any(line.startswith("[5/5 trials 10/10 epochs] stage semantic done") for line in lines)


# ------------------------------------------------------------------- unfinished and failed trials
def make_unfinished(results: Path, tmp_path: Path) -> Path:
    """A copy where a stage-one trial failed, one was stopped early, and stage two is still running."""
    copy = copy_results(results, tmp_path)
    one = sorted((copy / "localize" / "trials").iterdir())
    failed = one[1]
    (failed / "status.json").write_text(
        json.dumps({"status": "failed", "error": "loss is not finite at epoch 1 step 0"})
    )
    stopped = one[2]
    (stopped / "status.json").write_text(json.dumps({"status": "stopped"}))
    running = copy / "semantic" / "trials" / "t000"
    lines = (running / "metrics.jsonl").read_text().splitlines()
    (running / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a torn last line
    (running / "status.json").write_text(json.dumps({"status": "running", "epoch": 1}))
    for name in ("best.json", "done.json"):
        (copy / "semantic" / name).unlink()
    shutil.rmtree(copy / "semantic" / "trials" / "t001")  # not started yet
    return copy


def test_failed_stopped_and_running_trials_render(tiny_results: Path, tmp_path: Path, capsys):
    copy = make_unfinished(tiny_results, tmp_path)
    board = load_leaderboard(copy)  # leaderboard.json is stale now: rebuilt from the files
    assert board["sources_digest"] != read(copy / FILE)["sources_digest"]
    text, styled = render(board)
    statuses = {r[1]: r[2] for r in table_rows(text, "localize")}
    assert sorted(statuses.values()) == ["done", "failed", "stopped early"]
    assert "failed: loss is not finite at epoch 1 step 0" in " ".join(text.split())
    semantic = table_rows(text, "semantic")
    assert [r[:3] for r in semantic] == [("1", "t000", "running")]
    assert semantic[0][3:5] == ("0.001", "1/2")  # one whole epoch; the torn line is ignored
    assert "semantic avss, running" in text
    assert re.search(r"-> semantic 0/2 leading t000 val \d+\.\d\d", " ".join(text.split()))
    assert stage_table(board["stages"][1]).rows[0].style == BEST_STYLE  # the leader, while no best.json
    assert board["progress"] == {"trials": 5, "trials_done": 3, "epochs": 10, "epochs_done": 7}
    assert main(["leaderboard", str(copy)]) == 0
    assert "running" in capsys.readouterr().out
    assert not (copy / "semantic" / "done.json").exists()


# ------------------------------------------------------------------------------------ live view
def append_epoch(trial: Path, epoch: int, miou: float) -> None:
    """The trial reports an epoch that improved its best checkpoint (train_func: best/ first, then the report)."""
    results.write_checkpoint_metrics(trial / results.BEST, {"val/miou": miou, "val/fscore": 0.5, "epoch": epoch})
    results.append_metrics(trial, {"epoch": epoch, "phase": "B", "val/miou": miou, "val/fscore": 0.5})


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_driver_keeps_leaderboard_json_current_while_trials_report(tiny_results: Path, tmp_path: Path):
    copy = make_unfinished(tiny_results, tmp_path)
    trial = copy / "semantic" / "trials" / "t000"
    (trial / "metrics.jsonl").write_text((trial / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    with LiveView(copy, console=None, interval=0.05):
        append_epoch(trial, 1, 0.4321)

        def reported() -> bool:
            rows = read(copy / FILE)["stages"][1]["trials"]
            return rows[0]["epochs_done"] == 2 and rows[0]["val/miou"] == 0.4321

        wait_for(reported)


def test_watch_refreshes_in_place_reads_only_and_ends_with_the_run(tiny_results: Path, tmp_path: Path):
    copy = make_unfinished(tiny_results, tmp_path)
    trial = copy / "semantic" / "trials" / "t000"
    (trial / "metrics.jsonl").write_text((trial / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    before = (copy / FILE).read_bytes()
    screen = io.StringIO()
    console = Console(file=screen, width=80, force_terminal=True)
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (watch(copy, console, interval=0.05), finished.set()))
    thread.start()
    try:
        wait_for(lambda: "semantic avss, running" in screen.getvalue())
        append_epoch(trial, 1, 0.8765)
        wait_for(lambda: "87.65" in screen.getvalue())
        assert not finished.is_set()
        shutil.copy(tiny_results / "semantic" / "best.json", copy / "semantic" / "best.json")
        shutil.copy(tiny_results / "semantic" / "done.json", copy / "semantic" / "done.json")
        thread.join(timeout=10)
        assert finished.is_set()  # every stage ended: the watch returns
    finally:
        thread.join(timeout=10)
    frames = screen.getvalue()
    assert "\x1b[2K\x1b[1A" in frames  # redrawn in place (cursor moved back up), not appended
    assert "semantic avss, done" in frames.rsplit("\x1b[1A", 1)[1]  # the last frame shows the end
    assert (copy / FILE).read_bytes() == before  # a watcher never writes into the folder


def test_ablation_compares_stepping_stones_with_end_to_end():
    from aavs.orchestrator.views.leaderboard import ablation, ablation_text

    def stage(name, task, epochs, prior=None, init=None, test=None):
        link = lambda s: {"stage": s} if s else None  # noqa: E731
        return {
            "name": name,
            "task": task,
            "epochs": epochs,
            "prior_from": link(prior),
            "init_from": link(init),
            "best": {"test": test} if test else None,
        }

    board = {
        "stages": [
            stage("localize", "avss-binary", 10),
            stage("semantic", "avss", 12, prior="localize", init="localize", test={"miou": 0.30, "fscore": 0.35}),
            stage("end-to-end", "avss", 12, test={"miou": 0.20, "fscore": 0.25}),
        ]
    }
    arms = ablation(board)
    assert [(a["arm"], a["stages"], a["epochs"], a["test_miou"]) for a in arms] == [
        ("Stepping Stones", ["localize", "semantic"], 22, 0.30),
        ("end-to-end", ["end-to-end"], 12, 0.20),
    ]
    assert ablation_text(arms) == (
        "Stepping Stones (localize -> semantic, 22 epochs) test mIoU/F 30.00/35.00 | "
        "end-to-end (end-to-end, 12 epochs) test mIoU/F 20.00/25.00"
    )
    assert ablation({"stages": board["stages"][:2]}) == []  # one arm only: nothing to compare


# ------------------------------------------------------------------------------ one ranking rule
def test_leaderboard_and_driver_rank_alike_after_a_pbt_exploit(tmp_path: Path, capsys):
    """A population-based training exploit replaces a trial's best/ with the state it took over, but
    not the reports in its metrics.jsonl: the leaderboard, its --json and the driver's best trial all
    rank by the best checkpoint (results.rank_trials)."""
    from aavs.orchestrator.experiment.selection import pick_best
    from aavs.orchestrator.experiment.spec import parse_spec

    raw = {
        "name": "pbt",
        "data": {"synthetic": {}},
        "model": {"preset": "tiny"},
        "stages": [
            {
                "name": "search",
                "task": "s4",
                "epochs": 4,
                "params": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}},
                "tune": {"num_samples": 3, "scheduler": {"pbt": {"interval": 2}}},
            }
        ],
    }
    spec = parse_spec(raw, "test")
    folder = tmp_path / "pbt"
    results.write_spec(folder, spec.to_dict(), "h")
    stage_dir = folder / "search"
    # t000 reported 0.9 at epoch 2, then took t002's weaker state at epoch 3: its best/ holds 0.5 now.
    # t001 is between: 0.7 in both files. t002 is last either way.
    trials = {
        "t000": (0.001, [0.3, 0.9, 0.4, 0.5], (0.5, 3)),
        "t001": (0.002, [0.5, 0.7, 0.6, 0.65], (0.7, 1)),
        "t002": (0.003, [0.2, 0.3, 0.35, 0.4], (0.4, 3)),
    }
    for name, (lr, values, (best, best_epoch)) in trials.items():
        trial = stage_dir / "trials" / name
        results.write_params(trial, {"lr": lr})
        for epoch, value in enumerate(values):
            results.append_metrics(trial, {"epoch": epoch, "phase": "A", "val/miou": value, "val/fscore": value})
        results.write_checkpoint_metrics(
            trial / results.BEST, {"val/miou": best, "val/fscore": best, "epoch": best_epoch}
        )
        (trial / results.BEST / "model.safetensors").write_bytes(name.encode())  # the weights' digest
        results.write_status(trial, results.StatusRecord(status=results.TrialStatus.DONE, epoch=4, epochs=4))
    results.write_schedule(
        stage_dir / "trials" / "t000",
        results.Schedule(
            spans=[
                results.ScheduleEntry(from_epoch=0, params={"lr": 0.001}),
                results.ScheduleEntry(from_epoch=3, params={"lr": 0.004}, exploited="t002"),
            ]
        ),
    )
    ranked = results.rank_trials(stage_dir, "val/miou", "max")
    assert [r.trial_id for r in ranked] == ["t001", "t000", "t002"]
    board = build_leaderboard(folder)
    rows = board["stages"][0]["trials"]
    assert [(t["trial_id"], t["rank"], t["best"]) for t in rows] == [
        ("t001", 1, 0.7),
        ("t000", 2, 0.5),
        ("t002", 3, 0.4),
    ]
    assert rows[1]["val/miou"] == 0.5 and rows[1]["best_epoch"] == 3  # its checkpoint's, not its best report
    assert rows[1]["history"]["val/miou"] == [0.3, 0.9, 0.4, 0.5]  # the curve: every report
    assert [t["trial_id"] for t in rows if t["leader"]] == [ranked[0].trial_id]  # the star, while no best.json
    text, _ = render(board)
    assert [r[:2] for r in table_rows(text, "search")] == [("1", "t001"), ("2", "t000"), ("3", "t002")]
    assert "t000: lr 0.001, from epoch 4 lr 0.004 (t002's state)" in " ".join(text.split())
    assert main(["leaderboard", str(folder), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["stages"][0]["trials"]
    assert (listed[0]["trial_id"], listed[0]["rank"]) == (ranked[0].trial_id, 1)
    best = pick_best(spec.stages[0], stage_dir, tmp_path / "data")
    assert (best.trial_id, best.value) == (ranked[0].trial_id, ranked[0].value)
    results.write_best(stage_dir, best)
    results.write_done(stage_dir, "h")
    board = build_leaderboard(folder)
    assert board["stages"][0]["best"]["trial_id"] == board["stages"][0]["trials"][0]["trial_id"] == "t001"
    assert [t["trial_id"] for t in board["stages"][0]["trials"] if t["leader"]] == ["t001"]
