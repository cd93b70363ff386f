"""The videos and frames an experiment's stages read, for ``aavs estimate`` (:mod:`.estimate`): from the
data root's metadata, from the synthetic set the run would write, or from AVSBench's published counts.

Frames are counted as the recipe feeds them (:mod:`aavs.orchestrator.recipe.train`):

- training, per epoch: every worker's share of the epoch's videos (``epoch_videos``: the sampler's
  order for the seed and epoch, padded to a multiple of the workers, ``max_videos`` capping each share),
  each video contributing one item per ``source_frames(record, training=True)`` (v1s training videos:
  frame 0 five times);
- evaluation (validation each epoch, the test split once, stage one's mask export over every split
  of ``avss-binary``): every frame of every video (``source_frames(record, training=False)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aavs.datasets.avsbench import source_frames
from aavs.datasets.errors import InputError
from aavs.datasets.layout import (
    AVSBENCH_CLASSES,
    SPLITS,
    SUBSETS,
    VideoRecord,
    class_names,
    has_metadata,
    select_videos,
)
from aavs.datasets.tasks import get_task
from aavs.orchestrator.experiment.spec import ExperimentSpec, StageSpec
from aavs.orchestrator.recipe.config import Hyperparameters, TrainConfig

SHAPES = ("avsbench",)  # --shape: AVSBench's published counts (aavs.datasets.synth_shape.PUBLISHED_COUNTS)


@dataclass(frozen=True)
class Videos:
    """Where an estimate's videos come from: ``select(task, split)`` (as ``layout.select_videos``), the
    semantic network's classes, and a description for the sheet."""

    select: Callable[[str, str], list[VideoRecord]]
    classes: tuple[str, ...]
    source: str


def _selector(records: Sequence[VideoRecord]) -> Callable[[str, str], list[VideoRecord]]:
    """``layout.select_videos``'s rule over records in memory: the task's subsets in its order, each in
    the records' order."""

    def select(task: str, split: str) -> list[VideoRecord]:
        subsets = get_task(task).subsets
        return [r for subset in subsets for r in records if r.subset == subset and r.split == split]

    return select


def synthetic_records(videos_per_split: int, eval_videos_per_split: int | None) -> list[VideoRecord]:
    """The videos ``aavs.datasets.synth.write_synthetic_avsbench`` writes, in its metadata order."""
    counts = {s: videos_per_split if s == "train" else eval_videos_per_split or videos_per_split for s in SPLITS}
    return [
        VideoRecord(uid=f"syn-{subset}-{split}-{k:04d}", subset=subset, split=split)
        for subset in SUBSETS
        for split in SPLITS
        for k in range(counts[split])
    ]


def shape_records(shape: str) -> list[VideoRecord]:
    """The videos of a published shape (``avsbench``: AVSBench's releases, as ``aavs data synth --shape
    avsbench`` writes them at full scale)."""
    if shape not in SHAPES:
        raise InputError(f"--shape {shape}: expected one of {', '.join(SHAPES)}")
    from aavs.datasets.synth_shape import published_shape  # here, not at the top: it imports the drawing

    return published_shape(1.0)


def experiment_videos(spec: ExperimentSpec, shape: str | None) -> Videos:
    """The experiment's videos: ``--shape`` when given, else the synthetic set it writes, else its data
    root (which must exist here)."""
    if shape is not None:
        records = shape_records(shape)
        counts = ", ".join(
            f"{s} {'/'.join(str(sum(r.subset == s and r.split == p for r in records)) for p in SPLITS)}"
            for s in SUBSETS
        )
        return Videos(_selector(records), AVSBENCH_CLASSES, f"AVSBench's published counts (train/val/test: {counts})")
    if spec.data.synthetic is not None:
        from aavs.datasets.synth import CLASS_NAMES  # here, not at the top: it imports soundfile and PIL

        synthetic = spec.data.synthetic
        records = synthetic_records(synthetic.videos_per_split, synthetic.eval_videos_per_split)
        return Videos(_selector(records), CLASS_NAMES, f"the synthetic set the run writes ({len(records)} videos)")
    root = Path(spec.data.root or "")
    if not root.is_dir() or not has_metadata(root):
        raise InputError(
            f"data.root {root}: no data root with metadata here; give --shape avsbench to estimate with "
            "AVSBench's published counts"
        )
    return Videos(lambda task, split: select_videos(root, task, split), _root_classes(root), f"data root {root}")


def _root_classes(root: Path) -> tuple[str, ...]:
    """The root's label2idx.json classes; AVSBench-object's layout has none (binary tasks only)."""
    try:
        return class_names(root)
    except InputError:
        return AVSBENCH_CLASSES


def evaluation_frames(records: Sequence[VideoRecord]) -> int:
    """Frames an evaluation pass runs: every frame of every video."""
    return sum(len(source_frames(r, training=False)) for r in records)


def stage_seed(stage: StageSpec) -> int:
    """The stage's training seed (a searched one: the default's, as its first trial may not use)."""
    seed = stage.params.get("seed", Hyperparameters().seed)
    return seed if isinstance(seed, int) else Hyperparameters().seed


def training_frames(records: Sequence[VideoRecord], stage: StageSpec, workers: int) -> list[int]:
    """Frames the training loaders of a trial's ``workers`` feed in each epoch (module docstring)."""
    from aavs.orchestrator.recipe.train import epoch_videos  # here, not at the top: it imports torch

    config = TrainConfig(
        task=stage.task,
        data_root="",
        trial_dir="",
        shuffle=stage.shuffle,
        seed=stage_seed(stage),
        max_videos=stage.max_videos,
    )
    items = [len(source_frames(r, training=True)) for r in records]
    dataset = cast(Any, records)  # epoch_videos reads its length only

    def frames(epoch: int) -> int:
        return sum(items[i] for rank in range(workers) for i in epoch_videos(config, dataset, epoch, workers, rank))

    # Only a shuffled order that is cut (max_videos) or padded (to a multiple of the workers) changes
    # which videos an epoch feeds; otherwise every epoch feeds the same.
    varies = stage.shuffle and (stage.max_videos is not None or len(records) % workers != 0)
    return [frames(epoch) for epoch in range(stage.epochs)] if varies else [frames(0)] * stage.epochs
