"""``aavs run`` and ``aavs resume``: the stages of an experiment, one after the other.

For each stage: sample its trials (deterministically), run them (Ray Tune, or in this process with
``--local``), pick the best trial by the stage's metric, export that checkpoint's masks when a later
stage uses them as its prior, evaluate it on the test split, and record ``best.json``. Everything
goes under ``results/<name>/``::

    format.json, provenance.json    the folder's format version; what wrote it (aavs.orchestrator.results)
    spec.yaml, spec.json            the resolved experiment and its hash
    run.json                        how it was started (--local or Ray); `aavs resume` continues so
    lock.json                       while a run or resume is at work: who (aavs.orchestrator.experiment.lock)
    data/                           the synthetic data set (when the spec asks for one)
    base/, base.log.txt             the preset's pre-trained base (with model.pretrain) and its output
    cache/                          audio embeddings, computed once for all trials and nodes
    <stage>/inputs.json             what the stage was run from (its hash decides "unchanged")
    <stage>/trials/t000/ ...        each trial's folder (train_func's metrics, checkpoints, status)
    <stage>/trials/t000/node.json   the Ray node the trial last ran on (its rank 0)
    <stage>/trials/t000/log.txt     the trial's output (aavs.orchestrator.recipe.output_capture; `aavs logs`)
    <stage>/{masks,test,report}.log.txt   the output of the stage's tasks
    <stage>/masks/                  the best checkpoint's masks of every split (a later stage's prior)
    <stage>/best.json               the stage's best trial, checkpoint, value, test metrics
    <stage>/done.json               written last: the stage is complete for these inputs
    leaderboard.json                kept current while trials report (aavs.orchestrator.views.live)
    report/<stage>/                 learning curves, per-class IoU, sample predictions (PNG), at each stage's end

A stage whose inputs are unchanged since it completed is not run again; an interrupted stage picks up
where it stopped (finished trials are kept, running ones resume from their last epoch).

On a cluster the results folder must be storage that every node sees at the same path (NFS, EFS, a
mounted bucket): trials on one node write checkpoints that a task on another reads, and stage two's
trials read the masks stage one exported. Object-store URIs (s3://...) are refused: everything here is
read and written as files. Every file's record, reader and writer is in :mod:`aavs.orchestrator.results`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import statistics
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml

from aavs.datasets import atomic
from aavs.datasets.errors import InputError
from aavs.datasets.files import file_sha256
from aavs.orchestrator import results
from aavs.orchestrator.experiment import lock, repair, stopping
from aavs.orchestrator.experiment.spec import (
    CONTINUOUS,
    TRIAL_INDEX,
    ExperimentSpec,
    StageSpec,
    configuration_key,
    fixed,
    load_spec,
    parse_spec,
    planned_trials,
    searched,
    spec_hash,
    trial_name,
)
from aavs.orchestrator.recipe import checkpointing
from aavs.orchestrator.recipe.config import Hyperparameters, TrainConfig
from aavs.orchestrator.recipe.output_capture import captured, mark_failed, task_log, trial_log
from aavs.orchestrator.recipe.threads import cpu_threads

BASE_DIR = "base"  # model.pretrain's output under the results folder

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """No trial of a stage produced a checkpoint."""


# ----------------------------------------------------------------------------------- entry points
def run_experiment(
    spec_file: str | Path,
    overrides: list[str] | None = None,
    results_root: str | Path = "results",
    local: bool = False,
    console: Console | None = None,
    verbose: bool = False,
    force: bool = False,
) -> Path:
    """Run an experiment file; ``verbose``: trial output also on this terminal, not only in log files;
    ``force``: take over the results folder's lock from another host (aavs.orchestrator.experiment.lock)."""
    spec, _ = load_spec(spec_file, overrides)
    check_runnable(spec, local)
    results_dir = results_path(results_root) / spec.name
    with lock.held(results_dir, force=force):
        results.open_results(results_dir, "run")
        results.clear_stop(results_dir)
        _save_spec(results_dir, spec)
        results.write_run(results_dir, "local" if local else "ray")
        with stopping.stop_on_ctrl_c(results_dir):
            run_stages(spec, results_dir, local=local, console=console, verbose=verbose)
    return results_dir


def resume_experiment(
    results_dir: str | Path,
    local: bool | None = None,
    console: Console | None = None,
    verbose: bool = False,
    force: bool = False,
) -> Path:
    """Continue an experiment; ``local`` None continues in the mode it was started in (``run.json``),
    so that its remaining trials compute exactly what an uninterrupted run would. It takes the folder's
    lock as ``aavs run`` does."""
    results_dir = results_path(results_dir)
    spec_file = results_dir / "spec.yaml"
    if not spec_file.is_file():
        raise InputError(f"{results_dir}: not an experiment results folder (no spec.yaml); start it with `aavs run`")
    with lock.held(results_dir, force=force):
        results.open_results(results_dir, "resume")
        raw = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
        spec = parse_spec(raw, str(spec_file))
        if local is None:
            local = started_mode(results_dir) == "local"
        check_runnable(spec, local)
        results.clear_stop(results_dir)
        log.info("resuming %s %s", results_dir, "in this process (--local)" if local else "on Ray")
        with stopping.stop_on_ctrl_c(results_dir):
            run_stages(spec, results_dir, local=local, console=console, verbose=verbose)
    return results_dir


