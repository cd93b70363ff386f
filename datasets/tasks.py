"""The tasks, in one place: which videos a task reads, what its network predicts, and its training defaults.

A task (docs/method.md §1, §4) is a property of the data first: which AVSBench subsets it reads and
whether its labels are background / sounding or the data's classes. The network, the metric, the
mask files and the reference's training recipe all follow from these attributes, so every module asks
this registry (:func:`get_task`) instead of comparing task names. Adding a task is one entry in
:data:`TASKS`.

| task | subsets | labels | prior | training order | phase A | grad clip |
| --- | --- | --- | --- | --- | --- | --- |
| s4 | v1s | background / sounding | no | shuffled | 1/2 | 0.01 |
| ms3 | v1m | background / sounding | no | shuffled | 1/2 | 0.01 |
| avss-binary (stage one) | v1s, v1m, v2 | background / sounding | no | shuffled | 1/2 | 0.01 |
| avss (stage two) | v1s, v1m, v2 | the data's label2idx.json | yes | file order | 1/3 | none |
"""

from __future__ import annotations

from dataclasses import dataclass

from aavs.datasets.errors import InputError

# The class list of every binary task's network and masks (index 1 = any sounding source).
BINARY_CLASSES = ("background", "sounding")


@dataclass(frozen=True)
class Task:
    """One task's data, labels and the reference's training defaults for it.

    ``semantic``: the labels are the classes of the data's label2idx.json (background first) rather
    than :data:`BINARY_CLASSES`. ``takes_prior``: the network takes stage one's sounding masks as a
    prior. ``standalone``: a task a user names on its own in ``model-info`` and ``import-checkpoint``;
    ``avss-binary`` only exists as stage one of Stepping Stones (its network is the one of s4 and ms3).
    ``skip_empty_subsets``: subsets whose training videos with all-empty masks make no optimiser step
    (the reference's loss for such a v1m video has no graph; docs/method.md §4).

    The last three are the reference's recipe for the task (docs/method.md §4), the defaults of a
    stage's training config: ``shuffle`` (a new video order every epoch, else v1s, v1m, v2 in file
    order), ``adapter_warmup`` (the fraction of the epochs in phase A) and ``grad_clip`` (max gradient
    norm, None for none).
    """

    name: str
    subsets: tuple[str, ...]
    semantic: bool
    takes_prior: bool
    description: str
    standalone: bool = True
    skip_empty_subsets: tuple[str, ...] = ()
    shuffle: bool = True
    adapter_warmup: float = 0.5
    grad_clip: float | None = 0.01

    @property
    def binary(self) -> bool:
        """Background / sounding labels: argmax of two scores, the binary AVSBench metrics, 0/255 masks."""
        return not self.semantic


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("s4", ("v1s",), semantic=False, takes_prior=False, description="single sound source, binary"),
        Task(
            "ms3",
            ("v1m",),
            semantic=False,
            takes_prior=False,
            description="multiple sound sources, binary",
            skip_empty_subsets=("v1m",),
        ),
        Task(
            "avss-binary",
            ("v1s", "v1m", "v2"),
            semantic=False,
            takes_prior=False,
            description="Stepping Stones stage one: where the sound is, binary",
            standalone=False,
            skip_empty_subsets=("v1m",),
        ),
        Task(
            "avss",
            ("v1s", "v1m", "v2"),
            semantic=True,
            takes_prior=True,
            description="Stepping Stones stage two: what sounds, the data's classes, with stage one's masks",
            shuffle=False,
            adapter_warmup=1 / 3,
            grad_clip=None,
        ),
    )
}

# The binary task over every subset: stage one's masks, stage two's prior, are predicted as this task.
MASK_EXPORT_TASK = "avss-binary"


def get_task(name: str) -> Task:
    """The task called ``name``; an InputError naming it and the known tasks otherwise."""
    task = TASKS.get(name) if isinstance(name, str) else None
    if task is None:
        raise InputError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    return task


def task_names(*, standalone_only: bool = False) -> tuple[str, ...]:
    """The tasks' names in registry order (``standalone_only``: those a user names on their own)."""
    return tuple(name for name, task in TASKS.items() if task.standalone or not standalone_only)


def same_kind(semantic: bool) -> tuple[str, ...]:
    """The tasks whose labels are semantic (or binary) like ``semantic``: what a network trained for
    one of them can be evaluated on."""
    return tuple(name for name, task in TASKS.items() if task.semantic == semantic)
