"""Before a stage runs: is the experiment runnable here, and its data, audio embeddings and (with
``model.pretrain``) its pre-trained base in place.

:func:`check_runnable` holds every check ``aavs run`` makes before it writes anything; ``aavs run
--dry-run`` runs the same ones through :func:`experiment_problems`, so the two refuse the same files with
the same message. The data root is checked by :func:`aavs.datasets.check.check_data_root` (cached by
:mod:`aavs.datasets.check_cache`: every file is decoded once, then again only when it changed).
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from aavs.datasets import atomic
from aavs.datasets.check import Problem
from aavs.datasets.check_cache import cached_check_data_root
from aavs.datasets.errors import InputError
from aavs.datasets.layout import has_metadata
from aavs.orchestrator import results
from aavs.orchestrator.experiment import trackers
from aavs.orchestrator.experiment.runners.base import Runner
from aavs.orchestrator.experiment.spec import ExperimentSpec, load_spec
from aavs.orchestrator.recipe.output_capture import task_log

log = logging.getLogger(__name__)

SHOWN = 10  # problems of a data root quoted in ``aavs run``'s refusal (`aavs data check` lists all)
# Less free space than this where the results folder lives is a full disk: not even a tiny trial's
# first checkpoint would fit (tests/test_faults.py's full-disk test runs on 40 MB, and must start).
MIN_FREE_BYTES = 16 * 2**20
PROBE = ".aavs-probe.{pid}.tmp"  # a staging name: a sweep (aavs.datasets.atomic.sweep) removes one left over
PB2_MODULES = ("GPy", "sklearn")  # the pb2 extra


# ---------------------------------------------------------------------------------------- checks
def check_runnable(spec: ExperimentSpec, local: bool, results_root: str | Path = "results") -> Path:
    """What the file's schema can't know, before anything is written: the results location is a local
    path on storage that takes writes (:func:`check_writable`), the optional packages the file asks for
    are installed, with ``--local`` no stage needs Ray's schedulers, and the data root is clean. Returns
    the experiment's results folder."""
    results_dir = check_environment(spec, local, results_root)
    problems = data_problems(spec)
    if problems:
        shown = "\n".join(f"  {_line(p)}" for p in problems[:SHOWN])
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise InputError(
            f"data.root {spec.data.root}: {len(problems)} problem(s); `aavs data check "
            f"{spec.data.root}` lists them all:\n{shown}{more}"
        )
    return results_dir


def check_environment(spec: ExperimentSpec, local: bool, results_root: str | Path = "results") -> Path:
    """:func:`check_runnable` less the data root: the results storage, the optional packages, the
    schedulers ``--local`` can run. Returns the experiment's results folder."""
    results_dir = results.results_path(results_root) / spec.name
    check_writable(results_dir)
    trackers.require_installed(spec)
    for i, stage in enumerate(spec.stages):
        missing = [m for m in PB2_MODULES if importlib.util.find_spec(m) is None]
        if stage.tune.scheduler_name == "pb2" and missing:
            raise InputError(
                f"stages.{i}.tune.scheduler ({stage.name}): pb2 needs {missing}, which are not installed; "
                "pip install 'aavs[pb2]' (or use scheduler: pbt)"
            )
        if local and stage.tune.scheduler != "fifo":
            raise InputError(
                f"stages.{i}.tune.scheduler ({stage.name}): {stage.tune.scheduler_name} stops or mutates trials while "
                "others run, which needs Ray; run without --local, or use scheduler: fifo"
            )
    return results_dir


def data_problems(spec: ExperimentSpec) -> list[Problem]:
    """The problems of the spec's data root, each naming its file (none for a synthetic set, which the
    run writes itself); a missing root or metadata.csv is an InputError."""
    if spec.data.root is None:
        return []
    if not Path(spec.data.root).is_dir():
        raise InputError(f"data.root: {spec.data.root}: data root missing (expected an AVSBench data root)")
    if not has_metadata(spec.data.root):
        raise InputError(
            f"data.root: {spec.data.root} has no metadata.csv (expected an AVSBench data root; or "
            "AVSBench-object's, with Single-source/s4_meta_data.csv or Multi-sources/ms3_meta_data.csv)"
        )
    return cached_check_data_root(spec.data.root)


