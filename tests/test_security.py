"""Security checks as tests: where Ray listens, who may submit, names that stay in the results folder,
and files from outside that never run code when read.

Starting Ray is slow, so the Ray that ``aavs run`` starts is checked through the arguments it passes to
``ray.init`` (``runners.ray.ray_init_kwargs``); one slow test starts it and measures where it listens.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aavs.datasets.errors import InputError
from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment import submit
from aavs.orchestrator.experiment.runners.ray import ray_init_kwargs
from aavs.orchestrator.experiment.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "aavs-test-token-5f0c1e8b9d2a4c6e"


# ----------------------------------------------------------------------------------------- Ray
def test_the_ray_aavs_run_starts_listens_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    kwargs = ray_init_kwargs(quiet=True)
    assert kwargs["address"] == "local"  # a fresh instance, never one found running on the machine
    assert kwargs["_node_ip_address"] == "127.0.0.1" and kwargs["dashboard_host"] == "127.0.0.1"


def test_a_named_cluster_is_joined_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    kwargs = ray_init_kwargs(quiet=False)
    assert not {"address", "_node_ip_address", "dashboard_host"} & set(kwargs) and kwargs["log_to_driver"]


def test_disabled_ray_auth_is_called_out(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_init_kwargs(quiet=True)
    assert "RAY_AUTH_MODE=disabled" in caplog.text


# Started in a child process: this one's Ray (if a test started one) stays as it is.
LISTENING = """
import json, os, psutil, ray
from aavs.orchestrator.experiment.runners.ray import ray_init_kwargs
context = ray.init(**ray_init_kwargs(quiet=True), num_cpus=1)
session = os.path.basename(ray._private.worker._global_node.get_session_dir_path())
ours = {os.getpid()}
for p in psutil.process_iter():
    try:
        if session in " ".join(p.cmdline()):
            ours |= {p.pid} | {c.pid for c in p.children(recursive=True)}
    except psutil.Error:
        pass
sockets = [[c.laddr.ip, c.laddr.port] for c in psutil.net_connections(kind="inet")
           if c.status == psutil.CONN_LISTEN and c.pid in ours]