def started_mode(results_dir: Path) -> str:
    """ "local" or "ray": how the experiment was started (folders older than run.json: Ray)."""
    recorded = results.read_run(results_dir)
    return recorded.mode if recorded else "ray"


def results_path(value: str | Path) -> Path:
    """A results location as an absolute local path: a path, or a ``file://`` URI.

    Other URI schemes are refused with the value named: checkpoints, masks and the leaderboard are
    plain files, so an object store has to be mounted as a filesystem to hold them.
    """
    text = str(value)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme and scheme.group(1).lower() != "file":
        raise InputError(
            f"results storage {text!r}: {scheme.group(1)}:// URIs are not supported (checkpoints, "
            "masks and leaderboard.json are written as files); mount the storage as a shared "
            "filesystem at the same path on every node (NFS, EFS, gcsfuse, s3fs ...) and give that path"
        )
    if scheme:
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise InputError(f"results storage {text!r}: a file:// URI names a local path (file:///path), not a host")
        text = url2pathname(parsed.path)
    return Path(text).expanduser().resolve()


def _save_spec(results_dir: Path, spec: ExperimentSpec) -> None:
    """The resolved spec: every default filled in, paths absolute (``aavs resume`` reads it back)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(results_dir / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    results.write_spec(results_dir, spec.to_dict(), spec_hash(spec.to_dict()))


# ----------------------------------------------------------------------------------------- stages
def run_stages(
    spec: ExperimentSpec, results_dir: Path, local: bool, console: Console | None = None, verbose: bool = False
) -> dict[str, results.BestTrial]:
    """Every stage, while a live view follows the results folder: it keeps leaderboard.json current
    as trials report, and draws progress and leaderboard on ``console`` (None: nothing drawn).

    Trials and tasks write their output into their log files (aavs.orchestrator.recipe.output_capture), with
    ``verbose`` also where it went before (Ray forwards it to this terminal)."""
    from aavs.orchestrator.views.live import LiveView

    with LiveView(results_dir, console):
        return _run_stages(spec, results_dir, local, quiet=not verbose)


def _run_stages(spec: ExperimentSpec, results_dir: Path, local: bool, quiet: bool) -> dict[str, results.BestTrial]:
    from aavs.orchestrator.views.leaderboard import write_leaderboard

    data_root = prepare_data(spec, results_dir)
    cache = results_dir / "cache"
    _precompute_embeddings(spec, data_root, cache)
    runner = LocalRunner(spec, results_dir, quiet) if local else RayRunner(spec, results_dir, quiet)
    inputs_spec, spec = spec, prepare_base(spec, results_dir, runner)  # stage inputs name the pretrain settings
    bests: dict[str, results.BestTrial] = {}
    needs_masks = {s.prior for s in spec.stages if s.prior}

    def export(stage: StageSpec, best: results.BestTrial) -> str:
        """The best checkpoint's masks of every split, a later stage's prior (complete or exported again)."""
        stage_dir = results_dir / stage.name
        if results.read_masks_success(stage_dir / "masks") is not None:
            from aavs.orchestrator.experiment.repair import masks_problem

            problem = masks_problem(stage_dir / "masks")
            if problem:
                log.warning("%s; exporting the masks again", problem)
        masks = runner.export_masks(
            best.checkpoint, data_root, stage_dir / "masks", spec, cache, stage.resources, task_log(stage_dir, "masks")
        )
        return str(masks)

    def report(stage: StageSpec) -> None:
        stage_dir = results_dir / stage.name
        _write_report(
            results_dir,
            lambda fn, *args: runner.call(fn, *args, resources=stage.resources, log_file=task_log(stage_dir, "report")),
        )

    reported = False
    for stage in spec.stages:
        stage_dir = results_dir / stage.name
        inputs = _stage_inputs(inputs_spec, stage, data_root, bests)
        digest = spec_hash(inputs)
        retrain = repair.repair_stage(stage_dir)  # what an older crash or a bad disk left
        done = results.read_done(stage_dir)
        best = results.read_best(stage_dir)
        if done and done.inputs_hash == digest and best and not retrain:
            log.info("stage %s: unchanged since it completed; skipping", stage.name)
            if stage.name in needs_masks and not masks_ready(Path(best.masks or stage_dir / "masks"), best.checkpoint):
                best.masks = export(stage, best)  # a later stage reads them: whole again
                results.write_best(stage_dir, best)
            bests[stage.name] = best
            continue
        if retrain:
            (stage_dir / results.DONE_FILE).unlink(missing_ok=True)
        _supersede_if_changed(stage_dir, digest)
        results.write_inputs(stage_dir, digest, inputs)
        base = base_trial_config(spec, stage, data_root, cache, bests)
        log.info("stage %s: %d trials (%s search)", stage.name, planned_trials(stage), stage.tune.search)
        runner.run_search(stage, base, stage_dir)
        write_leaderboard(results_dir)
        best = pick_best(stage, stage_dir, data_root)
        if stage.name in needs_masks:
            best.masks = export(stage, best)
        best.test = runner.evaluate(
            best.checkpoint,
            data_root,
            stage.task,
            bests[stage.prior].masks if stage.prior else None,
            spec,
            cache,
            stage.resources,
            log_file=task_log(stage_dir, "test"),
        )
        results.write_best(stage_dir, best)
        results.write_done(stage_dir, digest)
        bests[stage.name] = best
        write_leaderboard(results_dir)
        report(stage)
        reported = True
        log.info("stage %s: best trial %s, %s = %.4f", stage.name, best.trial_id, best.metric, best.value)
    if not reported:  # every stage was complete: bring a report a killed run left half-written up to date
        report(spec.stages[-1])
    return bests


def _write_report(results_dir: Path, call: Callable[..., Any]) -> None:
    """The report's pictures; if they fail, the stage's results stand and the run goes on."""
    from aavs.orchestrator.views.figures import write_report

    try:
        write_report(results_dir, call=call)
    except Exception:  # noqa: BLE001 - a missing picture must not cost the experiment
        log.exception("writing the report failed; `aavs report %s` tries again", results_dir)


def prepare_data(spec: ExperimentSpec, results_dir: Path) -> Path:
    if spec.data.root:
        if not (Path(spec.data.root) / "metadata.csv").is_file():
            raise InputError(f"data.root: {spec.data.root} has no metadata.csv (expected an AVSBench data root)")
        from aavs.orchestrator.experiment.validate import require_clean_data

        require_clean_data(spec)  # every file decoded once; then only when one changed (check_cache)
        return Path(spec.data.root)
    from aavs.datasets.synth import write_synthetic_avsbench

    root = results_dir / "data"
    if not (root / "metadata.csv").is_file():
        write_synthetic_avsbench(root, **spec.data.synthetic.model_dump())
    return root


def prepare_base(spec: ExperimentSpec, results_dir: Path, runner: LocalRunner) -> ExperimentSpec:
    """With ``model.pretrain``: the preset's base pre-trained once into ``<results>/base`` (again only when
    its settings change), and the spec the trials get, whose model names that folder as ``pretrained``."""
    from aavs.models.base_pretraining import pretrain_base, read_record

    settings = spec.model.pretrain
    if settings is None:
        return spec
    folder = results_dir / BASE_DIR
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


def _precompute_embeddings(spec: ExperimentSpec, data_root: Path, cache: Path) -> None:
    """All audio embeddings once, here, before any trial starts (trials then only read the cache)."""
    from aavs.datasets.audio_features import embed_videos
    from aavs.datasets.layout import read_metadata

    embed_videos(
        data_root, read_metadata(data_root), vggish=spec.model.vggish, vggish_pca=spec.model.vggish_pca, cache_dir=cache
    )


def _stage_inputs(
    spec: ExperimentSpec, stage: StageSpec, data_root: Path, bests: dict[str, results.BestTrial]
) -> dict[str, Any]:
    def upstream(name: str | None) -> str | None:
        return bests[name].checkpoint_sha256 if name else None

    placement = ("resources",)  # where a stage runs does not change what it computes
    c = spec.compute
    return {
        "stage": stage.model_dump(mode="json", exclude=set(placement)),
        # Keys added since a format's first release are left out while unset, so that a stage that
        # completed before them stays complete.
        "model": _without_unset(spec.model.model_dump(mode="json"), "pretrain"),
        "data": str(data_root),
        "synthetic": _without_unset(spec.data.synthetic.model_dump(), "eval_videos_per_split")
        if spec.data.synthetic
        else None,
        "compute": {
            "strategy": c.strategy,
            "zero_stage": c.deepspeed.zero_stage,
            "mixed_precision": c.mixed_precision,
            "workers_per_trial": c.workers_per_trial,
        },
        "prior": upstream(stage.prior),
        "init_from": upstream(stage.init_from),
    }


def _without_unset(values: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not (k in keys and v is None)}


def _supersede_if_changed(stage_dir: Path, digest: str) -> None:
    old = results.read_inputs(stage_dir)
    if old and old.inputs_hash != digest:
        target = stage_dir.with_name(f"{stage_dir.name}.superseded-{old.inputs_hash}")
        log.warning("stage %s: its inputs changed; moving the earlier results to %s", stage_dir.name, target)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(stage_dir, target)


def stage_config(
    spec: ExperimentSpec, stage: StageSpec, data_root: Path, cache: Path, prior: str | None, init_from: str | None
) -> dict[str, Any]:
    """A stage's ``train_func`` config before the sampled parameters: its sections and settings under
    their own names (``prior`` and ``init_from`` become the earlier stages' masks and checkpoint)."""
    return {
        "task": stage.task,
        "data_root": str(data_root),
        "model": spec.model,
        "audio_cache": str(cache),
        "epochs": stage.epochs,
        "metric": stage.tune.metric,
        "mode": stage.tune.mode,
        "max_videos": stage.max_videos,
        "shuffle": stage.shuffle,
        "prior": prior,
        "init_from": init_from,
        "compute": spec.compute,
    }


def effective_config(spec: ExperimentSpec, results_root: str | Path = "results") -> dict[str, Any]:
    """What ``aavs run --print-config`` shows: every stage's training config with the method's defaults
    filled in (before sampling: ``params`` are the search space), and notes on what is not the paper's."""
    results_dir = results_path(results_root) / spec.name
    data_root = results_dir / "data" if spec.data.synthetic else Path(spec.data.root or "")
    stages = {}
    for stage in spec.stages:
        config = stage_config(
            spec,
            stage,
            data_root,
            results_dir / "cache",
            prior=f"<masks of {stage.prior}'s best trial>" if stage.prior else None,
            init_from=f"<best checkpoint of {stage.init_from}>" if stage.init_from else None,
        )
        given = fixed(stage.params)
        resolved = TrainConfig.load({**config, **given, "trial_dir": "<trial folder>"})
        # The search spaces as written; model and compute are the experiment's, shown once below.
        shown = {**resolved.model_dump(mode="json", exclude={"trial_dir", "model", "compute"}), **stage.params}
        if stage.params["lr_b"] is None:
            shown["lr_b"] = resolved.learning_rate_b if "lr" in given else "lr / 10"
        if "adapter_warmup" in given:
            shown["phase_b_from_epoch"] = resolved.phase_a_epochs
        stages[stage.name] = {**shown, "num_samples": stage.tune.num_samples}
    notes = []
    train_base = spec.model.trains_base
    if train_base:
        notes.append(
            f"model.preset {spec.model.preset} has random weights: its whole Mask2Former trains too "
            "(train_base), where the method keeps a pre-trained base frozen (docs/method.md §8)"
        )
    if spec.model.pretrain:
        notes.append(
            f"model.pretrain: the {spec.model.preset} preset's base is first pre-trained on synthetic still "
            f"images ({results_dir / BASE_DIR}), the stand-in for the method's "
            "ADE20k base; the stages keep it frozen (docs/method.md §8)"
        )
    if spec.compute.mixed_precision != "no":
        notes.append(f"compute.mixed_precision {spec.compute.mixed_precision}: the paper trains in fp32")
    return {
        "name": spec.name,
        "model": {**spec.to_dict()["model"], "train_base": bool(train_base)},
        "compute": spec.to_dict()["compute"],
        "stages": stages,
        "notes": notes,
    }


def base_trial_config(
    spec: ExperimentSpec, stage: StageSpec, data_root: Path, cache: Path, bests: dict[str, results.BestTrial]
) -> dict[str, Any]:
    """What every trial of the stage shares: the stage's config and its fixed parameters (plain JSON)."""
    config = stage_config(
        spec,
        stage,
        data_root,
        cache,
        prior=bests[stage.prior].masks if stage.prior else None,
        init_from=bests[stage.init_from].checkpoint if stage.init_from else None,
    )
    config = {**config, "model": spec.model.model_dump(mode="json"), "compute": spec.compute.model_dump(mode="json")}
    return {**config, **fixed(stage.params)}


def trial_config(base: Mapping[str, Any], stage_dir: Path, suggestion: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's ``train_func`` config: the stage's, then the searcher's proposal (named ``trial``; a
    repeat's index under Tune's ``__trial_index__`` adds to the seed). Records ``params.json`` (every
    hyperparameter, fixed or proposed) first, so a trial's parameters are known from the moment it starts."""
    params = {k: v for k, v in {**base, **suggestion}.items() if k in Hyperparameters.model_fields}
    repeat = int(suggestion.get(TRIAL_INDEX, 0))
    if repeat:
        params["seed"] = int(params.get("seed", base["seed"])) + repeat
    trial_dir = stage_dir / "trials" / suggestion["trial"]
    results.write_params(trial_dir, params)
    return TrainConfig.load({**base, **params, "trial_dir": str(trial_dir)}).to_dict()


def trial_dirs(stage_dir: Path) -> list[Path]:
    """The stage's trial folders that a searcher proposed (they hold params.json), in name order."""
    root = stage_dir / "trials"
    return sorted(p for p in root.iterdir() if (p / "params.json").is_file()) if root.is_dir() else []


def last_report(trial_dir: Path) -> dict[str, Any] | None:
    """What a searcher learns from an ended trial: its last report (None: it failed or never reported)."""
    status = results.read_status(trial_dir)
    if status is None or status.status == results.TrialStatus.FAILED:
        return None
    rows = results.read_metrics(trial_dir)
    return rows[-1].model_dump() if rows else None


def check_runnable(spec: ExperimentSpec, local: bool) -> None:
    """What the file's schema can't know: the optional packages it asks for are installed, and with
    ``--local`` no stage needs Ray's schedulers. Before anything is written."""
    require_optional_packages(spec)
    if local:
        refuse_ray_only_schedulers(spec)


def require_optional_packages(spec: ExperimentSpec) -> None:
    """The optional extras the experiment asks for are installed (before any trial starts)."""
    import importlib.util

    from aavs.orchestrator.experiment.trackers import require_installed

    require_installed(spec)
    for i, stage in enumerate(spec.stages):
        missing = [m for m in ("GPy", "sklearn") if importlib.util.find_spec(m) is None]
        if stage.tune.scheduler_name == "pb2" and missing:
            raise InputError(
                f"stages.{i}.tune.scheduler ({stage.name}): pb2 needs {missing}, which are not installed; "
                "pip install 'aavs[pb2]' (or use scheduler: pbt)"
            )


def refuse_ray_only_schedulers(spec: ExperimentSpec) -> None:
    for i, stage in enumerate(spec.stages):
        if stage.tune.scheduler != "fifo":
            raise InputError(
                f"stages.{i}.tune.scheduler ({stage.name}): {stage.tune.scheduler_name} stops or mutates trials while "
                "others run, which needs Ray; run without --local, or use scheduler: fifo"
            )


def pick_best(stage: StageSpec, stage_dir: Path, data_root: Path) -> results.BestTrial:
    """The trial with the best value of the stage's metric among those with a best checkpoint; with
    ``repeats``, the best seed of the configuration with the best mean."""
    candidates = []
    for trial_dir in trial_dirs(stage_dir):
        metrics = results.read_checkpoint_metrics(trial_dir / checkpointing.BEST)
        if metrics and stage.tune.metric in metrics:
            params = results.read_params(trial_dir) or {}
            candidates.append((metrics[stage.tune.metric], trial_dir.name, trial_dir, params))
    if not candidates:
        raise StageFailed(f"stage {stage.name}: no trial produced a checkpoint (see the trials' status.json)")
    sign = -1.0 if stage.tune.mode == "max" else 1.0
    groups: dict[str, list[float]] = {}
    for value, _, _, params in candidates:
        groups.setdefault(configuration_key(params), []).append(value)
    mean = {key: statistics.fmean(values) for key, values in groups.items()}
    value, trial_id, trial_dir, params = min(
        candidates, key=lambda c: (sign * mean[configuration_key(c[3])], sign * c[0], c[1])
    )
    checkpoint = trial_dir / checkpointing.BEST
    repeats = groups[configuration_key(params)]
    return results.BestTrial(
        stage=stage.name,
        trial_id=trial_id,
        metric=stage.tune.metric,
        mode=stage.tune.mode,
        value=value,
        checkpoint=str(checkpoint),
        checkpoint_sha256=checkpoint_digest(checkpoint),
        params=params,
        data_root=str(data_root),
        repeats=len(repeats),
        configuration_mean=mean[configuration_key(params)],
        configuration_std=statistics.stdev(repeats) if len(repeats) > 1 else 0.0,
    )


def checkpoint_digest(checkpoint: Path) -> str:
    return file_sha256(Path(checkpoint) / "model.safetensors")


def ray_node_id() -> str | None:
    """The id of the Ray node this process runs on; None outside Ray."""
    if "ray" not in sys.modules:
        return None
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def record_node(trial_dir: str) -> None:
    """``node.json`` in the trial folder: which node ran it (a stage's ``resources`` decide where)."""
    results.write_node(trial_dir, ray_node_id())


def masks_ready(out: Path, checkpoint: str) -> bool:
    """The masks folder is complete and exported from ``checkpoint`` (else it is exported again)."""
    from aavs.orchestrator.experiment.repair import masks_problem

    done = results.read_masks_success(out)
    if done is None or done.checkpoint_sha256 != checkpoint_digest(Path(checkpoint)):
        return False
    return masks_problem(out) is None


def export_stage_masks(
    checkpoint: str, data_root: str, out: str, vggish: str | None, vggish_pca: str | None, cache: str
) -> str:
    """Write the masks into a temporary folder, then rename it: ``out`` is complete or absent."""
    from aavs.orchestrator.recipe.evaluation import export_masks

    out_path = Path(out)
    if masks_ready(out_path, checkpoint):
        return out
    for stale in out_path.parent.glob(f".{out_path.name}.*.tmp"):  # an export killed mid-way (atomic_dir)
        shutil.rmtree(stale, ignore_errors=True)
    with atomic.atomic_dir(out_path) as tmp:
        scores = export_masks(checkpoint, data_root, tmp, vggish=vggish, vggish_pca=vggish_pca, cache_dir=cache)
        results.write_masks_success(
            tmp,
            results.MasksRecord(
                checkpoint=checkpoint,
                scores=scores,
                node_id=ray_node_id(),
                checkpoint_sha256=checkpoint_digest(Path(checkpoint)),
                files=results.folder_files(tmp),
            ),
        )
    return out


def evaluate_stage_checkpoint(
    checkpoint: str,
    data_root: str,
    task: str,
    prior: str | None,
    vggish: str | None,
    vggish_pca: str | None,
    cache: str,
) -> dict[str, float]:
    from aavs.orchestrator.recipe.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(
        checkpoint,
        data_root,
        task=task,
        split="test",
        prior=prior,
        vggish=vggish,
        vggish_pca=vggish_pca,
        cache_dir=cache,
    )


# ---------------------------------------------------------------------------------------- runners
class LocalRunner:
    """``--local``: trials one after another in this process (no Ray). Schedulers do not apply.

    ``quiet``: a trial's or task's output goes to its log file only (see aavs.orchestrator.recipe.output_capture);
    otherwise also to this terminal. A trial that fails is reported by the live view (its status.json).
    Tasks use ``cpus`` torch threads, as a Ray task given that many CPUs would (``cpu_threads``).
    """

    def __init__(self, spec: ExperimentSpec, results_dir: Path, quiet: bool = True) -> None:
        self.spec, self.results_dir = spec, results_dir
        self.quiet, self.cpus = quiet, spec.compute.cpus_per_worker

    def run_search(self, stage: StageSpec, base: dict[str, Any], stage_dir: Path) -> None:
        """The stage's searcher driven here (aavs.orchestrator.experiment.search.drive_locally): the
        same proposals, in the same order and with the same names, as under Ray with one trial at a time."""
        from aavs.orchestrator.experiment.search import drive_locally, make_searcher
        from aavs.orchestrator.experiment.trackers import log_local_trial
        from aavs.orchestrator.recipe.train import TrainingDiverged, TrialStopped, train_func

        base = {**base, "stop_file": str(self.results_dir / results.STOP_FILE)}

        def run(name: str, suggestion: dict[str, Any]) -> dict[str, Any] | None:
            config = trial_config(base, stage_dir, suggestion)
            trial_dir = Path(config["trial_dir"])
            if not results.trial_status(trial_dir).ended:
                log.debug("stage %s: trial %s", stage.name, name)
                try:
                    _logged_trial(str(trial_dir), self.quiet, train_func, config)
                except TrainingDiverged:
                    pass  # status.json says so; the search goes on with the other trials
                except TrialStopped:
                    raise stopping.ExperimentStopped(self.results_dir) from None
                log_local_trial(self.spec, stage, self.results_dir, trial_dir)
            return last_report(trial_dir)

        for _ in drive_locally(make_searcher(stage), run):
            pass

    def export_masks(self, checkpoint, data_root, out, spec, cache, resources=None, log_file=None) -> Path:
        return Path(
            self.call(
                export_stage_masks,
                checkpoint,
                str(data_root),
                str(out),
                spec.model.vggish,
                spec.model.vggish_pca,
                str(cache),
                resources=resources,
                log_file=log_file,
            )
        )

    def evaluate(
        self, checkpoint, data_root, task, prior, spec, cache, resources=None, log_file=None
    ) -> dict[str, float]:
        return self.call(
            evaluate_stage_checkpoint,
            checkpoint,
            str(data_root),
            task,
            prior,
            spec.model.vggish,
            spec.model.vggish_pca,
            str(cache),
            resources=resources,
            log_file=log_file,
        )

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        resources: dict[str, float] | None = None,
        log_file: Path | None = None,
        cpus: float | None = None,
    ) -> Any:
        """``fn(*args)`` where this runner runs its tasks (here: in this process), output in ``log_file``,
        on ``cpus`` (default: one worker's)."""
        return _logged_call(str(log_file) if log_file else None, self.quiet, cpus or self.cpus, fn, *args)

    def node_cpus(self) -> float:
        """The CPUs of the largest machine a task can run on (here: this one)."""
        return float(os.cpu_count() or 1)


