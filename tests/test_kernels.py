"""The kernel pins (aavs.orchestrator.recipe.kernels): with them, a forward and backward pass gives the same
bytes whichever code paths the environment offers the math libraries; lifted, the offered path moves
them; ``aavs`` sets them at its start and hands them to a joined cluster's workers.

A library reads its variable once, when it first computes, so each setting needs a process of its own:
the children run at once, each a small network of the kinds of operation the AAVS network runs (matrix
products: MKL; a 3x3 convolution and GELU: oneDNN; softmax attention and the norms: ATen's vectorised
kernels) on fixed inputs, and print a digest of the loss and every gradient. One tiny AAVS network's
pass shows the same (the kernels module's docstring), at three times the cost of each child here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aavs.orchestrator.cli import main
from aavs.orchestrator.ray_local import local_ray_kwargs
from aavs.orchestrator.recipe import kernels

STEP = """
from aavs.orchestrator.recipe.kernels import pin_kernels

pin_kernels()  # what `aavs` does at its start, before torch is imported
import hashlib
import torch

torch.manual_seed(0)
torch.set_num_threads(1)
conv, norm = torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.GroupNorm(4, 32)
qkv, out, head = torch.nn.Linear(32, 96), torch.nn.Linear(32, 32), torch.nn.LayerNorm(32)
x = torch.randn(2, 16, 24, 24)
y = torch.nn.functional.gelu(norm(conv(x)))  # [2, 32, 24, 24]
tokens = y.flatten(2).transpose(1, 2)  # [2, 576, 32]
q, k, v = qkv(tokens).chunk(3, dim=-1)
attended = torch.softmax(q @ k.transpose(1, 2) / 32**0.5, dim=-1) @ v
z = head(tokens + out(attended)).transpose(1, 2).reshape(2, 32, 24, 24)
loss = torch.nn.functional.interpolate(z, size=(37, 37), mode="bilinear").logsumexp(1).mean()
loss.backward()
digest = hashlib.sha256(loss.detach().numpy().tobytes())
for module in (conv, norm, qkv, out, head):
    for p in module.parameters():
        digest.update(p.grad.numpy().tobytes())
print(digest.hexdigest())
"""

# The paths a machine could choose where the pins did not: ATen's scalar kernels, MKL's own branch and
# thread count, oneDNN's SSE4.1 kernels. (Every pinned variable, so that monkeypatch restores each.)
OFFERED = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO", "MKL_DYNAMIC": "TRUE", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def _digests(environments: dict[str, dict[str, str]]) -> dict[str, str]:
    """Each environment's digest of STEP, its children run at once."""
    base = {k: v for k, v in os.environ.items() if k not in {*kernels.PINS, kernels.FAST_KERNELS}}
    children = {
        name: subprocess.Popen(
            [sys.executable, "-c", STEP],
            env={**base, "OMP_NUM_THREADS": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, env in environments.items()
    }
    digests = {}
    for name, child in children.items():
        stdout, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, f"{name}: {stderr[-2000:]}"
        digests[name] = stdout.strip()
    return digests


def test_pinned_step_gives_the_same_bytes_whatever_path_is_offered_and_lifted_pins_let_it_move() -> None:
    digests = _digests(
        {
            "pinned": {},  # the machine's own choice offered (AVX-512 here, AVX2 elsewhere)
            "pinned, other paths offered": OFFERED,
            "lifted, other paths offered": {**OFFERED, kernels.FAST_KERNELS: "1"},
        }
    )
    assert digests["pinned"] == digests["pinned, other paths offered"]
    # Not the same bytes with the pins lifted: the offered kernels compute the pass differently, so the
    # pins are what held it (ATen's scalar kernels differ from its AVX2 ones on every machine).
    assert digests["lifted, other paths offered"] != digests["pinned"]


def test_aavs_pins_its_environment_at_start_over_the_users_values(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for name, value in OFFERED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(kernels.FAST_KERNELS, raising=False)
    monkeypatch.setattr(sys, "argv", ["aavs", "schema"])  # argv from the command line: a program's start
    assert main() == 0
    assert {name: os.environ[name] for name in kernels.PINS} == kernels.PINS
    capsys.readouterr()

    for name, value in OFFERED.items():
        monkeypatch.setenv(name, value)
    assert main(["schema"]) == 0  # a caller's argv (a notebook, a test): its environment is its own
    assert {name: os.environ[name] for name in OFFERED} == OFFERED


def test_lifted_pins_leave_the_users_values() -> None:
    environ = {**OFFERED, kernels.FAST_KERNELS: "1"}
    assert kernels.pin_kernels(environ) == {}
    assert environ == {**OFFERED, kernels.FAST_KERNELS: "1"}
    assert kernels.worker_env(environ) == {kernels.FAST_KERNELS: "1"}


def test_a_bad_fast_kernels_value_is_an_input_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(kernels.FAST_KERNELS, "yes")
    monkeypatch.setattr(sys, "argv", ["aavs", "schema"])
    assert main() == 2
    err = capsys.readouterr().err
    assert "AAVS_FAST_KERNELS='yes'" in err and "expected 1" in err


def test_a_joined_clusters_workers_get_the_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.delenv(kernels.FAST_KERNELS, raising=False)  # the suite lifts them (conftest.py)
    for name, value in kernels.PINS.items():
        monkeypatch.setenv(name, value)
    assert local_ray_kwargs() == {"runtime_env": {"env_vars": kernels.PINS}}
    for name in kernels.PINS:  # a process that was not pinned (a library caller): nothing to hand on
        monkeypatch.delenv(name)
    assert local_ray_kwargs() == {}


@pytest.mark.skipif(kernels.pins_lifted(), reason="AAVS_FAST_KERNELS=1 lifts the pins for this session")
def test_the_tests_compute_pinned_in_process_as_aavs_children_do() -> None:
    """With ``AAVS_FAST_KERNELS=0``, conftest.py pins the session before torch loads: an in-process run
    computes as `aavs` does."""
    import torch

    assert {name: os.environ[name] for name in kernels.PINS} == kernels.PINS
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
