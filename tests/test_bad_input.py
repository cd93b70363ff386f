"""Bad input, generated: experiment files and data roots mutated by Hypothesis through ``aavs run --dry-run``.

Every case is either valid by the schema (exit status 0) or ends with exit status 2 and messages that
name the experiment file and the key, or the data file, and never with a traceback. The dry run writes
nothing: the results folder is never created. The data check's cache is checked here too.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from aavs.datasets import check_cache
from aavs.orchestrator.cli import main

# Derandomized: the same examples on every run, so that a failure in CI is one a person can rerun.
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DATA_SETTINGS = settings(SETTINGS, max_examples=25)

VALID: dict[str, Any] = {
    "name": "fuzz",
    "data": {"synthetic": {"videos_per_split": 1, "seed": 0}},
    "model": {"preset": "tiny"},
    "compute": {"workers_per_trial": 1, "gpus_per_worker": 0, "cpus_per_worker": 1},
    "stages": [
        {
            "name": "localize",
            "task": "avss-binary",
            "epochs": 2,
            "params": {"lr": {"loguniform": [5.0e-4, 2.0e-3]}, "weight_decay": 0.05, "batch_size": {"choice": [1, 2]}},
            "tune": {"metric": "val/miou", "mode": "max", "num_samples": 2},
        },
        {
            "name": "semantic",
            "task": "avss",
            "prior": "localize",
            "init_from": "localize",
            "epochs": 2,
            "params": {"lr": {"grid": [1.0e-3, 3.0e-3]}},
        },
    ],
}

NAMES = st.sampled_from(
    ["../x", "a/b", "/abs", "..", ".", "", "x" * 300, "ñame", "名前", "a\\b", "a\0b", "-x", "CON", "a b", "ok-name"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NAMES,
    st.text(max_size=12),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 2**63, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path of ``node`` (dict keys and list indices), parents first."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


PATHS = list(_paths(VALID))


@st.composite
def mutated_experiment(draw: st.DrawFn) -> dict[str, Any]:
    """VALID with one to three mutations: a value replaced, a key deleted, or an unknown key added."""
    spec = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = spec
        try:
            for key in path[:-1]:
                parent = parent[key]
            kind = draw(st.sampled_from(["replace", "delete", "unknown"]))
            if kind == "replace":
                parent[path[-1]] = draw(VALUES)
            elif kind == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=10))] = draw(VALUES)
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed or replaced the parent
            continue
    return spec


def _dry_run(experiment: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(experiment), "--dry-run", "--results", str(experiment.parent / "results"), *extra])
    return code, out.getvalue(), err.getvalue()


def _assert_clean_outcome(experiment: Path, code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and all(line.startswith(f"aavs: error: {experiment}") for line in lines), err
    else:
        assert err.strip() == "", err
    assert not (experiment.parent / "results").exists()  # a dry run writes nothing


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # relative paths in mutated files resolve inside the test's folder
    return tmp_path


def test_the_valid_file_is_valid(workdir: Path) -> None:
    experiment = workdir / "x.yaml"
    experiment.write_text(yaml.safe_dump(VALID))
    code, out, err = _dry_run(experiment)
    assert (code, err) == (0, "") and "valid" in out


@SETTINGS
@given(mutated_experiment())
def test_mutated_experiment_files(workdir: Path, spec: dict[str, Any]) -> None:
    experiment = workdir / "x.yaml"
    experiment.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    code, _, err = _dry_run(experiment)
    _assert_clean_outcome(experiment, code, err)


RAW_FILES = [
    "name: !!python/object/apply:os.system ['touch pwned']\n",
    "!!python/object:os.system {}\n",
    "name: !!binary aGVsbG8=\n",
    "name: 2020-01-01\n",
    "base: &b {preset: tiny}\nname: x\ndata: {synthetic: {}}\nmodel: *b\nstages: [{name: a, task: s4, model: *b}]\n",
    "- 1\n- 2\n",
    "just text\n",
    "",
    "name: [unclosed\n",
    "? [a, b]\n: c\n",
    "name: x\nname: y\n",
    "\xff\xfe not utf-8",
    "a: &a [*a]\n",
]


@pytest.mark.parametrize("text", RAW_FILES)
def test_yaml_tags_anchors_and_garbage(workdir: Path, text: str) -> None:
    experiment = workdir / "x.yaml"
    experiment.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    code, _, err = _dry_run(experiment)
    _assert_clean_outcome(experiment, code, err)
    assert code == 2 and not (workdir / "pwned").exists()


@pytest.mark.parametrize("value", ["../x", "a/b", "/etc", "x" * 300])
def test_names_cannot_escape_the_results_folder(workdir: Path, value: str) -> None:
    for where in ("name", "stage"):
        spec = copy.deepcopy(VALID)
        if where == "name":
            spec["name"] = value
        else:
            spec["stages"][0]["name"] = value
        experiment = workdir / "x.yaml"
        experiment.write_text(yaml.safe_dump(spec))
        code, _, err = _dry_run(experiment)
        _assert_clean_outcome(experiment, code, err)
        key = "name" if where == "name" else "stages.0.name"
        assert code == 2 and f"{experiment}: {key}: expected a plain name" in err


# ------------------------------------------------------------------------------------- data roots
@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aavs.datasets.synth import write_synthetic_avsbench

    return write_synthetic_avsbench(tmp_path_factory.mktemp("fuzz") / "data", videos_per_split=1, seed=0)


@pytest.fixture
def data_experiment(small_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the small root and an experiment file that names it."""
    root = Path(shutil.copytree(small_root, tmp_path / "data"))
    spec = {**copy.deepcopy(VALID), "data": {"root": str(root)}}
    experiment = tmp_path / "x.yaml"
    experiment.write_text(yaml.safe_dump(spec))
    return root, experiment


