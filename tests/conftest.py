"""Shared fixtures: a small synthetic AVSBench, an isolated embedding cache, one intra-op thread, a
local Ray cluster (one per session, for the modules that run last), the tiny experiment every module
runs (``tiny_spec``) and the session's one tiny two-stage run (test_leaderboard.py and test_figures.py
read it)."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from aavs.orchestrator.recipe.kernels import FAST_KERNELS, pin_kernels

# The kernel pins `aavs` sets at its start (aavs.orchestrator.recipe.kernels) are lifted for the suite: its
# numbers are compared between runs of one session on one machine (in process and in `aavs` children, which
# inherit this environment, alike), and the pinned MKL branch makes the training tests about 20 % slower.
# tests/test_kernels.py checks the pins in children of its own. `AAVS_FAST_KERNELS=0 make test` runs the
# suite pinned; set here, before any test module imports torch.
os.environ.setdefault(FAST_KERNELS, "1")
pin_kernels()


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


def keep_ray_address_file() -> Callable[[], None]:
    """A function that puts back, as it is now, the address file a bare ``ray.init()`` on this machine
    reads: a test cluster (``ray.cluster_utils.Cluster``) writes its own there, and other Ray users on
    the machine must never join it. Ray exposes the file's path only through ``ray._common.utils``."""
    from ray._common.utils import get_ray_address_file

    address_file = Path(get_ray_address_file(None))
    before = address_file.read_text() if address_file.exists() else None

    def restore() -> None:
        if before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(before)

    return restore


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray (2 CPUs) with its dashboard (on 127.0.0.1, a free port), as a user's would have: Ray
    Train's placement-group cleaner asks the dashboard's state API whether a finished trial's controller
    is gone; without it a worker group's CPUs can stay reserved after the trial ends.

    One for the session (a start takes 5 to 12 s on 2 cores): the modules that use it kill trials and
    workers, never Ray itself. pytest_collection_modifyitems below runs those modules last, together,
    so that an idle Ray (measured: about 4 CPU-seconds a minute) never runs beside the other tests, and
    the clusters that test_cluster.py and test_node_loss.py start in this process never meet it."""
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


# ------------------------------------------------------------------------------ tiny experiments
# The smallest two-stage experiment (tiny preset, 2 videos per subset and split, one training video an
# epoch, the rest at their defaults): two stage-one trials, then one stage-two trial on the masks and
# weights of the better one, 2 epochs each. What a test needs beyond it, it says in tiny_spec's overrides.
TINY = {
    "name": "tiny",
    "data": {"synthetic": {"videos_per_split": 2, "seed": 0}},
    "model": {"preset": "tiny"},
    "compute": {"workers_per_trial": 1, "cpus_per_worker": 1, "loader_workers": 0},
    "stages": [
        {
            "name": "localize",
            "task": "avss-binary",
            "epochs": 2,
            "max_videos": 1,
            "params": {"lr": {"grid": [1.0e-3, 3.0e-3]}},
        },
        {
            "name": "semantic",
            "task": "avss",
            "prior": "localize",
            "init_from": "localize",
            "epochs": 2,
            "max_videos": 1,
            "params": {"lr": 1.0e-3},
        },
    ],
}


def _merged(base: dict, override: dict, whole_values: bool = False) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and not whole_values:
            out[key] = _merged(out[key], value, whole_values=key == "params")
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_spec(**overrides: Any) -> dict:
    """The contents of a tiny experiment file: TINY with ``overrides`` merged in (a new dict each call).

    A dict merges into the dict it overrides, key by key; anything else replaces; None removes the key.
    ``stages`` takes a dict by stage name (that stage's overrides; None drops the stage; a new name adds
    a stage at the end) or a list (the stages, whole). A parameter under a stage's ``params`` is replaced
    whole (``{"lr": 1e-3}`` over ``{"lr": {"grid": [...]}}``): a search space is one value. E.g. one
    stage-one trial of one epoch::

        tiny_spec(name="one", stages={"localize": {"epochs": 1, "params": {"lr": 1e-3}}, "semantic": None})
    """
    stages = overrides.pop("stages", None)
    spec = _merged(TINY, overrides)
    if isinstance(stages, dict):
        by_name = {stage["name"]: stage for stage in spec["stages"]}
        for name, change in stages.items():
            if change is None:
                del by_name[name]
            else:
                by_name[name] = _merged(by_name.get(name, {"name": name}), change)
        spec["stages"] = list(by_name.values())
    elif stages is not None:
        spec["stages"] = copy.deepcopy(stages)
    return spec


# The session's tiny run (tiny_run): three stage-one and two stage-two trials of two training videos, as
# test_leaderboard.py shows the top one of three, and copies with a failed, a stopped and a running trial.
TINY_SPEC = tiny_spec(
    stages={
        "localize": {"max_videos": 2, "params": {"lr": {"grid": [3.0e-4, 1.0e-3, 3.0e-3]}}},
        "semantic": {"max_videos": 2, "params": {"lr": {"grid": [1.0e-3, 3.0e-3]}}},
    }
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(results folder, stdout of `aavs run`) of the one tiny run of this session (TINY_SPEC); read-only."""
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


# The modules that start Ray. Under pytest-xdist (`make test`: two processes) they all run in one of
# them, in their order (one Ray at a time, the session's ray_cluster started once); the other process
# takes the remaining tests as they come. Every run checks that the list is complete.
SERIAL_MODULES = frozenset(
    {
        *("test_cluster.py", "test_experiment.py", "test_faults.py", "test_gpu_cluster.py", "test_head_loss.py"),
        *("test_node_check.py", "test_node_loss.py", "test_predict_ray.py", "test_rank_loss.py"),
        *("test_search_ray.py", "test_security.py", "test_submit.py"),
    }
)


@pytest.hookimpl(tryfirst=True)  # before -m and -k deselect: the check below sees every test
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reads the tiny run is slow (the run takes about a minute on 2 cores, and a test that
    reports on it up to another): `make test-fast` skips them all, so never starts the run.

    The modules with a test that uses the session's ray_cluster run last, whole and in their order:
    the cluster starts at the first such test and stops when the session ends, right after them.
    A module with a test that starts Ray must be in :data:`SERIAL_MODULES`."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    shared_ray = {item.path for item in items if "ray_cluster" in getattr(item, "fixturenames", ())}
    items.sort(key=lambda item: item.path in shared_ray)  # stable: each group keeps its order
    serial = {
        item.path.name
        for item in items
        if item.get_closest_marker("ray") or "ray_cluster" in getattr(item, "fixturenames", ())
    }
    if serial - SERIAL_MODULES:
        raise pytest.UsageError(f"tests/conftest.py: add {sorted(serial - SERIAL_MODULES)} to SERIAL_MODULES")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scope scheduling with one scope for all of :data:`SERIAL_MODULES` and one per test
    elsewhere: the serial modules go to one process, in collection order, the rest are shared out."""
    from xdist.scheduler import LoadScopeScheduling

    class SerialModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return "serial" if module in SERIAL_MODULES else nodeid

    return SerialModulesTogether(config, log)


def kill_a_rank_once_reported(trial: Path, killed: list[int]) -> None:
    """SIGKILL the last live Ray Train worker once the trial's first epoch is reported; its pid into
    ``killed``."""
    from ray.util.state import list_actors

    deadline = time.time() + 600
    while time.time() < deadline and not (trial / "metrics.jsonl").is_file():
        time.sleep(0.05)
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    os.kill(workers[-1].pid, signal.SIGKILL)
    killed.append(workers[-1].pid)
