"""One driver per results folder: a second ``aavs run``/``resume`` is refused, naming the first.

The holder is a real process that takes the lock through the same API and sleeps; stale and foreign
locks are written by hand, as a killed driver or another host would have left them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aavs.datasets.errors import InputError
from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment import lock

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "experiments" / "demo.yaml"  # never trains here: every run below is refused
HOLD = """
import sys, time
from aavs.orchestrator.experiment.lock import held
with held(sys.argv[1], command="aavs run held-by-test"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """A process holding ``results/demo``'s lock until the test ends."""
    folder = tmp_path / "results" / "demo"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield folder, proc.pid
    finally:
        proc.kill()
        proc.wait()


def _write_lock(folder: Path, host: str, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / lock.LOCK_FILE).write_text(
        json.dumps({"host": host, "pid": pid, "started": "2026-01-01T00:00:00Z", "command": "aavs run elsewhere.yaml"})
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_run_is_refused_naming_the_running_one(holder, tmp_path: Path, capsys) -> None:
    folder, pid = holder
    assert main(["run", str(EXPERIMENT), "--local", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert f"pid {pid} on host {socket.gethostname()}" in err and "aavs run held-by-test" in err
    assert "Traceback" not in err
    assert not (folder / "spec.yaml").exists() and not (folder / "format.json").exists()  # nothing written


def test_resume_takes_the_same_lock(holder, capsys) -> None:
    folder, pid = holder
    (folder / "spec.yaml").write_text("name: demo\n")
    assert main(["resume", str(folder), "--local"]) == 2
    assert f"pid {pid}" in capsys.readouterr().err


def test_force_does_not_override_a_live_process_of_this_host(holder) -> None:
    folder, pid = holder
    with pytest.raises(InputError, match=f"pid {pid}"):
        lock.acquire(folder, force=True)


def test_lock_released_at_exit_also_on_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with lock.held(tmp_path, command="x"):
            assert lock.read_holder(tmp_path) is not None
            raise RuntimeError("boom")
    assert lock.read_holder(tmp_path) is None
    with lock.held(tmp_path, command="again") as mine:  # free again
        assert lock.read_holder(tmp_path) == mine


def test_stale_lock_of_this_host_is_taken_over(tmp_path: Path, caplog) -> None:
    dead = _dead_pid()
    _write_lock(tmp_path, socket.gethostname(), dead)
    with lock.held(tmp_path, command="new") as mine:
        assert lock.read_holder(tmp_path) == mine
    assert f"pid {dead}" in caplog.text and "no longer running" in caplog.text
    assert lock.read_holder(tmp_path) is None
    assert not list(tmp_path.glob(".lock.json*"))  # no temporary or set-aside files left


def test_foreign_host_refused_unless_forced(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "results" / "demo"
    _write_lock(folder, "other-node.example", 4242)
    argv = ["run", str(EXPERIMENT), "--local", "--results", str(tmp_path / "results")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pid 4242 on host other-node.example" in err and "--force" in err
    with lock.held(folder, force=True) as mine:
        assert lock.read_holder(folder) == mine


def test_garbage_lock_file_is_input_error(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "results" / "demo"
    folder.mkdir(parents=True)
    (folder / lock.LOCK_FILE).write_text("{not json")
    assert main(["run", str(EXPERIMENT), "--local", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "not an aavs lock file" in err and "Traceback" not in err


def test_release_leaves_a_lock_taken_over_by_another(tmp_path: Path) -> None:
    mine = lock.acquire(tmp_path, command="first")
    _write_lock(tmp_path, "other-node.example", 7)  # a --force run elsewhere took it
    lock.release(tmp_path, mine)
    assert lock.read_holder(tmp_path).host == "other-node.example"


def test_many_contenders_one_winner(tmp_path: Path) -> None:
    """Racing processes on a stale lock: exactly one holds the folder at a time."""
    _write_lock(tmp_path, socket.gethostname(), _dead_pid())
    script = (
        "import sys\nfrom aavs.orchestrator.experiment.lock import acquire\nfrom aavs.datasets.errors "
        "import InputError\ntry:\n    acquire(sys.argv[1]); print('won')\nexcept InputError:\n    print('lost')"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outcomes = [p.communicate(timeout=60)[0].strip() for p in procs]
    # A winner that has exited is dead, so a later contender may take over from it: at least one wins,
    # and the lock names one of the winners.
    assert "won" in outcomes
    assert lock.read_holder(tmp_path).pid in {p.pid for p, o in zip(procs, outcomes) if o == "won"}
