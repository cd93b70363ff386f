"""``train_func``: one stage of one trial, the same code for every launcher.

Called in-process (``aavs run --local``), by every worker of a Ray Train ``TorchTrainer``, or inside a
Ray Tune trial; it reads one plain ``config`` dict (see :class:`~aavs.orchestrator.recipe.config.TrainConfig`)
and writes its trial folder (``metrics.jsonl``, ``status.json``, ``checkpoints/last``, ``best``).

The recipe, as in docs/method.md §4:

1. data: AVSBench videos of the task, audio embeddings cached once, frames paired with their second;
2. phase A (first ``adapter_warmup`` of the epochs): audio projection, queries, decoder-side adapters
   and class head at ``lr``, Swin adapters held at zero;
3. phase B: a fresh model loads phase A's best weights, Swin adapters re-initialised and trainable,
   everything trainable at ``lr_b``;
4. after every epoch: val metrics, the best checkpoint by ``metric``, the full training state.

Killed at any point, it resumes from ``checkpoints/last`` and ends with the same weights as a run
that was never interrupted (the sampler is seeded by epoch; RNG states are part of the checkpoint).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from aavs.datasets import atomic
from aavs.datasets.avsbench import AVSBenchDataset, collate_videos
from aavs.datasets.frame_store import default_store_dir
from aavs.datasets.layout import class_names
from aavs.datasets.tasks import get_task
from aavs.models import registry
from aavs.models.protocol import SegmentationModel
from aavs.orchestrator import results
from aavs.orchestrator.recipe import checkpointing
from aavs.orchestrator.recipe.accelerator import adamw_kwargs, make_accelerator, release
from aavs.orchestrator.recipe.config import TrainConfig
from aavs.orchestrator.recipe.evaluation import evaluate, loss_targets, model_inputs, training_frames, weights_dtype
from aavs.orchestrator.recipe.reporter import EpochProgress, make_reporter
from aavs.orchestrator.recipe.threads import cpu_threads
from aavs.orchestrator.results import TrialStatus

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial stops and keeps its last good checkpoint."""


class TrialStopped(Exception):
    """``--local``: the trial ended on a stop request (``aavs stop``, Ctrl-C) after its current step;
    ``aavs resume`` trains the epoch in progress again (aavs.orchestrator.experiment.stopping)."""


