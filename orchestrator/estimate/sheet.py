"""``aavs estimate``: what an experiment will cost, before it runs. ``aavs run --dry-run`` prints the
same sheet.

Per stage, with ``n`` trials (``planned_trials``), ``E`` epochs, ``R(e)`` trials training in epoch
``e`` (``n``, or ASHA's expectation: :mod:`.asha`), ``f(e)`` training frames of a trial in
epoch ``e`` and ``v`` validation frames (:mod:`.frames`), ``F_train[phase]`` and ``F_eval``
FLOPs per frame counted on the stage's network (:mod:`.flops`), phase A for the first
``floor(E * adapter_warmup)`` epochs of a model type with a warm-up::

    trial-epochs  = sum_e R(e)                            (share = trial-epochs / (n E))
    FLOPs         = sum_e R(e) (f(e) F_train[phase(e)] + v F_eval[phase(e)])
                  + test frames x F_eval + (stage one) mask-export frames x F_eval
    device-hours  = FLOPs / (peak x MFU) / 3600           (GPU-hours; CPU core-hours with --device cpu)

Wall time on ``N`` devices (:mod:`.devices`: a device is a GPU, or a CPU core with ``--device cpu``):
a trial holds ``d = workers_per_trial x gpus_per_worker`` devices (CPU: ``x cpus_per_worker``) and
trains at ``peak x MFU x d``; ``s = min(n, floor(N / d), max_concurrent or n)`` trials run at once
(``--local``: one). A trial that runs every epoch takes ``t = sum_e (f(e) F_train + v F_eval) /
(peak MFU d)`` plus the fixed costs below; FIFO and PBT take ``ceil(n / s)`` such rounds; ASHA's
trials differ in length, so ``max(t, work / s)`` with ``work`` its expected total. The stage's test
evaluation and mask export follow on one worker's devices. Once per run: the audio embeddings (VGGish
on the driver's CPU: one example per frame / the rate measured on this machine, once per host) and
``model.pretrain``'s base (steps x images x FLOPs per image on one node: all its CPU cores at the MFU
of its own step, or one worker's GPUs). Device-hours leave the driver's audio embeddings out.

Fixed costs (measured on this 2-core machine with the demo's tiny network; at full size they vanish
beside the compute): :data:`RAY_START_S` per run on Ray, :data:`STAGE_START_S` per stage,
:data:`TRIAL_START_S` per trial (a worker process, imports, the data set's construction, the network
built per phase), :data:`EPOCH_FIXED_S` per trial-epoch (saving ``checkpoints/last``, the loaders),
:data:`TASK_START_S` per stage task, :data:`RUN_END_S` and, for a synthetic set, :data:`SYNTH_S_PER_VIDEO`.

Checkpoints: a trial keeps ``checkpoints/last`` (``model/``, ``accelerate/optimizer.bin`` and small
files) and ``best/`` (:mod:`aavs.orchestrator.recipe.checkpointing`): 2 checkpoint folders + the
optimizer state of the phase it ended in + :data:`SMALL_FILES_BYTES`; the tensor bytes alone (weights
and AdamW's two moments and step per trained parameter) are exact. Under PBT/PB2 Tune also keeps a copy
of ``last`` and ``best`` every ``interval`` epochs. The search: the sum over its trials (ASHA: each by
the phase it is expected to stop in).

Loader: a GPU trains ``peak x MFU / F_train`` frames/s (the cheaper phase, the higher rate); a
DataLoader worker delivers :data:`~.devices.LOADER_FRAMES_PER_S_PER_WORKER` frames/s, so
``ceil(rate / that)`` workers per GPU keep it busy (``compute.loader_workers`` beside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aavs.datasets.tasks import MASK_EXPORT_TASK
from aavs.models.registry import get_model_type
from aavs.orchestrator import results
from aavs.orchestrator.estimate import asha as asha_math
from aavs.orchestrator.estimate import devices as dev
from aavs.orchestrator.estimate.flops import NetworkRequest, network_costs, pretraining_costs
from aavs.orchestrator.estimate.frames import (
    Videos,
    evaluation_frames,
    experiment_videos,
    training_frames,
)
from aavs.orchestrator.experiment.search_space import planned_trials
from aavs.orchestrator.experiment.spec import ExperimentSpec, StageSpec
from aavs.orchestrator.recipe.config import Hyperparameters

# Fixed costs, measured in `aavs run experiments/demo.yaml` on this 2-core machine (tiny network).
RAY_START_S = 20.0  # a local Ray's start (ray.init)
STAGE_START_S = 2.0  # a stage's Tune experiment, before its first trial
TRIAL_START_S = 9.5  # a trial in its slot: Tune's hand-over, the worker, the data set, the network per phase
EPOCH_FIXED_S = 0.5  # a trial-epoch's checkpoint save and loaders
TASK_START_S = 5.0  # a stage task (mask export, test evaluation) or the pre-training: its worker, data, checkpoint
RUN_END_S = 5.0  # the last report and the leaderboard, Ray's shutdown
SYNTH_S_PER_VIDEO = 0.06  # writing the synthetic set: 84 videos in 5 s
# The small files of a trial's checkpoints: trainer.json (576 bytes), best/metrics.json (85),
# accelerate/random_states_0.pkl (14,497) and rng_rank0.pt (15,733), as a demo trial wrote them.
SMALL_FILES_BYTES = 31_000
LARGEST = 10**6  # epochs, trials or synthetic videos per split beyond which nothing is estimated


@dataclass(frozen=True)
class Options:
    """The command line's choices (``aavs estimate`` and ``aavs run --dry-run``)."""

    device: dev.Device
    shape: str | None = None
    local: bool = False
    results_root: str | Path = "results"
    loader_fps: float = dev.LOADER_FRAMES_PER_S_PER_WORKER


