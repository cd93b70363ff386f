"""Atomic writes: a failure leaves the old content and no temporary files; results get the usual modes."""

from __future__ import annotations

import os

import pytest

from aavs.datasets import atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "best.json"
    atomic.write_json(target, {"value": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "value": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]


def test_failed_folder_keeps_the_old_folder(tmp_path):
    folder = tmp_path / "masks"
    with atomic.atomic_dir(folder) as tmp:
        (tmp / "0.png").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(folder) as tmp:
            (tmp / "0.png").write_bytes(b"new")
            raise RuntimeError("killed mid-export")
    assert (folder / "0.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]
    with atomic.atomic_dir(folder) as tmp:  # a completed rewrite replaces the folder as a whole
        (tmp / "1.png").write_bytes(b"new")
    assert sorted(p.name for p in folder.iterdir()) == ["1.png"]


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        with atomic.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