def _files(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}") if p.is_file())


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _recolour(path: Path, colour: tuple[int, int, int]) -> None:
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[: rgb.shape[0] // 2] = colour
    Image.fromarray(rgb).save(path)


MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from([".jpg", ".png", ".wav"]), st.floats(0.0, 0.9)),
    st.tuples(st.just("garbage"), st.sampled_from([".jpg", ".png", ".wav", ".csv", ".json"]), st.binary(max_size=64)),
    st.tuples(st.just("recolour"), st.just(".png"), st.tuples(*[st.integers(0, 255)] * 3)),
    st.tuples(st.just("delete"), st.sampled_from([".jpg", ".png", ".wav", ".csv", ".json"]), st.none()),
    st.tuples(st.just("orphan row"), st.just(".csv"), st.text(min_size=1, max_size=12)),
)


def _mutate(root: Path, mutation: tuple, index: int) -> Path:
    kind, suffix, arg = mutation
    files = _files(root, suffix)
    path = files[index % len(files)]
    if kind == "truncate":
        _truncate(path, arg)
    elif kind == "garbage":
        path.write_bytes(arg)
    elif kind == "recolour":
        _recolour(path, arg)
    elif kind == "delete":
        path.unlink()
    else:  # a metadata row whose folder does not exist
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{arg},{arg},0,0,piano,train,v1s\n")
    return path


@DATA_SETTINGS
@given(mutation=MUTATIONS, index=st.integers(0, 1000))
def test_mutated_data_roots(data_experiment: tuple[Path, Path], mutation: tuple, index: int) -> None:
    root, experiment = data_experiment
    backup = root.with_name("backup")
    shutil.rmtree(backup, ignore_errors=True)
    shutil.copytree(root, backup)
    try:
        path = _mutate(root, mutation, index)
        code, _, err = _dry_run(experiment)
        _assert_clean_outcome(experiment, code, err)
        if mutation[0] in ("truncate", "delete", "orphan row") and not (
            mutation[0] == "truncate" and mutation[1] == ".wav"
        ):
            assert code == 2, (mutation, err)  # (a cut wav may still be long enough)
        if code == 2 and mutation[0] != "orphan row":
            assert str(path) in err or str(path.parent) in err, (mutation, path, err)
    finally:
        shutil.rmtree(root)
        os.replace(backup, root)


def test_a_line_break_in_metadata_stays_on_one_line(data_experiment: tuple[Path, Path]) -> None:
    root, experiment = data_experiment
    with (root / "metadata.csv").open("a", encoding="utf-8") as f:
        f.write('"a\nb","a\nb",0,0,piano,train,v1s\n')
    code, _, err = _dry_run(experiment)
    _assert_clean_outcome(experiment, code, err)
    assert code == 2 and "a\\nb" in err


def test_data_problems_name_the_file(data_experiment: tuple[Path, Path]) -> None:
    root, experiment = data_experiment
    frame = _files(root, ".jpg")[0]
    _truncate(frame, 0.3)
    code, _, err = _dry_run(experiment)
    assert code == 2 and f"{experiment}: data.root: {frame}: frame not readable" in err


def test_missing_data_root_is_one_clear_line(workdir: Path) -> None:
    experiment = workdir / "x.yaml"
    experiment.write_text(yaml.safe_dump({**VALID, "data": {"root": "nowhere"}}))
    code, _, err = _dry_run(experiment)
    assert code == 2 and f"{workdir / 'nowhere'}: data root missing" in err


def test_data_check_is_cached_by_sizes_and_mtimes(
    data_experiment: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = data_experiment
    calls: list[Path] = []
    real = check_cache.check_data_root
    monkeypatch.setattr(check_cache, "check_data_root", lambda r: calls.append(r) or real(r))
    cache = tmp_path / "cache"
    assert check_cache.cached_check_data_root(root, cache) == []
    assert check_cache.cached_check_data_root(root, cache) == [] and len(calls) == 1  # not decoded again
    mask = _files(root, ".png")[0]
    _recolour(mask, (1, 2, 3))
    (problem,) = check_cache.cached_check_data_root(root, cache)
    assert problem.path == str(mask) and len(calls) == 2
    assert check_cache.cached_check_data_root(root, cache) == [problem] and len(calls) == 2  # problems cached too
    (entry,) = cache.iterdir()
    entry.write_text("{torn")
    assert check_cache.cached_check_data_root(root, cache) == [problem] and len(calls) == 3  # a bad entry: recheck


def test_run_refuses_a_bad_data_root_before_any_trial(data_experiment: tuple[Path, Path], capsys) -> None:
    root, experiment = data_experiment
    (_files(root, ".wav")[0]).write_bytes(b"RIFF")
    results = experiment.parent / "results"
    assert main(["run", str(experiment), "--local", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "audio not decodable" in err and "aavs data check" in err and "Traceback" not in err
    assert not list(results.rglob("trials"))  # no trial started
