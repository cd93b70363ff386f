"""``aavs run`` and ``aavs resume``: the stages of an experiment, one after the other.

For each stage: sample its trials (deterministically), run them (Ray Tune, or in this process with
``--local``), pick the best trial by the stage's metric, export that checkpoint's masks when a later
stage uses them as its prior, evaluate it on the test split, and record ``best.json``. Everything goes
under ``results/<name>/``; every file's record, reader and writer is in :mod:`aavs.orchestrator.results`,
whose docstring lists the folder's layout.

A stage whose inputs are unchanged since it completed is not run again; an interrupted stage picks up
where it stopped (finished trials are kept, running ones resume from their last epoch).

On a cluster the results folder must be storage that every node sees at the same path (NFS, EFS, a
mounted bucket): trials on one node write checkpoints that a task on another reads, and stage two's
trials read the masks stage one exported. Object-store URIs (s3://...) are refused: everything here is
read and written as files.

The modules it drives, in the order a stage meets them: :mod:`.preparation` (checks, data, embeddings,
base), on Ray :mod:`.node_check` (every node that runs trials sees this data root and results folder),
:mod:`.stage_state` (inputs, "unchanged", supersession), :mod:`.trial_config`, a runner (:mod:`.runners`),
:mod:`.selection` (the best trial), :mod:`.stage_tasks` (masks, test), :mod:`.notify`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from aavs.datasets import atomic
from aavs.datasets.errors import InputError
from aavs.orchestrator import results
from aavs.orchestrator.experiment import lock, notify, repair, stopping
from aavs.orchestrator.experiment.node_check import check_nodes
from aavs.orchestrator.experiment.preparation import (
    check_runnable,
    check_writable,
    precompute_embeddings,
    prepare_base,
    prepare_data,
)
from aavs.orchestrator.experiment.runners.base import Runner
from aavs.orchestrator.experiment.search_space import planned_trials
from aavs.orchestrator.experiment.selection import pick_best
from aavs.orchestrator.experiment.spec import ExperimentSpec, StageSpec, load_spec, parse_spec, spec_hash
from aavs.orchestrator.experiment.stage_state import begin_stage, completed_best, stage_inputs
from aavs.orchestrator.experiment.stage_tasks import (
    StageTask,
    evaluate_stage_checkpoint,
    export_stage_masks,
    masks_ready,
)
from aavs.orchestrator.experiment.trial_config import base_trial_config
from aavs.orchestrator.recipe.output_capture import task_log

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)


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
    results_dir = check_runnable(spec, local, results_root)
    with lock.held(results_dir, force=force):
        _settle_killed_writes(results_dir)
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
    folder = results.results_path(results_dir)
    spec_file = folder / results.SPEC_YAML
    if not spec_file.is_file():
        raise InputError(f"{folder}: not an experiment results folder (no spec.yaml); start it with `aavs run`")
    check_writable(folder)  # before the lock, its first write (check_runnable repeats it)
    with lock.held(folder, force=force):
        _settle_killed_writes(folder)
        results.open_results(folder, "resume")
        spec = parse_spec(yaml.safe_load(spec_file.read_text(encoding="utf-8")), str(spec_file))
        if local is None:
            local = started_mode(folder) == "local"
        check_runnable(spec, local, folder.parent)
        results.clear_stop(folder)
        log.info("resuming %s %s", folder, "in this process (--local)" if local else "on Ray")
        with stopping.stop_on_ctrl_c(folder):
            run_stages(spec, folder, local=local, console=console, verbose=verbose)
    return folder


def _settle_killed_writes(results_dir: Path) -> None:
    """What a process killed while writing left under the results folder (its own cache included):
    half-done folder commits finished, staging files removed (aavs.datasets.atomic.sweep)."""
    for path in atomic.sweep(results_dir):
        log.info("finished or removed what a killed write left at %s", path)


def started_mode(results_dir: Path) -> str:
    """ "local" or "ray": how the experiment was started (folders older than run.json: Ray)."""
    recorded = results.read_run(results_dir)
    return recorded.mode if recorded else "ray"


def _save_spec(results_dir: Path, spec: ExperimentSpec) -> None:
    """The resolved spec: every default filled in, paths absolute (``aavs resume`` reads it back)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(results_dir / results.SPEC_YAML, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    results.write_spec(results_dir, spec.to_dict(), spec_hash(spec.to_dict()))


def make_runner(spec: ExperimentSpec, results_dir: Path, local: bool, quiet: bool) -> Runner:
    """Trials in this process (``--local``) or on Ray."""
    if local:
        from aavs.orchestrator.experiment.runners.local import LocalRunner  # here, not at the top: Ray's Tune

        return LocalRunner(spec, results_dir, quiet)
    from aavs.orchestrator.experiment.runners.ray import RayRunner  # here, not at the top: Ray's Tune

    return RayRunner(spec, results_dir, quiet)


# ----------------------------------------------------------------------------------------- stages
def run_stages(
    spec: ExperimentSpec, results_dir: Path, local: bool, console: Console | None = None, verbose: bool = False
) -> dict[str, results.BestTrial]:
    """Every stage, while the live view follows the results folder (:mod:`.notify`). Trials and tasks
    write their output into their log files (aavs.orchestrator.recipe.output_capture), with ``verbose``
    also where it went before (Ray forwards it to this terminal)."""
    with notify.watching(results_dir, console):
        return _run_stages(spec, results_dir, local, quiet=not verbose)


def _run_stages(spec: ExperimentSpec, results_dir: Path, local: bool, quiet: bool) -> dict[str, results.BestTrial]:
    data_root = prepare_data(spec, results_dir)
    runner = make_runner(spec, results_dir, local, quiet)
    if not local:  # every node that runs trials sees this data and this results folder (node_check.py)
        check_nodes(spec, data_root, results_dir)
    cache = results_dir / results.CACHE_DIR
    precompute_embeddings(spec, data_root, cache)
    inputs_spec, spec = spec, prepare_base(spec, results_dir, runner)  # stage inputs name the pretrain settings
    stages = _StageRun(spec, results_dir, data_root, cache, runner)
    reported = False
    for stage in spec.stages:
        stage_dir = results_dir / stage.name
        inputs = stage_inputs(inputs_spec, stage, data_root, stages.bests)
        digest = spec_hash(inputs)
        repaired = bool(repair.repair_stage(stage_dir))  # what an older crash or a bad disk left
        best = completed_best(stage_dir, digest, repaired)
        if best is not None:
            log.info("stage %s: unchanged since it completed; skipping", stage.name)
            stages.keep(stage, best)
            continue
        begin_stage(stage_dir, digest, inputs, repaired)
        stages.run(stage, digest)
        reported = True
    if not reported:  # every stage was complete: bring a report a killed run left half-written up to date
        notify.stage_ended(results_dir)
    return stages.bests


class _StageRun:
    """What the stage loop carries from stage to stage: the best trials so far, and how tasks run."""

    def __init__(self, spec: ExperimentSpec, results_dir: Path, data_root: Path, cache: Path, runner: Runner) -> None:
        self.spec, self.results_dir, self.data_root, self.cache = spec, results_dir, data_root, cache
        self.runner = runner
        self.bests: dict[str, results.BestTrial] = {}
        self.needs_masks = {s.prior for s in spec.stages if s.prior}

    def run(self, stage: StageSpec, digest: str) -> None:
        """The stage's trials, then its best trial's masks and test metrics, ``best.json`` and ``done.json``."""
        stage_dir = self.results_dir / stage.name
        base = base_trial_config(self.spec, stage, self.data_root, self.cache, self.bests)
        log.info("stage %s: %d trials (%s search)", stage.name, planned_trials(stage), stage.tune.search)
        self.runner.run_search(stage, base, stage_dir)
        notify.trials_ended(self.results_dir)
        best = pick_best(stage, stage_dir, self.data_root)
        if stage.name in self.needs_masks:
            best.masks = self.export(stage, best)
        best.test = self.runner.call(
            evaluate_stage_checkpoint,
            self.task(best),
            stage.task,
            self.bests[stage.prior].masks if stage.prior else None,
            best.checkpoint_sha256,
            str(results.stage_test_dir(stage_dir)),
            resources=stage.resources,
            log_file=task_log(stage_dir, "test"),
        )
        results.write_best(stage_dir, best)
        results.write_done(stage_dir, digest)
        self.bests[stage.name] = best
        notify.stage_ended(self.results_dir)
        log.info("stage %s: best trial %s, %s = %.4f", stage.name, best.trial_id, best.metric, best.value)

    def keep(self, stage: StageSpec, best: results.BestTrial) -> None:
        """A stage complete for its inputs: its masks made whole again if a later stage reads them."""
        stage_dir = self.results_dir / stage.name
        masks = Path(best.masks or stage_dir / results.MASKS_DIR)
        if stage.name in self.needs_masks and not masks_ready(masks, best.checkpoint):
            best.masks = self.export(stage, best)
            results.write_best(stage_dir, best)
        self.bests[stage.name] = best

    def task(self, best: results.BestTrial) -> StageTask:
        model = self.spec.model
        return StageTask(best.checkpoint, str(self.data_root), str(self.cache), model.vggish, model.vggish_pca)

    def export(self, stage: StageSpec, best: results.BestTrial) -> str:
        """The best checkpoint's masks of every split, a later stage's prior (complete or exported again)."""
        stage_dir = self.results_dir / stage.name
        out = stage_dir / results.MASKS_DIR
        if results.read_masks_success(out) is not None:
            problem = repair.masks_problem(out)
            if problem:
                log.warning("%s; exporting the masks again", problem)
        log_file = task_log(stage_dir, "masks")
        return str(
            self.runner.call(
                export_stage_masks, self.task(best), str(out), resources=stage.resources, log_file=log_file
            )
        )