def estimate(spec: ExperimentSpec, options: Options, source: str = "") -> dict[str, Any]:
    """The whole sheet: per stage, then once per run, then the totals (module docstring)."""
    check_size(spec)
    check_local(spec, options.local)
    for stage in spec.stages:  # a trial that fits nowhere is refused before any counting
        concurrent_trials(spec, stage, options.device, options.local)
    videos = experiment_videos(spec, options.shape)
    requests = [network_request(spec, stage, videos, options.results_root) for stage in spec.stages]
    costs = [network_costs(request) for request in requests]
    device = options.device
    if device.mfu is None:  # the CPU: measured on the first stage's network
        device = _measure_cpu_mfu(spec, device, requests[0], costs[0])
    needs_masks = {s.prior for s in spec.stages if s.prior}
    stages = [
        stage_estimate(spec, stage, videos, cost, device, options, stage.name in needs_masks)
        for stage, cost in zip(spec.stages, costs)
    ]
    once = once_per_run(spec, videos, device, options)
    total_flops = sum(s["flops"]["total"] for s in stages) + once["pretraining"]["flops"]
    return {
        "experiment": spec.name,
        "file": source,
        "data": videos.source,
        "device": device.to_json(),
        "stages": stages,
        "once": once,
        "total": {
            "trials": sum(s["trials"] for s in stages),
            "flops": total_flops,
            "device_hours": sum(s["device_hours"] for s in stages) + once["pretraining"]["device_hours"],
            "wall_s": sum(s["wall_s"] for s in stages) + once["wall_s"],
            "checkpoint_bytes": sum(s["checkpoints"]["search_bytes"] for s in stages),
            "checkpoint_tensor_bytes": sum(s["checkpoints"]["search_tensor_bytes"] for s in stages),
        },
        "notes": _notes(spec, device, options, costs),
    }


def check_size(spec: ExperimentSpec) -> None:
    """An :class:`InputError` naming the key of a size beyond :data:`LARGEST` (a valid file, too large
    to count through)."""
    from aavs.datasets.errors import InputError

    sizes = [(f"stages.{i}.epochs", s.epochs) for i, s in enumerate(spec.stages)]
    sizes += [(f"stages.{i}.tune (trials)", planned_trials(s)) for i, s in enumerate(spec.stages)]
    if spec.data.synthetic is not None:
        sizes.append(("data.synthetic.videos_per_split", spec.data.synthetic.videos_per_split))
        sizes.append(("data.synthetic.eval_videos_per_split", spec.data.synthetic.eval_videos_per_split or 0))
    for key, value in sizes:
        if value > LARGEST:
            raise InputError(f"{key} {value}: too large to estimate (at most {LARGEST:,})")