def _logged_call(log_file: str | None, quiet: bool, cpus: float, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on ``cpus`` torch threads, with its output in ``log_file`` (None: where it goes anyway)."""
    with cpu_threads(cpus), captured(log_file, quiet) if log_file else contextlib.nullcontext():
        return fn(*args)


def _retrain(trial_dir: str, config: dict[str, Any], quiet: bool) -> None:
    from aavs.orchestrator.recipe.train import TrainingDiverged, train_func

    with contextlib.suppress(TrainingDiverged):  # status.json says so
        _logged_trial(trial_dir, quiet, train_func, config)


def _logged_trial(trial_dir: str, quiet: bool, fn: Callable[..., Any], *args: Any, rank: int = 0) -> Any:
    """``fn(*args)`` with its output in the trial's log (of ``rank``); a failure also marks the trial failed."""
    with captured(trial_log(trial_dir, rank), quiet):
        try:
            return fn(*args)
        except Exception as err:
            if rank == 0:
                mark_failed(trial_dir, err)
            raise


def ray_init_kwargs(quiet: bool) -> dict[str, Any]:
    """``ray.init``'s arguments for ``aavs run``: a Ray of its own on 127.0.0.1, or the cluster that
    ``RAY_ADDRESS`` names (aavs.orchestrator.ray_local). Workers' output stays in their log files
    (quiet); a Ray we join keeps its own setting, and the trials redirect their output themselves
    (output_capture.captured)."""
    from aavs.orchestrator.ray_local import local_ray_kwargs

    return {"log_to_driver": not quiet, "configure_logging": False, **local_ray_kwargs()}


class RayRunner(LocalRunner):
    """Each stage a Ray Tune ``Tuner``; a trial with several workers runs a Ray Train ``TorchTrainer``.

    A single-worker trial runs ``train_func`` directly as the Tune function trial: a nested Train
    run would add ~25 s of fixed cost per trial for nothing. Mask export and test evaluation run as
    one Ray task each, with the resources of one worker.
    """

    def __init__(self, spec: ExperimentSpec, results_dir: Path, quiet: bool = True):
        import ray

        super().__init__(spec, results_dir, quiet)
        # Tune's console output off (with verbose=0, its new engine still prints a header per
        # stage): the live view (aavs.orchestrator.views.live) shows the trials instead.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        if not ray.is_initialized():
            ray.init(**ray_init_kwargs(quiet))

    def _task_options(self, resources: dict[str, float] | None) -> dict[str, Any]:
        c = self.spec.compute
        return {"num_cpus": c.cpus_per_worker, "num_gpus": c.gpus_per_worker, "resources": dict(resources or {})}

    def run_search(self, stage: StageSpec, base: dict[str, Any], stage_dir: Path) -> None:
        """The stage as one Tune experiment under ``<stage>/tune``; an interrupted one is restored with
        its searcher's and scheduler's state (``Tuner.restore``): finished trials are not run again,
        unfinished ones continue from their last epoch (train_func resumes from the trial folder)."""
        from ray import tune

        from aavs.orchestrator.experiment.search import make_searcher, tune_space
        from aavs.orchestrator.experiment.trackers import tune_callbacks

        c = self.spec.compute
        launch = {
            "workers": c.workers_per_trial,
            "cpus": c.cpus_per_worker,
            "gpus": c.gpus_per_worker,
            "max_failures": c.max_failures,
            "storage": str(stage_dir / "train"),  # Ray Train runs of multi-worker trials
            "name": f"{stage.name}",
            "resources": stage.resources,
            "quiet": self.quiet,
        }
        if c.workers_per_trial == 1:
            trainable = tune.with_resources(
                tune_trial, {"cpu": c.cpus_per_worker, "gpu": c.gpus_per_worker, **stage.resources}
            )
        else:
            # The trial only drives a TorchTrainer whose workers hold the CPUs and GPUs. Ray refuses
            # an empty request, and any CPU held here would be missing from the workers' placement
            # group (a deadlock on a small machine): the trial asks for a token of memory instead.
            trainable = tune.with_resources(tune_trial, {"memory": 1 << 20})
        param_space: dict[str, Any] = {"base": base, "launch": launch, "stage_dir": str(stage_dir)}
        if stage.tune.pbt:
            # Population-based training: Tune takes no searcher with it, so its own variant generator
            # (seeded) samples the population from the real search space, and every report carries
            # the trial's training state for the exploits (TrainConfig.report_checkpoints).
            from ray.tune.search.basic_variant import BasicVariantGenerator

            # States are reported at the exploit interval only and all kept (Tune's num_to_keep deletes
            # states that an exploit still restores from).
            param_space.update(base={**base, "report_checkpoints": stage.tune.pbt.interval}, **tune_space(stage))
            search_alg: Any = BasicVariantGenerator(random_state=stage.tune.seed)
        else:
            search_alg = make_searcher(stage)
        # Tune saves its experiment state (searcher included) at most this often; a resume restarts
        # from the last save, so keep it short (the state of a few trials is small).
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
        experiment = stage_dir / "tune"
        callbacks = tune_callbacks(self.spec, stage, self.results_dir)  # (a restored Tuner has its own)
        if tune.Tuner.can_restore(experiment):
            log.info("stage %s: restoring the Tune experiment in %s", stage.name, experiment)
            tuner = tune.Tuner.restore(str(experiment), trainable, param_space=param_space)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=search_alg,
                    scheduler=_scheduler(stage),
                    # Tune's variant generator multiplies its grid by num_samples itself.
                    num_samples=stage.tune.num_samples if stage.tune.pbt else planned_trials(stage),
                    trial_dirname_creator=_tune_trial_dirname,
                    trial_name_creator=_tune_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=experiment.name,
                    storage_path=str(experiment.parent),
                    callbacks=callbacks,
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=c.max_failures),
                ),
            )
        with _without_tune_trial_tracebacks(self.quiet), stopping.interrupting_tune_on_request(self.results_dir):
            tuner.fit()
        if results.read_stop(self.results_dir) is not None:  # Tune ended the running trials: resumable
            _end_running_trials(stage_dir, results.TrialStatus.INTERRUPTED, "stopped on request")
            raise stopping.ExperimentStopped(self.results_dir)
        _end_running_trials(stage_dir, results.TrialStatus.STOPPED)  # what a scheduler stopped early
        self._train_repaired_trials(stage, stage_dir, launch)

    def _train_repaired_trials(self, stage: StageSpec, stage_dir: Path, launch: dict[str, Any]) -> None:
        """Trials Tune had finished whose folder a repair reset (aavs.orchestrator.experiment.repair):
        trained again with the config they ran with, outside the Tune experiment."""
        for trial_dir in trial_dirs(stage_dir):
            config = results.read_trial_config(trial_dir)
            if config is None or results.trial_status(trial_dir).ended:
                continue
            log.info("stage %s: training %s again", stage.name, trial_dir.name)
            if launch["workers"] == 1:
                self.call(_retrain, str(trial_dir), config, self.quiet, resources=stage.resources)
            else:
                _logged_trial(str(trial_dir), self.quiet, _run_trial, config, launch, trial_dir.name)

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        resources: dict[str, float] | None = None,
        log_file: Path | None = None,
        cpus: float | None = None,
    ) -> Any:
        """``fn(*args)`` as one Ray task with the resources of one worker (or ``cpus`` CPUs), output in
        ``log_file``."""
        import ray

        options = self._task_options(resources)
        if cpus:
            options["num_cpus"] = cpus
        task = ray.remote(_logged_call).options(**options)
        return ray.get(task.remote(str(log_file) if log_file else None, self.quiet, cpus or self.cpus, fn, *args))

    def node_cpus(self) -> float:
        """The CPUs of the largest alive node that also has one worker's GPUs."""
        import ray

        gpus = self.spec.compute.gpus_per_worker
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) >= gpus]
        return max((float(r.get("CPU", 0)) for r in nodes), default=0.0) or float(self.cpus)


