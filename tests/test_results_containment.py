"""What a reader of a results folder may open (aavs.orchestrator.results.containment): links inside the
folder are followed, a link out of it, a link loop and a FIFO are refused naming the entry, and a path
the folder recorded elsewhere is read from the folder's own copy. (Every reader on mutated real folders:
test_hostile_results.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aavs.datasets.errors import InputError
from aavs.orchestrator import results


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "results" / "exp"
    (root / "localize" / "trials" / "t000" / "best").mkdir(parents=True)
    (root / "localize" / "best.json").write_text("{}")
    (root / "localize" / "current").symlink_to("trials/t000/best")  # a link that stays inside
    return root


def test_links_inside_the_folder_are_followed(folder: Path) -> None:
    results.check_tree(folder)
    assert results.inside(folder, folder / "localize" / "current") == folder / "localize" / "current"


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../..", "../../../../../other"])
def test_a_link_out_of_the_folder_is_refused_naming_it(folder: Path, target: str) -> None:
    link = folder / "localize" / "trials" / "t000" / "best" / "model.safetensors"
    link.symlink_to(target)
    with pytest.raises(InputError, match=rf"^{link}: leads out of the results folder {folder}"):
        results.check_tree(folder)


def test_a_link_loop_and_a_fifo_are_refused(folder: Path) -> None:
    loop = folder / "localize" / "loop"
    loop.symlink_to("loop")
    with pytest.raises(InputError, match=rf"^{loop}: a symbolic link that cannot be followed"):
        results.check_tree(folder)
    loop.unlink()
    fifo = folder / "localize" / "status.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=rf"^{fifo}: not a file or folder"):
        results.check_tree(folder)


def test_a_recorded_path_is_read_from_the_folders_own_copy(folder: Path, tmp_path: Path) -> None:
    best = folder / "localize" / "best.json"
    elsewhere = "/home/colleague/results/exp/localize/trials/t000/best"  # the machine that wrote it
    assert results.own_copy(folder, elsewhere, results.CHECKPOINT_DEPTH, best) == folder / "localize/trials/t000/best"
    inside = str(folder / "localize" / "trials" / "t000" / "best")
    assert results.own_copy(folder, inside, results.CHECKPOINT_DEPTH, best) == Path(inside)
    assert results.own_copy(folder, "/x/localize/trials/t009/best", results.CHECKPOINT_DEPTH, best) is None
    assert results.own_copy(folder, "best", results.CHECKPOINT_DEPTH, best) is None  # too short to map
    with pytest.raises(InputError, match=rf"^{best}: '/x/\.\./\.\./\.\./\.\.' leads out of the results folder"):
        results.own_copy(folder, "/x/../../../..", results.CHECKPOINT_DEPTH, best)