def check_local(spec: ExperimentSpec, local: bool) -> None:
    """``--local`` refuses what ``aavs run --local`` refuses: a scheduler that needs Ray."""
    from aavs.datasets.errors import InputError

    for i, stage in enumerate(spec.stages):
        if local and stage.tune.scheduler != "fifo":
            raise InputError(
                f"--local: stages.{i}.tune.scheduler ({stage.name}) is {stage.tune.scheduler_name}, which needs "
                "Ray; estimate without --local, or use scheduler: fifo"
            )


def network_request(spec: ExperimentSpec, stage: StageSpec, videos: Videos, results_root: str | Path) -> NetworkRequest:
    """What :func:`.flops.network_costs` builds for ``stage``: the classes are the data's (semantic tasks)."""
    from aavs.datasets.tasks import get_task

    base = spec.model.pretrained
    if spec.model.pretrain is not None:
        base = str((results.results_path(results_root) / spec.name / results.BASE_DIR).resolve())
    classes = videos.classes if get_task(stage.task).semantic else None
    return NetworkRequest(spec.model, stage.task, classes, stage.prior is not None, base)


def _measure_cpu_mfu(
    spec: ExperimentSpec, device: dev.Device, request: NetworkRequest, cost: dict[str, Any]
) -> dev.Device:
    """The CPU with its MFU measured on ``request``'s network in its last phase (most epochs are there)."""
    from aavs.orchestrator.estimate.flops import build_network

    network, _ = build_network(request)
    phase = "B" if "B" in cost["train_flops"] else "A"
    network.set_phase(phase)
    threads = max(1, round(spec.compute.cpus_per_worker))
    frames = 5  # a training step's batch: one v1s or v1m video
    return dev.with_measured_mfu(device, network, request.prior, frames, cost["train_flops"][phase], threads)


# ----------------------------------------------------------------------------------------- stages
def phase_a_epochs(spec: ExperimentSpec, stage: StageSpec) -> tuple[int, str | None]:
    """``floor(epochs * adapter_warmup)`` for a model type with a warm-up (else 0), and a note when the
    fraction is searched (its mean is used)."""
    if not get_model_type(spec.model.type).warmup:
        return 0, None
    value: Any = stage.params.get("adapter_warmup", Hyperparameters().adapter_warmup)
    note = None
    if isinstance(value, dict):
        kind, arg = next(iter(value.items()))
        value = (arg[0] + arg[1]) / 2 if kind in ("uniform", "loguniform") else sum(arg) / len(arg)
        note = f"stage {stage.name}: adapter_warmup is searched; priced at {value:.3g}"
    return math.floor(stage.epochs * float(value) + 1e-9), note


def trial_devices(spec: ExperimentSpec, device: dev.Device) -> float:
    """Devices one trial holds: its workers' GPUs (or CPU cores); a worker without any counts one."""
    c = spec.compute
    per_worker = c.cpus_per_worker if device.cpu else c.gpus_per_worker
    return c.workers_per_trial * (per_worker if per_worker > 0 else 1.0)


def concurrent_trials(spec: ExperimentSpec, stage: StageSpec, device: dev.Device, local: bool) -> int:
    """``min(trials, floor(N / d), max_concurrent)``; one with ``--local``."""
    from aavs.datasets.errors import InputError

    trials, d = planned_trials(stage), trial_devices(spec, device)
    fits = math.floor(device.count / d + 1e-9)
    if fits < 1:
        flag = "--gpus" if not device.cpu else "--gpus (CPU cores with --device cpu)"
        raise InputError(f"{flag} {device.count:g}: a trial of stage {stage.name} holds {d:g} {device.unit}s")
    slots = min(trials, fits, stage.tune.max_concurrent or trials)
    return 1 if local else slots


