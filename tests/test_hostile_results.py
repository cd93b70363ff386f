"""Results folders from someone else: the readers on a finished results folder whose files were mutated.

A colleague's folder may hold hand-edited JSON, a symbolic link out of it, a checkpoint of another task
or architecture, or a ``format.json`` of a newer aavs. Hypothesis mutates copies of the session's tiny
two-stage run (conftest.py's ``tiny_run``: truncated files, garbage bytes, JSON with wrong types and
missing or extra keys, two files swapped, a file or folder replaced by a link to /etc/passwd or to a copy
outside the folder, a file deleted, a pickle that would run code, a future format version) and runs each
reader through ``aavs.orchestrator.cli.main`` in this process: ``aavs check-results`` (the validator),
``aavs leaderboard``, ``aavs report``, ``aavs evaluate`` and ``aavs predict --experiment``. Each case
ends with exit status 0, or 2 and one ``aavs: error:`` line naming a path of the folder; never with a
traceback (an internal error, exit status 1). A link out of the folder is always refused, nothing is
ever unpickled, and the original folder is never changed.

Copies are cheap: every file is a hard link to the original, and a mutation replaces a file (a new
inode), never writes into one; the readers write only by renaming new files into place.

Cases (derandomized: the same on every run): 200 of the validator, 70 of the leaderboard, 30 of the report,
25 each of `evaluate` and `predict`, and named cases of each reader (a link out, a newer format, another
task or architecture, a pickle). About 35 s on 2 cores, besides the tiny run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aavs.orchestrator import results
from aavs.orchestrator.cli import main

pytestmark = [pytest.mark.slow]  # (conftest.py marks every reader of tiny_run slow anyway)

SETTINGS = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
MARKER = "hostile-pickle-ran"  # the file a pickle in the folder would create if anything unpickled it


# ------------------------------------------------------------------------------- the mutations
class Pickled:
    """An object whose unpickling creates MARKER in the current folder: proof that something unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, ...]]:
        return (os.mkdir, (self.marker,))


@dataclass(frozen=True)
class Mutation:
    kind: str  # truncate, garbage, json, delete, swap, link-passwd, link-outside, pickle, future
    target: str  # a path relative to the results folder
    other: str = ""  # swap: the second file
    fraction: float = 0.5  # truncate: the part kept
    data: bytes = b""  # garbage
    edit: tuple[str, int, Any] = ("", 0, None)  # json: (op, which node, value)


# Stands for an integer of 5001 digits in the JSON written (past Python's int parsing limit, which
# raises ValueError, not JSONDecodeError); such an int cannot be held by Hypothesis, nor json.dumps'd.
HUGE = "\0huge-int\0"


def dumps(value: Any) -> str:
    return json.dumps(value).replace(json.dumps(HUGE), "1" * 5001)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, -1, 1, 10**9, 2**63]),
    st.just(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../../..", "/etc/passwd", "/", "t000", "localize", "avss", "grid", "max", "done"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=5,
)
JSON_EDITS = st.tuples(st.sampled_from(["set", "delete", "extra"]), st.integers(0, 10**6), VALUES)


def files_of(folder: Path, under: str = "") -> list[str]:
    """The files (and links) under ``folder/under``, relative to ``folder``, sorted; mask PNGs and the
    synthetic data and cache left out (no reader of the results reads them)."""
    root = folder / under if under else folder
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if relative.split("/")[0] in ("data", "cache") or path.suffix == ".png" and "/masks/" in f"/{relative}":
            continue
        if path.is_file():
            found.append(relative)
    return found


def folders_of(folder: Path, under: str = "") -> list[str]:
    root = folder / under if under else folder
    skip = ("data", "cache")
    return sorted(
        p.relative_to(folder).as_posix()
        for p in root.rglob("*")
        if p.is_dir() and p.relative_to(folder).parts[0] not in skip and "masks" not in p.relative_to(folder).parts[1:]
    )