def check_writable(results_dir: Path) -> None:
    """The storage of ``results_dir`` takes writes and has room, or the InputError that names the
    folder: read-only (a read-only mount, no permission) or full (ENOSPC, or less free than
    :data:`MIN_FREE_BYTES`). A probe file is written, fsynced and removed in the folder, or, when the
    folder does not exist yet, in its nearest existing parent: nothing is left behind, nothing is
    created (``aavs run --dry-run`` runs this too)."""
    where = results_dir
    while not where.exists() and where.parent != where:
        where = where.parent
    if not where.is_dir():
        raise InputError(f"results folder {results_dir}: {where} is not a folder")
    probe = where / PROBE.format(pid=os.getpid())
    try:
        atomic.probe_write(probe, b"aavs probe\n")
        free = shutil.disk_usage(where).free
    except OSError as err:
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise InputError(f"results folder {results_dir}: not writable ({where}: {err.strerror})") from None
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"results folder {results_dir}: the disk is full ({where}: {err.strerror})") from None
        raise InputError(f"results folder {results_dir}: cannot be written ({where}: {err.strerror})") from None
    if free < MIN_FREE_BYTES:
        raise InputError(
            f"results folder {results_dir}: the disk is full ({where}: {free / 2**20:.1f} MiB free, "
            f"aavs needs at least {MIN_FREE_BYTES // 2**20} MiB)"
        )


def experiment_problems(
    path: str | Path, overrides: list[str] | None, local: bool, results_root: str | Path = "results"
) -> list[str]:
    """``aavs run --dry-run``: the refusal ``aavs run`` would give, one line per problem (empty:
    runnable). A data root's problems are listed one a line, naming the file."""
    try:
        spec, _ = load_spec(path, overrides)
        check_environment(spec, local, results_root)
        return [f"{path}: data.root: {_line(p)}" for p in data_problems(spec)]  # (run quotes the first ones)
    except InputError as err:
        return str(err).splitlines()
    return []


def _line(problem: Problem) -> str:
    """A problem as one line: a line break or other control character in a file name or message (a
    metadata.csv field may hold one) is shown escaped."""
    text = f"{problem.path}: {problem.message}"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# ----------------------------------------------------------------------------------- preparation
def prepare_data(spec: ExperimentSpec, results_dir: Path) -> Path:
    """The data root the trials read: the file's (checked by :func:`check_runnable`), or the synthetic
    set written into the results folder once."""
    if spec.data.root:
        return Path(spec.data.root)
    from aavs.datasets.synth import write_synthetic_avsbench  # here, not at the top: it imports torchaudio

    root = results_dir / results.DATA_DIR
    synthetic = spec.data.synthetic
    assert synthetic is not None, "the schema asks for exactly one of data.root and data.synthetic"
    if not (root / "metadata.csv").is_file():
        write_synthetic_avsbench(root, **synthetic.model_dump())
    return root


def precompute_embeddings(spec: ExperimentSpec, data_root: Path, cache: Path) -> None:
    """All audio embeddings once, here, before any trial starts (trials then only read the cache)."""
    from aavs.datasets.audio_features import embed_videos  # here, not at the top: it imports torch
    from aavs.datasets.layout import read_metadata

    embed_videos(
        data_root, read_metadata(data_root), vggish=spec.model.vggish, vggish_pca=spec.model.vggish_pca, cache_dir=cache
    )


def prepare_base(spec: ExperimentSpec, results_dir: Path, runner: Runner) -> ExperimentSpec:
    """With ``model.pretrain``: the preset's base pre-trained once into ``<results>/base`` (again only when
    its settings change), and the spec the trials get, whose model names that folder as ``pretrained``."""
    from aavs.orchestrator.recipe.base_pretraining import pretrain_base, read_record  # imports torch

    settings = spec.model.pretrain
    if settings is None:
        return spec
    folder = results_dir / results.BASE_DIR
    wanted = {"preset": spec.model.preset, **settings.model_dump()}
    record = read_record(folder)
    if record is None or {k: record.get(k) for k in wanted} != wanted:
        if record is not None:
            log.warning("model.pretrain changed: pre-training the base in %s again", folder)
        log.info(
            "pre-training the %s base: %d steps of %d synthetic images",
            spec.model.preset,
            settings.steps,
            settings.images_per_step,
        )
        # It runs alone, before any trial: on every CPU of a machine (with one worker's GPUs, if any).
        record = runner.call(
            pretrain_base,
            spec.model.preset,
            str(folder),
            settings.steps,
            settings.images_per_step,
            settings.lr,
            settings.seed,
            log_file=task_log(results_dir, "base"),
            cpus=runner.node_cpus(),
        )
        log.info(
            "base pre-trained in %.0f s: loss %.2f -> %.2f",
            record["seconds"],
            record["loss_first"],
            record["loss_last"],
        )
    model = spec.model.model_copy(update={"pretrained": str(folder.resolve()), "pretrain": None})
    return spec.model_copy(update={"model": model})