def stage_estimate(
    spec: ExperimentSpec,
    stage: StageSpec,
    videos: Videos,
    cost: dict[str, Any],
    device: dev.Device,
    options: Options,
    exports_masks: bool,
) -> dict[str, Any]:
    """One stage's part of the sheet (module docstring)."""
    from aavs.datasets.layout import SPLITS

    trials, epochs = planned_trials(stage), stage.epochs
    asha = (stage.tune.asha.grace_period, stage.tune.asha.reduction_factor) if stage.tune.asha else None
    running = asha_math.running_trials(trials, epochs, asha)
    phase_a, _ = phase_a_epochs(spec, stage)
    phases = ["A" if e < phase_a else "B" for e in range(epochs)]
    train = training_frames(videos.select(stage.task, "train"), stage, spec.compute.workers_per_trial)
    val = evaluation_frames(videos.select(stage.task, "val"))
    test = evaluation_frames(videos.select(stage.task, "test"))
    masks = sum(evaluation_frames(videos.select(MASK_EXPORT_TASK, s)) for s in SPLITS) if exports_masks else 0
    f_train, f_eval = cost["train_flops"], cost["eval_flops"]
    epoch_flops = [train[e] * f_train[p] + val * f_eval[p] for e, p in enumerate(phases)]
    flops = {
        "train": sum(r * train[e] * f_train[p] for e, (r, p) in enumerate(zip(running, phases))),
        "eval": sum(r * val * f_eval[p] for r, p in zip(running, phases)),
        "test": test * f_eval[phases[-1]],
        "mask_export": masks * f_eval[phases[-1]],
    }
    flops["total"] = sum(flops.values())
    d, slots = trial_devices(spec, device), concurrent_trials(spec, stage, device, options.local)
    full_trial = sum(epoch_flops) / device.rate(d) + TRIAL_START_S + epochs * EPOCH_FIXED_S
    if asha:
        work = sum(r * (f / device.rate(d) + EPOCH_FIXED_S) for r, f in zip(running, epoch_flops))
        trials_wall = STAGE_START_S + max(full_trial, (work + trials * TRIAL_START_S) / slots)
    else:
        trials_wall = STAGE_START_S + asha_math.waves(trials, slots) * full_trial
    worker = trial_devices(spec, device) / spec.compute.workers_per_trial
    tasks_wall = (flops["test"] + flops["mask_export"]) / device.rate(worker) + (1 + exports_masks) * TASK_START_S
    rate = device.rate(1) / min(f_train.values())  # frames/s of one device in the cheaper phase
    return {
        "name": stage.name,
        "task": stage.task,
        "trials": trials,
        "epochs": epochs,
        "scheduler": stage.tune.scheduler_name,
        "phase_a_epochs": phase_a,
        "trial_epochs": sum(running),
        "epoch_share": sum(running) / (trials * epochs),
        "devices_per_trial": d,
        "concurrent_trials": slots,
        "frames": {
            "train_per_epoch": sum(train) / epochs,
            "eval_per_epoch": val,
            "test": test,
            "mask_export": masks,
        },
        "flops_per_frame": {"train": f_train, "eval": f_eval},
        "flops": flops,
        "device_hours": flops["total"] / device.rate(1) / 3600,
        "wall_s": trials_wall + tasks_wall,
        "checkpoints": checkpoint_bytes(stage, cost, running, phases),
        "loader": {
            "frames_per_s_per_device": rate,
            "workers_needed_per_device": dev.loader_workers_needed(rate, options.loader_fps),
            "configured_per_worker": spec.compute.loader_workers,
        },
        "network": {
            "image_size": cost["image_size"],
            "params": cost["params"]["total"],
            "trainable_params": cost["params"]["trainable"],
            "counted_in_s": cost["seconds"],
        },
    }


