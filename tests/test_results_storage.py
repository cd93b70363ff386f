"""Results storage that takes no writes is refused before anything runs: a read-only mount, and a full
disk (no room at all, or less than aavs's margin), for ``aavs run``, ``aavs run --dry-run`` and ``aavs
resume``: exit status 2 and one line naming the results folder. The probe that finds out leaves
nothing behind (docs/reliability.md).

The mounts are real (tmpfs, remounted read-only: as root a chmod does not stop writes); where mounting
is not allowed those tests skip, and the same refusals are shown with the failing system calls
simulated (monkeypatched ``os.open``/``os.write`` of the probe)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment import preparation

SPEC: dict[str, Any] = {
    "name": "stored",
    "data": {"synthetic": {"videos_per_split": 1}},
    "model": {"preset": "tiny"},
    "compute": {"workers_per_trial": 1, "gpus_per_worker": 0, "cpus_per_worker": 1},
    "stages": [{"name": "a", "task": "avss-binary", "epochs": 1, "params": {"lr": 1e-3}}],
}


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "stored.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(size, read_only=False)``: a fresh tmpfs under tmp_path; skips where mounting is not allowed."""
    mounted: list[Path] = []

    def make(size: str, read_only: bool = False, fill: bool = False) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
        mounted.append(point)
        if fill:  # every block taken: the next write fails with ENOSPC
            with open(point / "filler", "wb") as f, pytest.raises(OSError, match="No space left"):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    yield make
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], check=False)


def run_both(spec_file: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """``aavs run --local`` with and without ``--dry-run``; both must refuse (exit status 2): their stderr."""
    args = ["run", str(spec_file), "--local", "--results", str(root)]
    assert main([*args, "--dry-run"]) == 2
    dry = capsys.readouterr().err
    assert main(args) == 2
    return dry, capsys.readouterr().err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("aavs: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_read_only_results_root_is_refused_by_run_and_dry_run(spec_file, mount, capsys):
    root = mount("1m", read_only=True)
    dry, run = run_both(spec_file, root, capsys)
    expected = f"aavs: error: results folder {root / 'stored'}: not writable ({root}: Read-only file system)"
    assert one_error(dry) == one_error(run) == expected
    assert list(root.iterdir()) == []  # nothing made, nothing left


def test_resume_on_read_only_storage_is_refused_before_taking_the_lock(mount, capsys):
    root = mount("1m")
    folder = root / "stored"
    folder.mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    assert main(["resume", str(folder)]) == 2
    assert one_error(capsys.readouterr().err) == (
        f"aavs: error: results folder {folder}: not writable ({folder}: Read-only file system)"
    )


def test_a_full_disk_is_refused_by_run_and_dry_run(spec_file, mount, capsys):
    full = mount("1m", fill=True)  # no block left: the probe's write fails
    dry, run = run_both(spec_file, full / "results", capsys)
    expected = (
        f"aavs: error: results folder {full / 'results' / 'stored'}: the disk is full ({full}: No space left on device)"
    )
    assert one_error(dry) == one_error(run) == expected
    assert sorted(p.name for p in full.iterdir()) == ["filler"]  # the probe removed


def test_less_room_than_the_margin_is_a_full_disk(spec_file, mount, capsys):
    small = mount("1m")  # writable, but below preparation.MIN_FREE_BYTES (16 MiB)
    dry, run = run_both(spec_file, small, capsys)
    assert one_error(dry) == one_error(run)
    assert one_error(run).startswith(f"aavs: error: results folder {small / 'stored'}: the disk is full ({small}: ")
    assert "MiB free, aavs needs at least 16 MiB" in one_error(run)
    assert list(small.iterdir()) == []


def test_the_probe_leaves_nothing_behind(spec_file, tmp_path, capsys):
    """A dry run on writable storage: valid, the results folder not made, no probe left in its parent;
    on an existing results folder, its files unchanged."""
    root = tmp_path / "results"
    root.mkdir()
    args = ["run", str(spec_file), "--local", "--results", str(root), "--dry-run"]
    assert main(args) == 0
    assert list(root.iterdir()) == []
    (root / "stored").mkdir()
    (root / "stored" / "kept.json").write_text("{}")
    assert main(args) == 0
    assert [p.name for p in (root / "stored").iterdir()] == ["kept.json"]
    assert "valid" in capsys.readouterr().out


def test_a_results_root_that_is_a_file_is_refused(spec_file, tmp_path, capsys):
    (tmp_path / "results").write_text("not a folder")
    assert main(["run", str(spec_file), "--local", "--results", str(tmp_path / "results"), "--dry-run"]) == 2
    assert one_error(capsys.readouterr().err) == (
        f"aavs: error: results folder {tmp_path / 'results' / 'stored'}: {tmp_path / 'results'} is not a folder"
    )


@pytest.mark.parametrize(
    "fails, code, said",
    [
        ("open", errno.EROFS, "not writable"),
        ("open", errno.EACCES, "not writable"),
        ("write", errno.ENOSPC, "the disk is full"),
        ("write", errno.EDQUOT, "the disk is full"),
        ("write", errno.EIO, "cannot be written"),
    ],
)
def test_the_probe_names_each_failure(fails, code, said, spec_file, tmp_path, monkeypatch, capsys):
    """The failures of the probe's system calls, simulated (where no tmpfs can be mounted, these are the
    only tests of the refusal): each is exit status 2 naming the folder, and no probe is left."""
    real = {"open": os.open, "write": os.write}

    def failing(*args: Any, **kwargs: Any) -> Any:
        if fails == "open" and preparation.PROBE.split("{")[0] not in str(args[0]):
            return real["open"](*args, **kwargs)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(preparation.os, fails, failing)
    root = tmp_path / "results"
    root.mkdir()
    assert main(["run", str(spec_file), "--local", "--results", str(root), "--dry-run"]) == 2
    monkeypatch.undo()
    line = one_error(capsys.readouterr().err)
    assert line == f"aavs: error: results folder {root / 'stored'}: {said} ({root}: {os.strerror(code)})"
    assert list(root.iterdir()) == []
