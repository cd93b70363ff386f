"""Shared fixtures: a small synthetic AVSBench, an isolated embedding cache, one intra-op thread, a
local Ray cluster (per module) and the session's one tiny two-stage run (test_leaderboard.py and
test_figures.py read it)."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Tests never touch ~/.cache: the VGGish embedding cache lives in a session temp folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AAVS_CACHE_DIR", str(tmp_path_factory.mktemp("aavs-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic AVSBench (2 videos per subset and split, seed 0), shared read-only by all tests."""
    from aavs.datasets.synth import write_synthetic_avsbench

    return write_synthetic_avsbench(tmp_path_factory.mktemp("synth") / "data", videos_per_split=2, seed=0)


@pytest.fixture
def synth_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic set that a test may break."""
    return Path(shutil.copytree(synth_root, tmp_path / "data"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a shared 2-core machine OpenMP threads that wait on each
    other made the model tests 3x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray (2 CPUs) for the tests of one module, with its dashboard (on 127.0.0.1, a free port),
    as a user's would have: Ray Train's placement-group cleaner asks the dashboard's state API whether a
    finished trial's controller is gone; without it a worker group's CPUs can stay reserved after the
    trial ends. Per module, not per session: test_cluster.py and test_submit.py start clusters of their
    own, and an idle Ray left running would take CPU from every test after it on a 2-core machine."""
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


# One `aavs run --local` (tiny preset, 2 videos per split; 3 stage-one trials, 2 stage-two trials, 2 epochs).
TINY_SPEC = {
    "name": "tiny",
    "data": {"synthetic": {"videos_per_split": 2, "seed": 0}},
    "model": {"preset": "tiny"},
    "compute": {
        "workers_per_trial": 1,
        "gpus_per_worker": 0,
        "cpus_per_worker": 1,
        "strategy": "plain",
        "mixed_precision": "no",
        "loader_workers": 0,
    },
    "stages": [
        {
            "name": "localize",
            "task": "avss-binary",
            "epochs": 2,
            "max_videos": 2,
            "params": {"lr": {"grid": [3.0e-4, 1.0e-3, 3.0e-3]}, "weight_decay": 0.05},
            "tune": {"metric": "val/miou", "mode": "max", "num_samples": 1},
        },
        {
            "name": "semantic",
            "task": "avss",
            "prior": "localize",
            "init_from": "localize",
            "epochs": 2,
            "max_videos": 2,
            "params": {"lr": {"grid": [1.0e-3, 3.0e-3]}},
            "tune": {"metric": "val/miou", "mode": "max", "num_samples": 1},
        },
    ],
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(results folder, stdout of `aavs run`) of the one tiny run of this session; read-only."""
    from aavs.orchestrator.cli import main

    folder = tmp_path_factory.mktemp("tiny-run")
    spec_file = folder / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_SPEC, sort_keys=False))
    out = io.StringIO()  # not a terminal: the live view writes plain lines
    with contextlib.redirect_stdout(out):
        assert main(["run", str(spec_file), "--local", "--results", str(folder / "results")]) == 0
    return folder / "results" / "tiny", out.getvalue()


@pytest.fixture
def tiny_results(tiny_run: tuple[Path, str]) -> Path:
    return tiny_run[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reads the tiny run is slow (the run takes about a minute on 2 cores, and a test that
    reports on it up to another): `make test-fast` skips them all, so never starts the run."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