def _end_running_trials(stage_dir: Path, status: results.TrialStatus, error: str | None = None) -> None:
    """After Tune's run: the trials whose status.json still says running end ``status``."""
    for trial_dir in trial_dirs(stage_dir):
        record = results.read_status(trial_dir)
        if record and record.status == results.TrialStatus.RUNNING:
            record.status, record.error = status, error or record.error
            results.write_status(trial_dir, record)


class _TrialTaskFailed(logging.Filter):
    """Tune's "Trial task failed" record: its traceback is in the trial's log, and the live view reports
    the failure once, with the log's last lines and its path."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Trial task failed")


@contextlib.contextmanager
def _without_tune_trial_tracebacks(quiet: bool) -> Iterator[None]:
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    drop = _TrialTaskFailed()
    if quiet:
        logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _scheduler(stage: StageSpec) -> Any:
    """Tune's trial scheduler for the stage (None: FIFO, every trial runs all its epochs)."""
    t = stage.tune
    if t.asha:
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            metric=t.metric,
            mode=t.mode,
            time_attr="training_iteration",
            max_t=stage.epochs,
            grace_period=t.asha.grace_period,
            reduction_factor=t.asha.reduction_factor,
        )
    if t.pbt and t.scheduler_name == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        from aavs.orchestrator.experiment.search import tune_space

        return PopulationBasedTraining(
            time_attr="training_iteration",
            metric=t.metric,
            mode=t.mode,
            perturbation_interval=t.pbt.interval,
            hyperparam_mutations=tune_space(stage),
            quantile_fraction=t.pbt.quantile,
            resample_probability=t.pbt.resample_probability,
        )
    if t.pbt:
        from ray.tune.schedulers.pb2 import PB2

        bounds = {k: next(iter(v.values())) for k, v in searched(stage.params).items() if next(iter(v)) in CONTINUOUS}
        return PB2(
            time_attr="training_iteration",
            metric=t.metric,
            mode=t.mode,
            perturbation_interval=t.pbt.interval,
            hyperparam_bounds=bounds,
            quantile_fraction=t.pbt.quantile,
        )
    return None


