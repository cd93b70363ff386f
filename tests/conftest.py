"""Shared fixtures: a small synthetic AVSBench and an isolated embedding cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


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
