"""``aavs submit`` against a real Ray head started here, bound to 127.0.0.1, with token authentication.

The head is a ``ray start --head`` of its own: its own temporary directory and free ports (so it never
meets another Ray instance on this machine), stopped at the end by ending exactly the processes that
belong to that temporary directory (``ray stop`` would stop every Ray instance of the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec

from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment.submit import prepare_submission

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# The smallest experiment there is: one stage, one trial, one epoch of one video.
ONE_TRIAL = tiny_spec(name="submitted", stages={"localize": {"epochs": 1, "params": {"lr": 1.0e-3}}, "semantic": None})


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (all held open together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _head_processes(temp_dir: str) -> list[int]:
    """Processes of the Ray instance under ``temp_dir``: its path in their command line or working dir
    (the job's driver runs in the uploaded copy of the working directory, below ``temp_dir``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if temp_dir in cmdline or cwd == temp_dir or cwd.startswith(temp_dir + "/"):
            pids.append(int(entry.name))
    return pids


def stop_head(temp_dir: str) -> None:
    """End the Ray instance of ``temp_dir`` alone: SIGTERM, then SIGKILL what is left after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in _head_processes(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while _head_processes(temp_dir) and time.time() < deadline:
            time.sleep(0.2)
        if not _head_processes(temp_dir):
            return


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with the dashboard's job API and token auth; yields (address, token)."""
    temp_dir = tempfile.mkdtemp(prefix="aavs-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env, metrics = _free_ports(7)
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # The job's entrypoint `python` is the one of this virtual environment, where aavs' dependencies live.
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    start = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--include-dashboard",
        "true",
        "--temp-dir",
        temp_dir,
        "--num-cpus",
        "2",
        "--num-gpus",
        "0",
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent_http),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(runtime_env),
        "--metrics-export-port",
        str(metrics),
        "--object-store-memory",
        str(256 << 20),
        "--disable-usage-stats",
    ]
    try:
        proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield f"http://127.0.0.1:{dashboard}", token
    finally:
        stop_head(temp_dir)
        leftover = _head_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, f"processes of the test's Ray head still running: {leftover}"


def test_entrypoint_and_runtime_env(tmp_path, monkeypatch):
    """What would be sent, without a cluster: relative paths made absolute here, big folders excluded."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    job = prepare_submission(
        "experiments/avss.yaml", ["stages.localize.epochs=2"], results=f"file://{tmp_path}/shared results"
    )
    import shlex

    argv = shlex.split(job.entrypoint)
    assert argv[:5] == ["python", "-m", "aavs.orchestrator.cli", "run", "experiments/avss.yaml"]
    assert argv[argv.index("--results") + 1] == f"{tmp_path}/shared results"
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sets[0] == "stages.localize.epochs=2"
    assert f'data.root="{REPO}/data/avsbench"' in sets
    assert f'model.pretrained="{REPO}/weights/mask2former-swin-base-ade-semantic"' in sets
    assert job.results_dir == tmp_path / "shared results" / "avss-stepping-stones"
    assert job.runtime_env["working_dir"] == str(REPO)
    assert {"/.venv", "/results", "/data", "/weights", ".git"} <= set(job.runtime_env["excludes"])


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["experiments/demo.yaml", "--results", "s3://bucket/results"],
            "results storage 's3://bucket/results': s3:// URIs are not supported",
        ),
        (
            ["experiments/demo.yaml", "--set", "stages.localize.resources={node_a: 0}"],
            "stages.0.resources.node_a: expected a number > 0",
        ),
        (
            ["experiments/demo.yaml", "--address", "127.0.0.1:8265"],
            "--address 127.0.0.1:8265: expected the job API's URL",
        ),
        (
            ["experiments/demo.yaml", "--address", "http://127.0.0.1:9"],
            "--address http://127.0.0.1:9: no Ray job API answers there",
        ),
        (["experiments/nope.yaml"], "experiments/nope.yaml: no such experiment file"),
    ],
)
def test_bad_input_exits_2_naming_the_value(args, message, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["submit", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_experiment_outside_the_working_dir_and_token_file_inside_it_are_refused(tmp_path, monkeypatch, capsys):
    outside = tmp_path / "demo.yaml"
    shutil.copy(REPO / "experiments" / "demo.yaml", outside)
    monkeypatch.chdir(REPO)
    assert main(["submit", str(outside)]) == 2
    assert "outside the working directory" in capsys.readouterr().err
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(REPO / "token"))
    assert main(["submit", "experiments/demo.yaml"]) == 2
    assert "RAY_AUTH_TOKEN_PATH" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.subprocess
def test_wrong_token_is_refused(ray_head, monkeypatch, capsys):
    address, _ = ray_head
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    assert main(["submit", "experiments/demo.yaml", "--address", address]) == 2
    assert f"--address {address}: the cluster refused the token" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.subprocess
def test_submit_follow_runs_an_experiment_to_success(ray_head, tmp_path, monkeypatch, capsys):
    """The smallest experiment, submitted from a working directory of its own (only it is uploaded; the
    aavs code travels as the job's py_modules): the job runs it to success and writes its results where
    --results says. (Stages on several nodes sharing the results storage: test_cluster.py.)"""
    address, token = ray_head
    work = tmp_path / "work"
    work.mkdir()
    (work / "one.yaml").write_text(yaml.safe_dump(ONE_TRIAL, sort_keys=False))
    monkeypatch.chdir(work)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    results = tmp_path / "shared"
    code = main(["submit", "one.yaml", "--address", address, "--follow", "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out[-5000:]
    job_id = out.splitlines()[0]
    assert job_id.startswith("raysubmit_")

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    info = client.get_job_info(job_id)
    assert info.status.value == "SUCCEEDED" and info.metadata["aavs_experiment"] == "submitted"
    folder = results / "submitted"
    board = json.loads((folder / "leaderboard.json").read_text())
    assert [s["status"] for s in board["stages"]] == ["done"]
    best = json.loads((folder / "localize" / "best.json").read_text())
    assert best["trial_id"] == "t000" and Path(best["checkpoint"]).is_relative_to(folder)
    assert (Path(best["checkpoint"]) / "model.safetensors").is_file()
    assert "stage localize: best trial t000" in client.get_job_logs(job_id)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.subprocess
def test_the_job_imports_the_aavs_code_that_submitted_it(ray_head, monkeypatch):
    """Not the cluster's installed aavs (here: the editable install in the repository), but the copy
    that travelled with the job, in the job's own runtime resources."""
    from aavs.orchestrator.experiment import submit

    address, token = ray_head
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    client = submit.connect(address)
    job = prepare_submission("experiments/demo.yaml")
    job.entrypoint = "python -c 'import os, aavs.orchestrator as o; print(o.__file__, os.getcwd())'"
    job_id = submit.submit(client, job)
    status = submit.follow(client, job_id, lambda text: None, poll_s=0.2)
    assert status.value == "SUCCEEDED", client.get_job_logs(job_id)
    module, cwd = client.get_job_logs(job_id).split()[-2:]
    assert "runtime_resources" in module and module.endswith("/aavs/orchestrator/__init__.py")
    assert not module.startswith(str(REPO)) and (Path(cwd) / "experiments" / "demo.yaml").is_file()
    assert not (Path(cwd) / ".venv").exists() and not (Path(cwd) / ".git").exists()