@st.composite
def mutations(
    draw: st.DrawFn, files: list[str], folders: list[str], others: list[str] | None = None, max_size: int = 3
) -> list[Mutation]:
    """One to ``max_size`` mutations of the listed files and folders (a swap's second file: one of
    ``others``, default ``files``)."""
    out = []
    for _ in range(draw(st.integers(1, max_size))):
        kind = draw(
            st.sampled_from(
                ["truncate", "garbage", "json", "json", "json", "delete", "swap", "link-passwd", "link-outside"]
                + ["pickle", "future"]
            )
        )
        records = [f for f in files if f.endswith((".json", ".jsonl")) and "/checkpoints/" not in f]
        if kind == "link-outside" and folders and draw(st.booleans()):
            target = draw(st.sampled_from(folders))
        elif kind == "future":
            target = results.FORMAT_FILE
        elif kind == "json" or draw(st.booleans()):  # the records the readers read, more often
            target = draw(st.sampled_from(records or files))
        else:
            target = draw(st.sampled_from(files))
        out.append(
            Mutation(
                kind=kind,
                target=target,
                other=draw(st.sampled_from(others or files)),
                fraction=draw(st.floats(0, 1)),
                data=draw(st.binary(max_size=64)),
                edit=draw(JSON_EDITS),
            )
        )
    return out


def replace(path: Path, data: bytes) -> None:
    """New content under ``path`` as a new file: the original, hard-linked, keeps its own."""
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)