def _tune_trial_dirname(trial: Any) -> str:
    """Tune's name and folder (under ``<stage>/tune``) of a trial: the searcher's name, ``t000``; under
    Tune's own variant generator (population-based training), from the number it gives each trial."""
    return str(trial.config.get("trial") or trial_name(int(trial.experiment_tag.split("_", 1)[0])))


def tune_trial(config: dict[str, Any]) -> None:
    """A Ray Tune function trial: the searcher's proposal (``config``'s keys other than the stage's
    ``base``, ``launch`` and ``stage_dir``) made a training config, then one ``train_func`` run,
    direct or through a ``TorchTrainer``, its output in the trial's log."""
    import ray.tune

    launch = config["launch"]
    suggestion = {k: v for k, v in config.items() if k not in ("base", "launch", "stage_dir")}
    suggestion.setdefault("trial", Path(ray.tune.get_context().get_trial_dir()).name)
    train_config = trial_config(config["base"], Path(config["stage_dir"]), suggestion)
    _logged_trial(train_config["trial_dir"], launch["quiet"], _run_trial, train_config, launch, suggestion["trial"])


def _continue_from_exchanged_state(trial_dir: Path, checkpoint: Any) -> None:
    """Population-based training: a trial Tune (re)starts with another trial's checkpoint continues from
    that trial's whole training state; ``schedule.json`` records from which epoch which parameters held."""
    params = results.read_params(trial_dir) or {}
    schedule = results.read_schedule(trial_dir) or results.Schedule()
    origin = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            origin = checkpointing.adopt_exchanged_state(Path(folder), trial_dir)
    if origin is not None:
        schedule.spans.append(
            results.ScheduleEntry(from_epoch=origin["epoch"] + 1, params=params, exploited=origin["trial"])
        )
        log.info("%s continues from %s after its epoch %d", trial_dir.name, origin["trial"], origin["epoch"] + 1)
    elif not schedule.spans:
        schedule.spans.append(results.ScheduleEntry(from_epoch=0, params=params))
    results.write_schedule(trial_dir, schedule)


