"""A stage's identity: the inputs it was run from, whether its completed results still stand for the
current ones, and what happens to results whose inputs changed (moved aside, never deleted)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from aavs.orchestrator import results
from aavs.orchestrator.experiment.spec import ExperimentSpec, StageSpec

log = logging.getLogger(__name__)


def stage_inputs(
    spec: ExperimentSpec, stage: StageSpec, data_root: Path, bests: dict[str, results.BestTrial]
) -> dict[str, Any]:
    """Everything a stage's results depend on; its hash decides "unchanged" (``inputs.json``)."""

    def upstream(name: str | None) -> str | None:
        return bests[name].checkpoint_sha256 if name else None

    placement = ("resources",)  # where a stage runs does not change what it computes
    c = spec.compute
    dumped = stage.model_dump(mode="json", exclude=set(placement))
    if dumped["params"].get("prior_train") == "ground-truth":  # added after format 2: left out at its default
        del dumped["params"]["prior_train"]
    return {
        "stage": dumped,
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


def completed_best(stage_dir: Path, digest: str, repaired: bool) -> results.BestTrial | None:
    """The stage's best trial if it completed for inputs of hash ``digest`` and nothing of it had to be
    repaired (None: it runs, or runs on)."""
    done = results.read_done(stage_dir)
    best = results.read_best(stage_dir)
    if done and done.inputs_hash == digest and best and not repaired:
        return best
    return None


def begin_stage(stage_dir: Path, digest: str, inputs: dict[str, Any], repaired: bool) -> None:
    """Before a stage's trials run: a repaired stage is no longer done; results of other inputs are
    moved aside (``<stage>.superseded-<hash>``); ``inputs.json`` names the inputs now."""
    if repaired:
        (stage_dir / results.DONE_FILE).unlink(missing_ok=True)
    old = results.read_inputs(stage_dir)
    if old and old.inputs_hash != digest:
        target = stage_dir.with_name(f"{stage_dir.name}.superseded-{old.inputs_hash}")
        log.warning("stage %s: its inputs changed; moving the earlier results to %s", stage_dir.name, target)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(stage_dir, target)
    results.write_inputs(stage_dir, digest, inputs)