def checkpoint_bytes(stage: StageSpec, cost: dict[str, Any], running: list[float], phases: list[str]) -> dict[str, Any]:
    """A full trial's checkpoint bytes (files and tensors) and the stage's: every trial by the phase it
    ends in, PBT's exchanged copies added."""

    def trial(phase: str, key: str) -> float:
        small = SMALL_FILES_BYTES if key == "file_bytes" else 0
        return 2 * cost["weights"][key] + cost["optimizer"][phase][key] + small

    copies = 1 + (stage.epochs // stage.tune.pbt.interval if stage.tune.pbt else 0)
    ended = asha_math.ended_by_epoch(running)
    return {
        "per_trial_bytes": trial(phases[-1], "file_bytes"),
        "per_trial_tensor_bytes": trial(phases[-1], "tensor_bytes"),
        "search_bytes": copies * sum(n * trial(p, "file_bytes") for n, p in zip(ended, phases)),
        "search_tensor_bytes": copies * sum(n * trial(p, "tensor_bytes") for n, p in zip(ended, phases)),
    }


# --------------------------------------------------------------------------------- once per run
def once_per_run(spec: ExperimentSpec, videos: Videos, device: dev.Device, options: Options) -> dict[str, Any]:
    """Before the first stage and after the last: Ray, the synthetic set, the audio embeddings,
    ``model.pretrain``'s base, the report."""
    from aavs.datasets.layout import SPLITS
    from aavs.orchestrator.estimate.flops import vggish_costs, vggish_rate

    all_videos = [r for split in SPLITS for r in videos.select("avss", split)]  # every subset
    examples = evaluation_frames(all_videos)  # one VGGish example per second, one frame per second
    rate = vggish_rate()["examples_per_s"]
    audio = {
        "examples": examples,
        "flops": examples * vggish_costs()["flops_per_example"],
        "wall_s": examples / rate,
        "rate_source": f"measured on this machine's CPU (cached per host): VGGish at {rate:.0f} examples/s",
    }
    pretraining = _pretraining(spec, device)
    ray = 0.0 if options.local else RAY_START_S
    synth = SYNTH_S_PER_VIDEO * len(all_videos) if spec.data.synthetic and options.shape is None else 0.0
    return {
        "ray_start_s": ray,
        "synthetic_data_s": synth,
        "audio_features": audio,
        "pretraining": pretraining,
        "end_s": RUN_END_S,
        "wall_s": ray + synth + audio["wall_s"] + pretraining["wall_s"] + RUN_END_S,
    }


def _pretraining(spec: ExperimentSpec, device: dev.Device) -> dict[str, Any]:
    """``model.pretrain``: its FLOPs and time on one node (all its CPU cores, or one worker's GPUs); on
    the CPU its MFU is measured on its own step, at its thread count."""
    from aavs.orchestrator.estimate.flops import time_pretraining_step

    settings, preset = spec.model.pretrain, spec.model.preset
    if settings is None or preset is None:
        return {"flops": 0.0, "wall_s": 0.0, "device_hours": 0.0}
    per_image = pretraining_costs(preset)["train_flops"]
    flops = settings.steps * settings.images_per_step * per_image
    node = min(device.count, _node_cpus()) if device.cpu else max(1.0, spec.compute.gpus_per_worker)
    mfu = device.mfu
    if device.cpu and device.mfu_source != "--mfu":
        seconds = time_pretraining_step(preset, settings.images_per_step, max(1, int(node)))
        mfu = per_image * settings.images_per_step / seconds / (device.peak * node)
    assert mfu is not None, "the device's MFU is known by now"
    seconds = flops / (device.peak * mfu * node)
    return {
        "flops": flops,
        "wall_s": seconds + TASK_START_S,
        "device_hours": seconds * node / 3600,
        "devices": node,
        "mfu": mfu,
    }


def _node_cpus() -> float:
    import os

    return float(os.cpu_count() or 1)


def _notes(spec: ExperimentSpec, device: dev.Device, options: Options, costs: list[dict[str, Any]]) -> list[str]:
    """What the sheet assumed where the experiment leaves it open."""
    notes = list(dict.fromkeys(c["assumed"] for c in costs if c.get("assumed")))
    notes += [note for stage in spec.stages if (note := phase_a_epochs(spec, stage)[1])]
    c = spec.compute
    if not device.cpu and c.gpus_per_worker == 0:
        notes.append("compute.gpus_per_worker is 0 (the CPU): priced at one GPU per worker")
    if not device.cpu and device.precision == "fp32" and device.peak_source != "--peak-tflops":
        bf16 = dev.PEAKS[device.name]["bf16"][0]
        notes.append(
            f"compute.mixed_precision no: float32, priced at its peak ({device.peak / 1e12:g} TFLOP/s); in bf16 "
            f"the matrix products run at {bf16 / 1e12:g} (--peak-tflops {bf16 / 1e12:g} prices that)"
        )
    if c.strategy == "deepspeed":
        notes.append("strategy deepspeed: priced as plain (its checkpoints hold the engine's own files besides)")
    if any(s.tune.asha for s in spec.stages):
        notes.append(
            "ASHA: the expected epochs if a trial's rank at a rung is independent of when it arrives; "
            "a searcher that improves (optuna, hyperopt) lets more trials run on"
        )
    if options.loader_fps == dev.LOADER_FRAMES_PER_S_PER_WORKER:
        notes.append(
            f"loader: {dev.LOADER_FRAMES_PER_S_PER_WORKER:g} frames/s per worker at {dev.LOADER_IMAGE_SIZE} "
            "from the frame store, as tests/benchmarks/bench_loader.py measured it on a ~106 MB/s disk with a "
            "cold page cache (docs/scale.md; --loader-fps for your nodes)"
        )
    return notes