def train_func(config: Mapping[str, Any]) -> dict[str, Any]:
    """Train one stage of one trial; returns the best metrics (also in ``status.json``)."""
    cfg = TrainConfig.load(config)
    with cpu_threads(cfg.compute.cpus_per_worker):
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    trial_dir = Path(cfg.trial_dir)
    rank, world = _rank_and_world()
    reporter = make_reporter(trial_dir, is_main=rank == 0, exchange=cfg.report_checkpoints)

    state = checkpointing.read_trainer_state(trial_dir)
    if rank == 0 and state is not None:
        _restore_epoch_report(trial_dir, state)
    if state is not None and state.epoch >= cfg.epochs - 1:
        log.info("%s already finished (best %s = %s)", trial_dir, cfg.metric, state.best_value)
        reporter.report(_final_report(trial_dir, state), checkpoint=trial_dir / checkpointing.BEST, append=False)
        status = results.read_status(trial_dir)  # None: removed as unreadable (aavs.orchestrator.experiment.repair)
        if status is None or status.status != TrialStatus.DONE:  # or killed between the state and the status
            reporter.status(TrialStatus.DONE, epoch=cfg.epochs, epochs=cfg.epochs, best=state.best_metrics)
        return state.best_metrics
    if rank == 0:
        if state is None:  # a fresh start: nothing earlier in this folder counts
            results.clear_metrics(trial_dir)
        else:
            results.keep_metrics_through(trial_dir, state.epoch)
        results.write_trial_config(trial_dir, cfg.to_dict())
    reporter.status(TrialStatus.RUNNING, epoch=state.epoch + 1 if state else 0, epochs=cfg.epochs)

    set_seed(cfg.seed)
    start = 0 if state is None else state.epoch + 1
    state = state or checkpointing.TrainerState()
    accelerator: Accelerator | None = None
    data: tuple[AVSBenchDataset, AVSBenchDataset] | None = None  # train and val
    last_epoch_s: float | None = None  # the previous epoch's time, training and validation (progress ETAs)
    try:
        for epoch in range(start, cfg.epochs):
            phase = cfg.phase_of(epoch)
            if accelerator is None or phase != state.phase:
                if accelerator is not None:
                    release(accelerator)
                resumed = epoch == start and start > 0
                model, optimizer, accelerator = _enter_phase(cfg, trial_dir, state, phase, epoch, resumed, rank)
                state.phase = phase
            if data is None:  # the network decides the input size
                data = _datasets(cfg, accelerator.unwrap_model(model).config.image_size)
            train_set, val_set = data
            progress = EpochProgress(reporter, epoch, cfg.epochs, cfg.progress_interval_s, last_epoch_s)
            epoch_start = time.monotonic()
            train_stats = _train_one_epoch(cfg, model, optimizer, accelerator, train_set, epoch, world, rank, progress)
            metrics = evaluate(
                accelerator.unwrap_model(model),
                val_set,
                cfg.task,
                accelerator.device,
                rank=rank,
                world=world,
                num_workers=cfg.compute.loader_workers,
            )
            last_epoch_s = time.monotonic() - epoch_start
            row: dict[str, Any] = {
                "epoch": epoch,
                "phase": phase,
                **train_stats,
                **{f"val/{k}": v for k, v in metrics.items()},
            }
            improved = _is_better(row[cfg.metric], state.best_value, cfg.mode)
            if improved:
                state.best_value, state.best_epoch = float(row[cfg.metric]), epoch
                state.best_metrics = {k: v for k, v in row.items() if k.startswith("val/")} | {"epoch": epoch}
                if rank == 0:
                    _save_best(accelerator.unwrap_model(model), trial_dir, state)
            state.epoch = epoch
            row["best/" + cfg.metric] = state.best_value
            state.report = row
            checkpointing.save_last(trial_dir, accelerator, model, state, rank)
            # After the save: a report means this epoch's state is on disk (a scheduler may stop the
            # trial on it, and population-based training hands that state to another trial).
            reporter.report(row, checkpoint=trial_dir / checkpointing.BEST)
            reporter.status(
                TrialStatus.DONE if epoch == cfg.epochs - 1 else TrialStatus.RUNNING,
                epoch=epoch + 1,
                epochs=cfg.epochs,
                best=state.best_metrics,
            )
    except TrainingDiverged as err:
        reporter.status(TrialStatus.FAILED, error=str(err))
        raise
    except TrialStopped as err:  # resumable: `aavs resume` trains the epoch in progress again
        reporter.status(TrialStatus.INTERRUPTED, epoch=state.epoch + 1, epochs=cfg.epochs, error=str(err))
        raise
    finally:
        if accelerator is not None:
            release(accelerator)
    return state.best_metrics


# ------------------------------------------------------------------------------------- phases
def _datasets(cfg: TrainConfig, image_size: int) -> tuple[AVSBenchDataset, AVSBenchDataset]:
    """Train and val videos; stage two validates on stage one's masks and trains on the true sounding
    mask (``prior_train: ground-truth``, the paper's) or on stage one's masks of the training split
    (``stage-one``: the export every trial of the stage shares, written once by the stage's mask task)."""
    common: dict[str, Any] = dict(
        image_size=image_size,
        vggish=cfg.model.vggish,
        vggish_pca=cfg.model.vggish_pca,
        cache_dir=cfg.audio_cache,
        compact=True,  # items in uint8, converted on the accelerator (model_inputs)
    )
    if cfg.compute.frame_store:
        common.update(frame_store=default_store_dir(), store_workers=cfg.compute.loader_workers)
    train_prior = (cfg.prior if cfg.prior_train == "stage-one" else "ground-truth") if cfg.prior else None
    train = AVSBenchDataset(cfg.data_root, cfg.task, "train", prior=train_prior, training=True, **common)
    return train, AVSBenchDataset(cfg.data_root, cfg.task, "val", prior=cfg.prior, **common)


def _build(cfg: TrainConfig) -> SegmentationModel:
    """The stage's network, of the registered ``model.type``; a semantic task's predicts the data's
    classes (its label2idx.json)."""
    spec = cfg.model
    classes = class_names(cfg.data_root) if get_task(cfg.task).semantic else None
    return registry.build(
        spec.type, cfg.task, preset=spec.preset, pretrained=spec.pretrained, classes=classes, **spec.overrides
    )


