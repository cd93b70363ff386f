"""What a stage does with its best checkpoint, as tasks a runner runs where the stage's resources are:
export its masks of every split (a later stage's prior) and evaluate it on the test split (keeping
what the report draws).

A task takes one picklable argument, :class:`StageTask`: the checkpoint, the data and the audio
features it needs, so that the same call runs in this process (``--local``) or as a Ray task.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aavs.datasets import atomic
from aavs.models import registry
from aavs.orchestrator import results
from aavs.orchestrator.experiment.repair import masks_problem


@dataclass(frozen=True)
class StageTask:
    """One stage task's inputs (plain strings: it crosses to Ray workers)."""

    checkpoint: str
    data_root: str
    cache: str  # the audio embedding cache
    vggish: str | None = None
    vggish_pca: str | None = None


def ray_node_id() -> str | None:
    """The id of the Ray node this process runs on; None outside Ray."""
    if "ray" not in sys.modules:  # Ray is imported only where it runs: not imported, not in Ray
        return None
    import ray  # here, not at the top: it is imported already (above), and only then

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


@contextlib.contextmanager
def recording_node(trial_dir: str, rank: int = 0) -> Iterator[None]:
    """The rank's node record in the trial folder (``node.json``, rank N > 0 ``node.rankN.json``) around
    its training: which node ran it (a stage's ``resources`` decide where), the GPU ids Ray assigned to
    this process and the ``CUDA_VISIBLE_DEVICES`` it saw (Ray Train shows a worker every GPU its node's
    workers hold), its process group's backend, when it started and, once it ended (or raised), when,
    and where accelerate computed."""
    import ray  # here, not at the top: a Ray trial or worker has imported it already
    import torch.distributed as dist  # likewise (train_func's torch)

    placement: dict[str, Any] = {
        "rank": rank,
        "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()] if ray.is_initialized() else [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "backend": str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None,
        "start": time.time(),
    }
    results.write_node(trial_dir, ray_node_id(), **placement)
    try:
        yield
    finally:
        results.write_node(trial_dir, ray_node_id(), **placement, **_accelerate_placement(), end=time.time())


def _accelerate_placement() -> dict[str, str]:
    """The device and distributed type of this process's accelerate state ({} before its first
    Accelerator). Read from the state every Accelerator of the process shares, without making one: a
    ``PartialState()`` made here would initialise it."""
    from accelerate.state import PartialState  # here, not at the top: it imports torch

    shared = PartialState._shared_state
    if "device" not in shared:
        return {}
    return {"device": str(shared["device"]), "distributed": shared["distributed_type"].value}


def masks_ready(out: Path, checkpoint: str) -> bool:
    """The masks folder is complete and exported from ``checkpoint`` (else it is exported again)."""
    done = results.read_masks_success(out)
    if done is None or done.checkpoint_sha256 != registry.checkpoint_digest(checkpoint):
        return False
    return masks_problem(out) is None


def export_stage_masks(task: StageTask, out: str) -> str:
    """Write the masks into a temporary folder, then rename it: ``out`` is complete or absent."""
    from aavs.orchestrator.recipe.evaluation import export_masks  # here, not at the top: it imports torch

    out_path = Path(out)
    if masks_ready(out_path, task.checkpoint):
        return out
    for stale in out_path.parent.glob(f".{out_path.name}.*.tmp"):  # an export killed mid-way (atomic_dir)
        shutil.rmtree(stale, ignore_errors=True)
    with atomic.atomic_dir(out_path) as tmp:
        scores = export_masks(
            task.checkpoint, task.data_root, tmp, vggish=task.vggish, vggish_pca=task.vggish_pca, cache_dir=task.cache
        )
        results.write_masks_success(
            tmp,
            results.MasksRecord(
                checkpoint=task.checkpoint,
                scores=scores,
                node_id=ray_node_id(),
                checkpoint_sha256=registry.checkpoint_digest(task.checkpoint),
                files=results.folder_files(tmp),
            ),
        )
    return out


def evaluate_stage_checkpoint(
    task: StageTask, stage_task: str, prior: str | None, checkpoint_sha256: str, out: str
) -> dict[str, float]:
    """The checkpoint's metrics on the test split (with ``prior``: the earlier stage's masks), and in the
    same pass what the report draws (per-class scores, sample predictions) into ``out``."""
    from aavs.orchestrator.recipe.test_outputs import evaluate_test_split  # here, not at the top: it imports torch

    return evaluate_test_split(
        task.checkpoint,
        checkpoint_sha256,
        task.data_root,
        stage_task,
        out,
        prior=prior,
        vggish=task.vggish,
        vggish_pca=task.vggish_pca,
        cache_dir=task.cache,
    )