def nodes(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The key path of every node of a JSON document, the document itself first."""
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found += nodes(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += nodes(item, (*at, i))
    return found


def edit_json(document: Any, pick: int, op: str, new: Any) -> Any:
    """``document`` with one node (the ``pick``-th, modulo their number, each equally likely) set to
    ``new``, deleted, or (a dict) given an extra key."""
    at = nodes(document)[pick % len(nodes(document))]
    if not at:
        if op == "extra" and isinstance(document, dict):
            return {**document, "unexpected-key": new}
        return new
    parent = document
    for key in at[:-1]:
        parent = parent[key]
    last = at[-1]
    if op == "set" or (op == "extra" and not isinstance(parent[last], dict)):
        parent[last] = new
    elif op == "extra":
        parent[last]["unexpected-key"] = new
    elif isinstance(parent, dict):
        del parent[last]
    else:
        parent.pop(last)
    return document


def apply(folder: Path, outside: Path, m: Mutation) -> None:
    """Apply ``m`` to the results folder ``folder``; ``outside`` is a folder beside it for link targets."""
    path = folder / m.target
    if not (path.exists() or path.is_symlink()) and m.kind not in ("future",):
        return  # an earlier mutation removed it
    if m.kind == "truncate" and path.is_file():
        replace(path, path.read_bytes()[: int(path.stat().st_size * m.fraction)])
    elif m.kind == "garbage" and path.is_file():
        replace(path, m.data)
    elif m.kind == "json" and path.is_file():
        op, pick, new = m.edit
        text = path.read_bytes().decode("utf-8", "replace")
        if path.suffix == ".jsonl":
            lines = text.splitlines() or ["{}"]
            i = pick % len(lines)
            lines[i] = dumps(edit_json(_loads(lines[i]), pick // len(lines), op, new))
            replace(path, ("\n".join(lines) + "\n").encode())
        else:
            replace(path, dumps(edit_json(_loads(text), pick, op, new)).encode())
    elif m.kind == "delete":
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    elif m.kind == "swap" and path.is_file() and (folder / m.other).is_file() and m.other != m.target:
        a, b = path.read_bytes(), (folder / m.other).read_bytes()
        replace(path, b)
        replace(folder / m.other, a)
    elif m.kind == "link-passwd":
        _remove(path)
        path.symlink_to("/etc/passwd")
    elif m.kind == "link-outside":
        copy = outside / m.target.replace("/", "_")
        if path.is_dir() and not path.is_symlink():
            shutil.copytree(path, copy, symlinks=True, copy_function=os.link, dirs_exist_ok=True)
        elif not copy.exists():
            shutil.copyfile(path, copy)
        _remove(path)
        path.symlink_to(copy)
    elif m.kind == "pickle" and path.is_file():
        replace(path, pickle.dumps(Pickled(MARKER)))
    elif m.kind == "future":
        replace(folder / results.FORMAT_FILE, json.dumps({"format_version": results.FORMAT_VERSION + 1}).encode())


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# ---------------------------------------------------------------------------------- the readers
class Workspace:
    """Fresh hard-linked copies of a finished results folder, one per case, under ``tmp``; without the
    top folders ``leave_out`` and the masks' PNG files (no reader of the results opens them), a case
    costs a few hundredths of a second."""

    def __init__(self, source: Path, tmp: Path, leave_out: tuple[str, ...] = ("data", "cache")) -> None:
        self.source, self.tmp, self.n, self.leave_out = source, tmp, count(), leave_out

    def _ignore(self, folder: str, names: list[str]) -> set[str]:
        if Path(folder) == self.source:
            return set(names) & set(self.leave_out)
        if Path(folder).name == results.MASKS_DIR:
            return {n for n in names if n != results.MASKS_SUCCESS_FILE}
        return set()

    @contextlib.contextmanager
    def copy(self, changes: list[Mutation]) -> Iterator[tuple[Path, Path]]:
        """(the mutated copy, a scratch folder beside it); both removed afterwards."""
        case = self.tmp / f"case{next(self.n)}"
        folder, outside = case / "results" / self.source.name, case / "outside"
        shutil.copytree(self.source, folder, symlinks=True, copy_function=os.link, ignore=self._ignore)
        outside.mkdir()
        for m in changes:
            apply(folder, outside, m)
        try:
            yield folder, outside
        finally:
            shutil.rmtree(case)


OUTCOMES: Counter[tuple[str, int]] = Counter()  # (command, exit status): what the cases came to


def run(args: list[str], cwd: Path) -> tuple[int, str]:
    """``aavs ARGS`` in this process, from ``cwd`` (where an unpickled MARKER would appear): (exit
    status, stderr). An exception escaping main() fails the test with its traceback."""
    err, out = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(args)
    finally:
        os.chdir(here)
    assert not (cwd / MARKER).exists(), f"something unpickled a file of the folder: aavs {' '.join(args)}"
    OUTCOMES[args[0], code] += 1
    return code, err.getvalue()


def links_out(folder: Path, under: Path | None = None) -> list[Path]:
    """The links under ``under`` (default: the whole folder) that resolve outside ``folder``."""
    root = folder.resolve()
    return [
        p
        for p in (under or folder).rglob("*")
        if p.is_symlink() and root not in p.resolve().parents and p.resolve() != root
    ]


def check_outcome(code: int, err: str, folder: Path, changes: list[Mutation], must_refuse: bool) -> None:
    """Exit 0, or 2 with one error line naming a path of the folder; 2 whenever ``must_refuse``."""
    assert code in (0, 2), f"exit status {code} for {changes}:\n{err[-3000:]}"
    errors = [line for line in err.splitlines() if line.startswith("aavs: error:")]
    if code == 2:
        assert len(errors) == 1, f"{changes}: expected one error line, got:\n{err[-3000:]}"
        assert str(folder) in errors[0], f"{changes}: the error names no path of {folder}: {errors[0]}"
    if must_refuse:
        assert code == 2, f"{changes}: not refused:\n{err[-3000:]}"


@pytest.fixture(scope="module")
def source(tiny_run: tuple[Path, str]) -> Iterator[Path]:
    """The finished run (read-only), and afterwards the check that no case changed it."""
    folder = tiny_run[0]
    before = _fingerprint(folder)
    yield folder
    assert _fingerprint(folder) == before, "a case changed the original results folder"


def _fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def newer_format(folder: Path) -> bool:
    """Whether ``format.json`` holds a version newer than this aavs's (an integer, as aavs writes it)."""
    try:
        version = json.loads((folder / results.FORMAT_FILE).read_text()).get("format_version")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(version, int) and not isinstance(version, bool) and version > results.FORMAT_VERSION


@pytest.fixture(scope="module")
def targets(source: Path) -> tuple[list[str], list[str]]:
    """What the validator, the leaderboard and the report are given to mutate: every file and folder."""
    return files_of(source), folders_of(source)


def reader_case(source: Path, tmp: Path, changes: list[Mutation], command: str) -> None:
    """``aavs COMMAND FOLDER`` on a mutated copy: refused when a link leads out or the format is newer."""
    with Workspace(source, tmp).copy(changes) as (folder, _):
        must = bool(links_out(folder)) or newer_format(folder)
        code, err = run([command, str(folder)], folder.parent)
        check_outcome(code, err, folder, changes, must)


# ----------------------------------------------------------------- the validator, leaderboard, report
@settings(SETTINGS, max_examples=200)
@given(data=st.data())
def test_the_validator_on_mutated_folders(source: Path, targets, tmp_path: Path, data: st.DataObject) -> None:
    reader_case(source, tmp_path, data.draw(mutations(*targets)), "check-results")


@settings(SETTINGS, max_examples=70)
@given(data=st.data())
def test_the_leaderboard_on_mutated_folders(source: Path, targets, tmp_path: Path, data: st.DataObject) -> None:
    reader_case(source, tmp_path, data.draw(mutations(*targets)), "leaderboard")


@settings(SETTINGS, max_examples=30)
@given(data=st.data())
def test_the_report_on_mutated_folders(source: Path, targets, tmp_path: Path, data: st.DataObject) -> None:
    reader_case(source, tmp_path, data.draw(mutations(*targets)), "report")


# ------------------------------------------------------------------------------ evaluate, predict
@pytest.fixture(scope="module")
def networks(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What evaluate and predict cases share: a two-second clip, an embedding cache outside the copies
    (the clip's embedding computed once), the best checkpoints and the files to mutate: spec.json,
    format.json, the best.json files and every checkpoint's files (a swap puts one trial's or stage's
    file in another's place: another task, another architecture)."""
    from aavs.datasets.video import write_video

    scratch = tmp_path_factory.mktemp("networks")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(2)]
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.int16)
    write_video(scratch / "clip.mkv", frames, 1, codec="ffv1", pix_fmt="bgr0", audio=(tone, 16000))
    checkpoints = [f for f in files_of(source) if "/best/" in f]
    files = [results.SPEC_FILE, results.FORMAT_FILE, *(f for f in files_of(source) if f.endswith("/best.json"))]
    best = {
        stage: results.read_best(source / stage).checkpoint.split(f"{source}/", 1)[1]
        for stage in ("localize", "semantic")
    }
    return {
        "clip": scratch / "clip.mkv",
        "cache": scratch / "cache",
        "data": source / results.DATA_DIR,
        "best": best,
        "files": files + checkpoints,
        "folders": [f for f in folders_of(source) if f.endswith("/best")],
        "checkpoints": checkpoints,
        "evaluated": [f for f in checkpoints if f.startswith(f"{best['localize']}/")],
    }


def evaluate_case(source: Path, networks: dict[str, Any], tmp: Path, changes: list[Mutation]) -> None:
    """``aavs evaluate`` of the mutated copy's stage-one best checkpoint (its task given)."""
    with Workspace(source, tmp, leave_out=("data", "cache")).copy(changes) as (folder, _):
        checkpoint = folder / networks["best"]["localize"]
        args = ["evaluate", str(checkpoint), "--data", str(networks["data"]), "--task", "avss-binary"]
        must = checkpoint.is_dir() and bool(links_out(checkpoint.resolve()))
        code, err = run([*args, "--split", "test", "--json"], folder.parent)
        check_outcome(code, err, folder, changes, must)


def predict_case(source: Path, networks: dict[str, Any], tmp: Path, changes: list[Mutation]) -> None:
    """``aavs predict --experiment`` on the mutated copy: stage one's best feeding stage two's."""
    with Workspace(source, tmp, leave_out=("data", "cache")).copy(changes) as (folder, scratch):
        must = bool(links_out(folder)) or newer_format(folder)
        args = ["predict", str(networks["clip"]), "--out", str(scratch / "out"), "--experiment", str(folder)]
        code, err = run([*args, "--cache", str(networks["cache"]), "--json"], folder.parent)
        check_outcome(code, err, folder, changes, must)


@settings(SETTINGS, max_examples=25)
@given(data=st.data())
def test_evaluate_on_mutated_checkpoints(source: Path, networks, tmp_path: Path, data: st.DataObject) -> None:
    changes = data.draw(mutations(networks["evaluated"], [networks["best"]["localize"]], networks["checkpoints"]))
    evaluate_case(source, networks, tmp_path, changes)


@settings(SETTINGS, max_examples=25)
@given(data=st.data())
def test_predict_on_mutated_folders(source: Path, networks, tmp_path: Path, data: st.DataObject) -> None:
    predict_case(source, networks, tmp_path, data.draw(mutations(networks["files"], networks["folders"])))


# ------------------------------------------------------------------------- named cases, every reader
EVERY_READER = ("check-results", "leaderboard", "report", "predict")


def reader_args(command: str, folder: Path, networks: dict[str, Any], scratch: Path) -> list[str]:
    if command == "predict":
        return ["predict", str(networks["clip"]), "--out", str(scratch / "out"), "--experiment", str(folder)]
    return [command, str(folder)]


@pytest.mark.parametrize(
    "change, named",
    [
        (Mutation("link-passwd", "localize/best.json"), "localize/best.json: leads out of the results folder"),
        (Mutation("link-outside", "semantic/trials/t001/best"), "semantic/trials/t001/best: leads out of the results"),
        (Mutation("link-outside", "localize"), "localize: leads out of the results folder"),
        (Mutation("future", results.FORMAT_FILE), f"results format version {results.FORMAT_VERSION + 1} is newer"),
    ],
    ids=["link-to-passwd", "checkpoint-linked-outside", "stage-linked-outside", "future-format"],
)
def test_every_reader_refuses_a_link_out_and_a_newer_format(
    change: Mutation, named: str, source: Path, networks, tmp_path: Path
) -> None:
    with Workspace(source, tmp_path).copy([change]) as (folder, scratch):
        for command in EVERY_READER:
            code, err = run(reader_args(command, folder, networks, scratch), folder.parent)
            check_outcome(code, err, folder, [change], must_refuse=True)
            assert named in err, (command, err)
        assert not (scratch / "out").exists()


def _edit_hidden_dim(folder: Path) -> None:
    """aavs.json of stage one's best checkpoint describing a wider network than its weights."""
    meta_file = folder / "localize/trials/t001/best/aavs.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["mask2former"]["hidden_dim"] *= 2
    replace(meta_file, json.dumps(meta).encode())


@pytest.mark.parametrize(
    "case, named",
    [
        ("another-task", "localize/trials/t001/best holds a avss network, not avss-binary"),
        (
            "another-architecture",
            "model.safetensors: its tensors do not fit the avss-binary network aavs.json describes",
        ),
        ("pickle", "model.safetensors: not a readable safetensors file"),
        ("link-in-checkpoint", "model.safetensors: leads out of the"),
    ],
)
def test_evaluate_and_predict_refuse_a_checkpoint_that_is_not_stage_ones(
    case: str, named: str, source: Path, networks, tmp_path: Path
) -> None:
    """Stage one's best checkpoint replaced by stage two's (another task), its aavs.json edited (another
    architecture), its weights a pickle that would run code, its weights a link out of the folder:
    `aavs evaluate` of it (its message ``named``) and `aavs predict --experiment` refuse, naming it;
    nothing is unpickled."""
    one, two = networks["best"]["localize"], networks["best"]["semantic"]
    changes = {
        "another-task": [
            Mutation("swap", f"{one}/{name}", f"{two}/{name}") for name in ("aavs.json", "model.safetensors")
        ],
        "another-architecture": [],
        "pickle": [Mutation("pickle", f"{one}/model.safetensors")],
        "link-in-checkpoint": [Mutation("link-outside", f"{one}/model.safetensors")],
    }[case]
    with Workspace(source, tmp_path).copy(changes) as (folder, scratch):
        if case == "another-architecture":
            _edit_hidden_dim(folder)
        evaluate = ["evaluate", str(folder / one), "--data", str(networks["data"]), "--task", "avss-binary"]
        code, err = run([*evaluate, "--split", "test"], folder.parent)
        check_outcome(code, err, folder, changes, must_refuse=True)
        assert named in err, err
        code, err = run(reader_args("predict", folder, networks, scratch), folder.parent)
        check_outcome(code, err, folder, changes, must_refuse=True)
        assert str(folder / one) in err, err