def _enter_phase(
    cfg: TrainConfig,
    trial_dir: Path,
    state: checkpointing.TrainerState,
    phase: str,
    epoch: int,
    resumed: bool,
    rank: int,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Accelerator]:
    """A fresh model, optimizer and accelerator for ``phase``, starting from the right weights; the
    model and optimizer as ``accelerator.prepare`` wrapped them (DDP, DeepSpeed's engine).

    - a resumed run: the weights, optimizer state and RNG of ``checkpoints/last``; resumed right after
      the last epoch of the previous phase: as the uninterrupted run entered this one, from those RNG states;
    - the first epoch of phase B: phase A's best weights, then fresh Swin adapters;
    - the first epoch of a run: the base model (plus ``init_from``'s matching weights).
    """
    accelerator = make_accelerator(cfg.compute, cfg.grad_accum, cfg.grad_clip, cfg.batch_size)
    if resumed and phase != state.phase:
        checkpointing.restore_rng(trial_dir, accelerator, rank)
        resumed = False
    model = _build(cfg)
    if resumed:
        model.set_phase(phase)
        model.load_trainable_state_dict(_load_weights(checkpointing.last_dir(trial_dir) / "model", model))
    elif phase == "B" and epoch > 0:
        model.load_trainable_state_dict(_load_weights(checkpointing.best_dir(trial_dir), model))
        model.set_phase("B")  # re-initialises the Swin adapters, as the reference does
    else:
        if cfg.init_from:
            _init_from(model, cfg.init_from)
        model.set_phase(phase)
    lr = cfg.lr if phase == "A" else cfg.learning_rate_b
    optimizer = torch.optim.AdamW(
        model.phase_parameter_groups(phase, lr=lr, weight_decay=cfg.weight_decay),
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=cfg.weight_decay,
        **adamw_kwargs(accelerator.device),
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if resumed:
        rates = [group["lr"] for group in optimizer.param_groups]
        checkpointing.load_last(trial_dir, accelerator, rank)
        # The config's learning rates, not the saved ones: population-based training resumes a trial
        # from another's state with perturbed rates (the same rates otherwise).
        for group, lr_ in zip(optimizer.param_groups, rates):
            group["lr"] = lr_
        log.info("resumed %s at epoch %d (phase %s)", trial_dir, epoch, phase)
    return model, optimizer, accelerator


def _load_weights(folder: Path, model: SegmentationModel) -> dict[str, torch.Tensor]:
    """The trainable weights of ``model`` as stored in a checkpoint folder (which may hold all weights)."""
    trainable = model.trainable_state_dict()
    return {k: v for k, v in registry.read_weights(folder, model.config.model_type).items() if k in trainable}


def _init_from(model: SegmentationModel, checkpoint: str) -> None:
    """Copy every trainable tensor of ``checkpoint`` whose name and shape match (stage one -> two)."""
    source = _load_weights(Path(checkpoint), model)
    target = model.trainable_state_dict()
    matching = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    target.update(matching)
    model.load_trainable_state_dict(target)
    log.info(
        "init_from %s: %d tensors copied, %d left at their initial values",
        checkpoint,
        len(matching),
        len(target) - len(matching),
    )


# ---------------------------------------------------------------------------------- one epoch
def epoch_videos(cfg: TrainConfig, dataset: Dataset[Any], epoch: int, world: int, rank: int) -> list[int]:
    """The dataset indices this worker trains on in ``epoch``, in order; a function of the seed and the
    epoch only, so a resumed run sees the same videos.

    ``cfg.shuffle``: a permutation per epoch; otherwise the dataset's order (stage two: v1s, v1m, v2,
    each in metadata order, as the reference trains it). Workers take interleaved shares, so each keeps
    the order and their steps together walk it. ``max_videos`` caps the epoch.
    """
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=cfg.shuffle, seed=cfg.seed
    )
    sampler.set_epoch(epoch)
    indices = list(sampler)
    if cfg.max_videos:
        indices = indices[: max(1, math.ceil(cfg.max_videos / world))]
    return indices