def _run_trial(train_config: dict[str, Any], launch: dict[str, Any], trial_id: str) -> None:
    from aavs.orchestrator.recipe.train import train_func

    if launch["workers"] == 1:
        record_node(train_config["trial_dir"])
        if train_config["report_checkpoints"]:
            import ray.tune

            _continue_from_exchanged_state(Path(train_config["trial_dir"]), ray.tune.get_checkpoint())
        train_func(train_config)
        return
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = TorchTrainer(
        functools.partial(_train_func_recording_node, quiet=launch["quiet"]),
        train_loop_config=train_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=launch["workers"],
            use_gpu=launch["gpus"] > 0,
            resources_per_worker={
                "CPU": launch["cpus"],
                **({"GPU": launch["gpus"]} if launch["gpus"] else {}),
                **launch["resources"],
            },
        ),
        run_config=ray.train.RunConfig(
            name=f"{launch['name']}-{trial_id}",
            storage_path=launch["storage"],
            failure_config=ray.train.FailureConfig(max_failures=launch["max_failures"]),
            callbacks=[TuneReportCallback()],
        ),
    )
    try:
        trainer.fit()
    except Exception as err:
        # Seen on 2 CPUs: Ray Train's controller actor is destroyed with its placement group after
        # the workers finished, and fit() raises ActorDiedError although every epoch was trained,
        # reported and saved. A trial whose status.json says done keeps its results.
        status = results.read_status(train_config["trial_dir"])
        if status is None or status.status != results.TrialStatus.DONE:
            raise
        log.warning("%s: Ray Train ended with %s after the trial finished; its results are complete", trial_id, err)


def _train_func_recording_node(config: dict[str, Any], quiet: bool = True) -> dict[str, Any]:
    """``train_func`` on a Ray Train worker, output in the trial's log of its rank; rank 0 records its node."""
    import ray.train

    from aavs.orchestrator.recipe.train import train_func

    rank = ray.train.get_context().get_world_rank()
    if rank == 0:
        record_node(config["trial_dir"])
    return _logged_trial(config["trial_dir"], quiet, train_func, config, rank=rank)
