"""The fault matrix of docs/reliability.md that does not need a second node: damaged files left by an
older crash or a bad disk, a full disk, the --local driver killed in each of its stage tasks and in
stage two, one of two DeepSpeed ranks killed, Ctrl-C and `aavs stop`. Each ends, after `aavs resume`, with
the uninterrupted run's best.json values. (A trial's process killed under Ray: test_node_loss.py,
where its node is lost.)"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec

from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment.repair import masks_problem

pytestmark = [pytest.mark.slow]

SPEC = tiny_spec(name="faults")  # two stage-one trials, one stage-two trial, 2 epochs of one video


def best_values(folder: Path, stages: tuple[str, ...] = ("localize", "semantic")) -> dict[str, tuple]:
    out = {}
    for stage in stages:
        best = json.loads((folder / stage / "best.json").read_text())
        out[stage] = (best["trial_id"], best["value"], best["checkpoint_sha256"], best["test"])
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted --local run of SPEC; read-only, but for the module's last test, which damages it."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "faults.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    assert main(["run", str(folder / "faults.yaml"), "--local", "--results", str(folder / "results")]) == 0
    return folder / "results" / "faults"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.ray
@pytest.mark.subprocess
def test_driver_killed_in_each_stage_task_and_in_stage_two_resumes_to_the_same_results(
    reference: Path, ray_cluster, tmp_path
):
    """Ctrl-C once stage one's first trial has reported an epoch: the --local run stops after the step
    (exit 130, the trial interrupted, how to resume said). Then the driver's process group SIGKILLed,
    each time after `aavs resume`, as stage one's mask export starts, as its test evaluation starts, as
    its report starts, and once stage two's trial has reported its first epoch. The last `aavs resume`
    (on Ray, by request, although the run started --local) leaves stage one untouched (same mtimes),
    continues stage two's trial at its epoch, takes the killed driver's lock over, never uses a
    half-written masks folder, and ends with the uninterrupted run's values."""
    (tmp_path / "faults.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    results = tmp_path / "results"
    folder = results / "faults"
    trial = folder / "semantic" / "trials" / "t000"
    one, run = folder / "localize", ["run", str(tmp_path / "faults.yaml"), "--local", "--results", str(results)]
    resume = ["resume", str(folder)]

    proc = subprocess.Popen(
        [sys.executable, "-m", "aavs.orchestrator.cli", *run],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and not first_report(folder).is_file():
        assert proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 130, err[-2000:]
    assert f"aavs: stopped; `aavs resume {folder}` continues where it stopped" in err
    said = err + (one / "trials" / "t000" / "log.txt").read_text()  # (--local: the trial's log)
    assert "stopping: running trials finish their current step" in said
    assert json.loads((one / "trials" / "t000" / "status.json").read_text())["status"] == "interrupted"

    kills = [  # what runs, the file whose appearance says the moment has come, how long after it the kill comes
        ("the masks task", resume, one / "masks.log.txt", 0.5),
        ("the test task", resume, one / "test.log.txt", 0.5),
        ("the report", resume, one / "done.json", 0.1),  # drawn once the stage is done
        ("stage two", resume, trial / "metrics.jsonl", 0.0),  # its trial's first epoch reported
    ]
    for what, command, started, into in kills:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aavs.orchestrator.cli", *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 600
        while time.time() < deadline and not started.exists():
            assert proc.poll() is None, f"the run ended before {what} started"
            time.sleep(0.02)
        time.sleep(into)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert not (folder / "semantic" / "done.json").exists()
    assert json.loads((trial / "status.json").read_text())["status"] != "done", "killed too late"
    stage_one = {p: p.stat().st_mtime_ns for p in (folder / "localize").rglob("*") if p.is_file()}

    assert json.loads((folder / "run.json").read_text()) == {"mode": "local"}
    assert main(["resume", str(folder), "--ray"]) == 0  # on Ray, this time, by request
    assert {p: p.stat().st_mtime_ns for p in (folder / "localize").rglob("*") if p.is_file()} == stage_one
    assert [json.loads(line)["epoch"] for line in (trial / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert best_values(folder) == best_values(reference)
    assert masks_problem(folder / "localize" / "masks") is None
    assert not list((folder / "localize").glob(".masks*"))  # no staging folder left
    for stage in ("localize", "semantic"):
        assert (folder / "report" / stage / "predictions.json").is_file()


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs: a tiny trial's first epoch fits (best/ 6 MB, checkpoints/last/ 19 MB), the
    second's staged state does not. Skips where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_keeps_the_last_checkpoint_and_names_the_path(synth_root, small_disk, tmp_path, capsys):
    from aavs.orchestrator.experiment.repair import folder_problem

    raw = tiny_spec(
        name="one-trial",
        data={"synthetic": None, "root": str(synth_root)},
        stages={"localize": {"params": {"lr": 1.0e-3}}, "semantic": None},
    )
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(tmp_path / "one.yaml"), "--local", "--results", str(small_disk)]) == 1
    err = capsys.readouterr().err
    trial = small_disk / "one-trial" / "localize" / "trials" / "t000"
    assert "aavs: error: no space left on device while writing " in err and str(trial) in err
    assert json.loads((trial / "status.json").read_text())["status"] == "interrupted"  # resume continues it
    assert "no space left on device" in json.loads((trial / "status.json").read_text())["error"]
    assert folder_problem(trial / "checkpoints" / "last") is None  # the first epoch's state, whole
    assert json.loads((trial / "checkpoints" / "last" / "trainer.json").read_text())["state"]["epoch"] == 0
    assert not [p for p in trial.rglob(".*") if p.name != ".damaged"]  # no staging or temporary left

    # With room again, `aavs resume` continues from that state and ends as an uninterrupted run.
    roomy = tmp_path / "roomy"
    shutil.copytree(small_disk / "one-trial", roomy / "one-trial")
    assert main(["resume", str(roomy / "one-trial")]) == 0
    assert main(["run", str(tmp_path / "one.yaml"), "--local", "--results", str(tmp_path / "reference")]) == 0
    resumed, reference = (
        json.loads((root / "one-trial" / "localize" / "best.json").read_text())
        for root in (roomy, tmp_path / "reference")
    )
    assert (resumed["value"], resumed["checkpoint_sha256"]) == (reference["value"], reference["checkpoint_sha256"])


def first_report(folder: Path) -> Path:
    return folder / "localize" / "trials" / "t000" / "metrics.jsonl"


@pytest.mark.ray
def test_aavs_stop_ends_a_ray_run_resumably(reference: Path, ray_cluster, tmp_path, capsys):
    """`aavs stop` from another terminal (here a thread) once the first epoch is reported: the run
    ends with exit status 130 and says how to continue; `aavs resume` ends as an uninterrupted run.
    (--local's stop goes through the same request: Ctrl-C in
    test_driver_killed_in_each_stage_task_and_in_stage_two_resumes_to_the_same_results.)"""
    import threading

    from aavs.orchestrator.experiment.stopping import request_stop

    stage_one = {**SPEC, "stages": SPEC["stages"][:1]}  # stage one alone: its results are the reference's
    (tmp_path / "faults.yaml").write_text(yaml.safe_dump(stage_one, sort_keys=False))
    folder = tmp_path / "results" / "faults"
    said = []

    def stop_after_first_epoch() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not first_report(folder).is_file():
            time.sleep(0.02)
        said.append(request_stop(folder))  # what `aavs stop` prints

    stopper = threading.Thread(target=stop_after_first_epoch)
    stopper.start()
    args = ["run", str(tmp_path / "faults.yaml"), "--results", str(tmp_path / "results")]
    assert main(args) == 130
    stopper.join()
    out = capsys.readouterr()
    assert len(said) == 1 and said[0].endswith("to stop; running trials finish their current step")
    assert f"aavs: stopped; `aavs resume {folder}` continues where it stopped" in out.err
    statuses = [json.loads(p.read_text())["status"] for p in folder.glob("localize/trials/*/status.json")]
    assert "interrupted" in statuses and not (folder / "localize" / "done.json").exists()

    assert main(["resume", str(folder)]) == 0
    assert best_values(folder, ("localize",)) == best_values(reference, ("localize",))
    assert not (folder / "stop.json").exists()


def test_the_leaderboard_never_fails_on_files_being_replaced(tiny_results: Path, tmp_path):
    """What `aavs leaderboard --watch` reads while a run writes: status.json, best/metrics.json and
    leaderboard.json replaced (atomically, as aavs writes them) and metrics.jsonl appended in pieces
    (as a killed or slow writer leaves it) in a loop, while the leaderboard is loaded and drawn."""
    import io
    import threading

    from rich.console import Console

    from aavs.datasets import atomic
    from aavs.orchestrator.views.leaderboard import load_leaderboard, render_leaderboard, write_leaderboard

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_results, folder)
    trial = folder / "localize" / "trials" / "t000"
    originals = {p: p.read_bytes() for p in (trial / "status.json", trial / "best" / "metrics.json")}
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            for path, data in originals.items():
                atomic.write_bytes(path, data)
            with open(trial / "metrics.jsonl", "a") as f:  # one report, written in two pieces
                f.write('{"epoch": 9, "val/miou": 0.')
                f.flush()
                f.write(f"{n % 10}}}\n")
            write_leaderboard(folder)
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline, reads = time.time() + 3, 0
        while time.time() < deadline:
            board = load_leaderboard(folder)
            Console(file=io.StringIO(), width=120).print(render_leaderboard(board))
            assert [s["name"] for s in board["stages"]] == ["localize", "semantic"]
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads > 10


@pytest.mark.ray
@pytest.mark.deepspeed
def test_a_two_rank_deepspeed_trial_reports_once_and_saves_both_partitions(ray_cluster, tmp_path, capsys):
    """A two-worker DeepSpeed ZeRO-2 trial through Ray Train on the CPU: rank 0 alone reports, every
    epoch once, phase A then B; both ranks' optimizer partitions are in the training state; the trial's
    best epoch is the stage's best, and its checkpoint loads back as the binary network whose val mIoU
    `aavs evaluate` reproduces. (One of its ranks SIGKILLed, Ray Train restarting the group and the run
    ending with the uninterrupted run's numbers, and a DDP worker killed: test_rank_loss.py, in make
    test-faults.)"""
    from aavs.models import load_model

    raw = tiny_spec(
        name="deepspeed",
        compute={"workers_per_trial": 2, "strategy": "deepspeed", "deepspeed": {"zero_stage": 2}},
        stages={"localize": {"epochs": 2, "max_videos": 2, "params": {"lr": 1.0e-3}}, "semantic": None},
    )
    (tmp_path / "deepspeed.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(tmp_path / "deepspeed.yaml"), "--results", str(tmp_path / "results")]) == 0
    trial = tmp_path / "results" / "deepspeed" / "localize" / "trials" / "t000"
    rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and [r["phase"] for r in rows] == ["A", "B"]
    assert json.loads((trial / "status.json").read_text())["status"] == "done"
    state = trial / "checkpoints" / "last" / "accelerate"
    assert len(list(state.rglob("*optim_states.pt"))) == 2 and (state / "latest").is_file()
    best = json.loads((tmp_path / "results" / "deepspeed" / "localize" / "best.json").read_text())
    assert best["trial_id"] == "t000" and best["value"] == max(r["val/miou"] for r in rows)
    assert load_model(best["checkpoint"]).config.task == "avss-binary"
    capsys.readouterr()
    assert main(["evaluate", best["checkpoint"], "--data", best["data_root"], "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(best["value"], abs=1e-6)


def test_damaged_files_are_found_repaired_and_said(reference: Path, caplog):
    """The module's reference run damaged in place (results folders hold absolute paths: not copied),
    so this test comes last in the module; the values it must end with are read first."""
    expected = best_values(reference)
    folder = reference
    trials = folder / "localize" / "trials"
    truncate(trials / "t000" / "best" / "model.safetensors")  # the lost best checkpoint: t000 trains again
    truncate(trials / "t001" / "checkpoints" / "last" / "model" / "model.safetensors")  # finished: results stand
    with open(trials / "t001" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "val/mi')  # a torn last line
    (folder / "semantic" / "trials" / "t000" / "status.json").write_text("garbage{")
    masks = sorted(p for p in (folder / "localize" / "masks").rglob("*.png"))
    masks[len(masks) // 2].unlink()
    (folder / "semantic" / "done.json").unlink()  # stage two had not finished

    with caplog.at_level(logging.WARNING):
        assert main(["resume", str(folder)]) == 0
    said = caplog.text
    assert f"{trials / 't000' / 'best' / 'model.safetensors'}: " in said and "trains again" in said
    assert f"{trials / 't001' / 'checkpoints' / 'last' / 'model' / 'model.safetensors'}: " in said
    assert "its results stand" in said
    assert f"{trials / 't001' / 'metrics.jsonl'}: 1 torn line(s) dropped, 2 report(s) kept" in said
    assert f"{folder / 'semantic' / 'trials' / 't000' / 'status.json'}: unreadable" in said
    assert f"{masks[len(masks) // 2]}: missing; exporting the masks again" in said

    assert best_values(folder) == expected
    assert masks_problem(folder / "localize" / "masks") is None
    assert [json.loads(line)["epoch"] for line in (trials / "t001" / "metrics.jsonl").read_text().splitlines()] == [
        0,
        1,
    ]
    assert json.loads((folder / "semantic" / "trials" / "t000" / "status.json").read_text())["status"] == "done"
    assert list((trials / "t000").glob(".damaged-*/best/model.safetensors"))  # kept for a post-mortem