def _train_one_epoch(
    cfg: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    dataset: Dataset[Any],
    epoch: int,
    world: int,
    rank: int,
    progress: EpochProgress | None = None,
) -> dict[str, float]:
    """One pass over this worker's videos; an optimiser step per ``grad_accum`` batches, except where
    no worker had a frame that counts in the loss in any of them (see :func:`_step_outcome`);
    ``progress`` hears after every step."""
    indices = epoch_videos(cfg, dataset, epoch, world, rank)
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.compute.loader_workers,
        collate_fn=collate_videos,
        pin_memory=accelerator.device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(cfg.seed + epoch),
    )
    model.train()
    temporal = registry.get_model_type(cfg.model.type).temporal
    device, dtype = accelerator.device, weights_dtype(accelerator.unwrap_model(model))
    losses, frames, skipped, wait, t_epoch = [], 0, 0, 0.0, time.perf_counter()
    window_counts = False  # a frame of this accumulation window counts in this worker's loss
    t_ready = time.perf_counter()
    for step, batch in enumerate(loader):
        wait += time.perf_counter() - t_ready
        batch, loss_frames = training_frames(batch, cfg.task, temporal)
        window_counts = window_counts or bool(loss_frames.any())
        with accelerator.accumulate(model):
            out = model(**model_inputs(batch, device, dtype), **loss_targets(batch, loss_frames, device))
            loss = out.loss
            value = loss.detach().float().item()  # the step's one host sync
            learns = _step_outcome(value, window_counts, accelerator, epoch, step)
            if accelerator.sync_gradients and not learns:
                _skip_step(cfg, loss, optimizer, accelerator)
                skipped += 1
            else:
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip and cfg.compute.strategy != "deepspeed":
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                window_counts = False
        losses.append(value)
        frames += batch["pixel_values"].shape[0]
        if progress is not None:
            progress.step(step + 1, len(loader), frames)
        t_ready = time.perf_counter()
        if cfg.stop_file and os.path.exists(cfg.stop_file):
            raise TrialStopped(f"stopped on request after epoch {epoch + 1}'s step {step + 1}")
    elapsed = time.perf_counter() - t_epoch
    return {
        "train/loss": float(np.mean(losses)) if losses else float("nan"),
        "train/skipped_steps": float(skipped),
        "train/steps_per_s": len(losses) / max(elapsed, 1e-9),
        "train/frames_per_s": frames / max(elapsed, 1e-9),
        "train/data_wait_frac": wait / max(elapsed, 1e-9),
    }


def _step_outcome(value: float, window_counts: bool, accelerator: Accelerator, epoch: int, step: int) -> bool:
    """Whether any worker's accumulation window so far has a frame that counts in the loss; raises
    :class:`TrainingDiverged` on a NaN or infinite loss on any worker.

    One all-reduce decides both for every worker at once: all stop together (one alone would hang the
    others in their next collective), and all skip or all make the optimiser step, so DDP replicas and
    ZeRO partitions never fall out of step.
    """
    bad, counts = not math.isfinite(value), window_counts
    if accelerator.num_processes > 1:
        flags = torch.tensor([float(bad), float(counts)], device=accelerator.device)
        bad, counts = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
    if bad:
        raise TrainingDiverged(
            f"loss is not finite at epoch {epoch} step {step}; the trial stops, its last good checkpoint is kept"
        )
    return counts


def _skip_step(
    cfg: TrainConfig, loss: torch.Tensor, optimizer: torch.optim.Optimizer, accelerator: Accelerator
) -> None:
    """End an accumulation window in which no worker had a frame that counts, without an optimiser
    step: no momentum, no weight decay, no step count (the reference's all-empty MS3 video).

    The zero loss is still backpropagated (DDP expects a backward after every training forward, and
    all-reduces the zero gradients with the other workers), then the gradients are dropped. DeepSpeed
    steps inside its backward, so there the backward is left out; every worker leaves it out alike.
    """
    if cfg.compute.strategy != "deepspeed":
        accelerator.backward(loss)
    optimizer.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------- checkpoints
def _is_better(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _save_best(model: SegmentationModel, trial_dir: Path, state: checkpointing.TrainerState) -> None:
    with atomic.atomic_dir(trial_dir / checkpointing.BEST) as tmp:
        model.save_pretrained(tmp)
        results.write_checkpoint_metrics(tmp, state.best_metrics)


def _restore_epoch_report(trial_dir: Path, state: checkpointing.TrainerState) -> None:
    """The report of the epoch ``checkpoints/last`` holds, appended if a kill came between the two."""
    if state.report is not None and not any(r.epoch == state.epoch for r in results.read_metrics(trial_dir)):
        line = dict(state.report, time=time.time(), checkpoint=str(trial_dir / checkpointing.BEST))
        results.append_metrics(trial_dir, line)


def _final_report(trial_dir: Path, state: checkpointing.TrainerState) -> dict[str, Any]:
    rows = results.read_metrics(trial_dir)
    return rows[-1].to_json() if rows else dict(state.best_metrics)


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size, before any accelerator exists (Ray Train has set up
    the process group already; torchrun-style launchers only the environment)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