auth = ray._private.authentication.authentication_token_setup.AuthenticationTokenLoader.instance().has_token()
print(json.dumps({"dashboard": context.dashboard_url, "sockets": sockets, "token": auth}))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.ray
def test_a_started_ray_serves_its_job_api_on_loopback_and_requires_a_token(tmp_path: Path) -> None:
    """Measured, not just the arguments: the dashboard and job API (how work is submitted from outside)
    listen on 127.0.0.1 only, and the gRPC ports Ray cannot bind to one address need Ray's token."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    out = subprocess.run(
        [sys.executable, "-c", LISTENING], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    host, port = found["dashboard"].rsplit(":", 1)
    assert host == "127.0.0.1"
    assert {ip for ip, p in found["sockets"] if p == int(port)} == {"127.0.0.1"}
    assert found["token"]


def test_every_ray_init_in_aavs_uses_the_loopback_arguments() -> None:
    calls = [(path, node) for path, node in _calls(REPO, "init") if _attribute_of(node, "ray")]
    assert calls
    for path, node in calls:
        assert node.keywords and node.keywords[0].arg is None, f"{path}:{node.lineno}: ray.init without **kwargs"
        assert ast.unparse(node.keywords[0].value) in ("ray_init_kwargs(quiet)", "local_ray_kwargs()"), (
            f"{path}:{node.lineno}"
        )


# ---------------------------------------------------------------------------------------- submit
@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("address", ["http://10.1.2.3:8265", "http://head.example:8265", "https://[2001:db8::1]:8265"])
def test_submit_refuses_a_remote_job_api_without_a_token(no_token, address: str, capsys) -> None:
    assert (
        main(["submit", str(REPO / "experiments" / "demo.yaml"), "--address", address, "--working-dir", str(REPO)]) == 2
    )
    err = capsys.readouterr().err
    assert f"--address {address}: not this machine, and no token is set" in err and "--insecure" in err


@pytest.mark.parametrize(
    "address", ["http://127.0.0.1:8265", "http://localhost:8265", "http://[::1]:8265", "http://127.8.9.10:1"]
)
def test_loopback_needs_no_token(no_token, address: str) -> None:
    submit.check_authenticated(address, insecure=False)


def test_insecure_or_a_token_lets_a_remote_address_through(no_token, monkeypatch: pytest.MonkeyPatch) -> None:
    submit.check_authenticated("http://10.1.2.3:8265", insecure=True)
    monkeypatch.setenv("RAY_AUTH_TOKEN", FAKE_TOKEN)
    submit.check_authenticated("http://10.1.2.3:8265", insecure=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    submit.check_authenticated("http://10.1.2.3:8265", insecure=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_token_never_shows(no_token, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    """A fake token, a loopback address where no job API runs: a clear error, and the token nowhere in
    the output, the job that would be sent, or the results folder."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", FAKE_TOKEN)
    address = f"http://127.0.0.1:{_closed_port()}"
    code = main(
        [
            "-v",
            "submit",
            str(REPO / "experiments" / "demo.yaml"),
            "--address",
            address,
            "--working-dir",
            str(REPO),
            "--results",
            str(tmp_path / "results"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2 and f"--address {address}: no Ray job API answers there" in err
    assert FAKE_TOKEN not in out + err and "Traceback" not in err
    job = submit.prepare_submission(
        REPO / "experiments" / "demo.yaml", working_dir=REPO, results=str(tmp_path / "results")
    )
    assert FAKE_TOKEN not in repr(job)
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or FAKE_TOKEN.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------- results folder
BASE = {"name": "x", "data": {"synthetic": {}}, "model": {"preset": "tiny"}, "stages": [{"name": "a", "task": "s4"}]}


@pytest.mark.parametrize("name", ["../x", "a/b", "/tmp/x", "..", ".hidden", "a\\b", "x" * 101, "名前", ""])
def test_names_cannot_escape_the_results_folder(name: str) -> None:
    with pytest.raises(InputError, match=r"x\.yaml: name: expected a plain name"):
        parse_spec({**BASE, "name": name}, "x.yaml")
    with pytest.raises(InputError, match=r"x\.yaml: stages\.0\.name: expected a plain name"):
        parse_spec({**BASE, "stages": [{"name": name, "task": "s4"}]}, "x.yaml")


# ------------------------------------------------------------------------------------- pickles
class _RunsCode:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil_pth(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    torch.load(path, weights_only=False)  # the payload works: a full unpickler runs it
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_import_checkpoint_refuses_a_pickle_with_code(evil_pth, tmp_path: Path, capsys) -> None:
    path, marker = evil_pth
    code = main(["import-checkpoint", str(path), "--base", "tiny", "--task", "s4", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: not a loadable PyTorch state dict" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_load_model_refuses_a_pickle_with_code(evil_pth) -> None:
    from aavs.models import registry

    path, marker = evil_pth
    with pytest.raises(InputError, match="not a loadable PyTorch state dict"):
        registry.load(path, base="tiny", task="s4")
    assert not marker.exists()


def test_a_pickle_named_safetensors_is_not_unpickled(evil_pth, tmp_path: Path) -> None:
    from aavs.models.checkpoint import read_weights

    path, marker = evil_pth
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(InputError, match="not a readable safetensors file"):
        read_weights(folder)
    assert not marker.exists()


def test_vggish_weights_refuse_a_pickle_with_code(evil_pth, synth_root: Path, tmp_path: Path, capsys) -> None:
    path, marker = evil_pth
    code = main(["features", str(synth_root), "--vggish", str(path), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: not a loadable torch file" in err and "Traceback" not in err
    assert not marker.exists()


def test_every_torch_load_is_weights_only() -> None:
    """Anything aavs reads with torch.load may come from outside: it never unpickles code."""
    calls = [(path, node) for path, node in _calls(REPO, "load") if _attribute_of(node, "torch")]
    assert calls
    for path, node in calls:
        weights_only = [k for k in node.keywords if k.arg == "weights_only"]
        assert weights_only and ast.literal_eval(weights_only[0].value) is True, f"{path}:{node.lineno}"


def _calls(repo: Path, attribute: str):
    """Every call ``x.<attribute>(...)`` in the package's source (models/, datasets/, orchestrator/)."""
    for folder in ("models", "datasets", "orchestrator"):
        for path in sorted((repo / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
                    yield path, node


def _attribute_of(node: ast.Call, module: str) -> bool:
    return (
        isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) and node.func.value.id == module
    )
