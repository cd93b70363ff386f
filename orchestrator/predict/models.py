"""The networks of ``aavs predict``: where they come from (:class:`ModelSource`) and, loaded, how they
predict one window (:class:`Models`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import get_task
from aavs.datasets.video import WindowEmbedder
from aavs.models import registry
from aavs.models.protocol import SegmentationModel
from aavs.orchestrator import results
from aavs.orchestrator.recipe.device import pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where the networks and the audio front end come from; picklable, so Ray actors load their own.

    ``checkpoint`` predicts the masks; ``prior_checkpoint`` (a binary, stage-one network) feeds a semantic
    ``checkpoint`` its sounding masks; both are our checkpoint folders (``aavs import-checkpoint`` converts a
    release). ``base``: the Mask2Former folder, for checkpoints of trainable weights whose base moved.
    Each checkpoint's model type is the one it records (:func:`aavs.models.registry.checkpoint_type`).
    """

    checkpoint: str
    prior_checkpoint: str | None = None
    base: str | None = None
    vggish: str | None = None
    vggish_pca: str | None = None
    cache_dir: str | None = None


def experiment_source(results_dir: str | Path, stage: str | None = None, **audio: str | None) -> ModelSource:
    """The best checkpoints of ``results_dir``: by default the last stage that takes a prior, fed by the
    stage its ``prior`` names; ``stage`` picks another. VGGish files and cache default to the
    experiment's (``audio`` overrides: vggish, vggish_pca, cache_dir). The folder may come from someone
    else: a link out of it is refused (:func:`aavs.orchestrator.results.check_tree`), and a best
    checkpoint is the folder's own copy (:func:`_best_checkpoint`)."""
    results_dir = Path(results_dir)
    spec_file = results_dir / results.SPEC_FILE
    results.check_tree(results_dir)
    record = results.read_spec(results_dir)
    if record is None:
        raise InputError(f"{spec_file}: missing (--experiment takes a results folder written by `aavs run`)")
    spec = record.spec
    try:
        stages = {s["name"]: s for s in spec["stages"]}
    except (KeyError, TypeError) as err:
        raise InputError(f"{spec_file}: not an experiment description ({err})") from None
    if stage is None:
        stage = next((s["name"] for s in reversed(spec["stages"]) if s.get("prior")), spec["stages"][-1]["name"])
    if stage not in stages:
        raise InputError(f"--stage {stage}: {results_dir} has the stages {', '.join(stages)}")
    prior = stages[stage].get("prior")
    if prior and stages[prior].get("prior"):
        raise InputError(
            f"{spec_file}: stage {prior} (the prior of {stage}) takes a prior itself; only two stages chain"
        )
    model = spec.get("model") or {}
    return ModelSource(
        checkpoint=_best_checkpoint(results_dir, stage),
        prior_checkpoint=_best_checkpoint(results_dir, prior) if prior else None,
        vggish=audio.get("vggish") or model.get("vggish"),
        vggish_pca=audio.get("vggish_pca") or model.get("vggish_pca"),
        cache_dir=audio.get("cache_dir") or str(results_dir / "cache"),
    )


def _best_checkpoint(results_dir: Path, stage: str) -> str:
    """The checkpoint ``<stage>/best.json`` names: the folder's own copy of it (``<stage>/trials/<id>/best``
    of a folder copied or moved here), else the path as recorded (a folder put together by hand may
    name checkpoints kept elsewhere; they are read as safetensors, never unpickled)."""
    source = results_dir / stage / results.BEST_FILE
    best = results.read_best(results_dir / stage)  # a file that is not a best.json: InputError naming it
    if best is None:
        raise InputError(f"{source}: missing (stage {stage} has not finished: `aavs resume {results_dir}`)")
    own = results.own_copy(results_dir, best.checkpoint, results.CHECKPOINT_DEPTH, source)
    return str(own) if own is not None else best.checkpoint


def model_source(
    checkpoint: str | Path | None = None,
    prior_checkpoint: str | Path | None = None,
    experiment: str | Path | None = None,
    stage: str | None = None,
    base: str | None = None,
    vggish: str | None = None,
    vggish_pca: str | None = None,
    cache_dir: str | Path | None = None,
) -> ModelSource:
    """The command line's choice: ``experiment`` (a results folder, optionally one ``stage`` of it) or
    ``checkpoint`` [+ ``prior_checkpoint``], never both."""
    cache = str(cache_dir) if cache_dir is not None else None
    if (experiment is None) == (checkpoint is None):
        raise InputError("give either an experiment results folder (--experiment) or a checkpoint (--checkpoint)")
    if experiment is not None:
        if prior_checkpoint is not None:
            raise InputError("--prior-checkpoint goes with --checkpoint; an experiment names its own prior stage")
        return experiment_source(experiment, stage, vggish=vggish, vggish_pca=vggish_pca, cache_dir=cache)
    if stage is not None:
        raise InputError("--stage picks a stage of an --experiment")
    return ModelSource(
        str(checkpoint),
        str(prior_checkpoint) if prior_checkpoint else None,
        base=base,
        vggish=vggish,
        vggish_pca=vggish_pca,
        cache_dir=cache,
    )


class Models:
    """The loaded networks of a :class:`ModelSource`, ready to predict windows."""

    def __init__(self, source: ModelSource, device: torch.device | str | None = None) -> None:
        self.source = source
        self.device = torch.device(device) if device is not None else pick_device()
        self.main = self._load(source.checkpoint)
        self.prior: SegmentationModel | None = None
        if source.prior_checkpoint is not None:
            self.prior = self._load(source.prior_checkpoint)
        self._check()
        self.binary = get_task(self.main.config.task).binary
        self.class_names = self.main.config.class_names

    def _load(self, checkpoint: str) -> SegmentationModel:
        """A network through the registry, on this device, in eval mode."""
        model = registry.load(checkpoint, base=self.source.base)
        # A SegmentationModel is an nn.Module (the protocol leaves that out): to() and eval() act in place.
        cast(torch.nn.Module, model).to(self.device).eval()
        return model

    def _check(self) -> None:
        src = self.source
        if self.prior is not None:
            if get_task(self.prior.config.task).semantic:
                raise InputError(
                    f"{src.prior_checkpoint}: a prior comes from a binary (stage-one) network, "
                    f"this one is {self.prior.config.task}"
                )
            if not get_task(self.main.config.task).takes_prior:
                raise InputError(
                    f"{src.checkpoint}: a {self.main.config.task} network takes no prior "
                    "(only the semantic avss network does)"
                )
            if self.prior.config.image_size != self.main.config.image_size:
                raise InputError(
                    f"{src.prior_checkpoint}: input size {self.prior.config.image_size}, but "
                    f"{src.checkpoint} takes {self.main.config.image_size}; both must match"
                )
        elif get_task(self.main.config.task).takes_prior:
            log.warning("%s: a stage-two network without a prior checkpoint runs as the stage-one AAVS", src.checkpoint)

    @property
    def image_size(self) -> int:
        return self.main.config.image_size

    def describe(self) -> dict[str, Any]:
        """The networks, as timeline.json records them."""
        return {
            "checkpoint": self.source.checkpoint,
            "task": self.main.config.task,
            "prior_checkpoint": self.source.prior_checkpoint,
        }

    def embedder(self) -> WindowEmbedder:
        return WindowEmbedder(self.source.vggish, self.source.vggish_pca, self.source.cache_dir)

    @torch.no_grad()
    def predict(self, frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
        """One window: uint8 masks ``[n, 224, 224]`` (binary 0/1 or class indices) and per second the
        sounding classes (``index``, ``name``, ``share`` of the pixels, mean ``score`` over them).

        The whole window is one batch, as evaluation runs a whole clip, so a clip of training length
        gives exactly evaluation's masks."""
        prior = None
        if self.prior is not None:
            stage_one = self.prior.predict(frames, audio)
            prior = (stage_one[:, 1] > stage_one[:, 0]).float()  # the 0/255 mask file read back, / 255
        scores = self.main.predict(frames, audio, prior=prior)  # [n, C, 224, 224]
        if self.binary:
            masks = scores[:, 1] > scores[:, 0]
            confidence = torch.sigmoid(2 * scores[:, 1] - scores[:, 0])
            per_class = torch.stack([1 - confidence, confidence], dim=1)
        else:
            masks, per_class = scores.argmax(1), scores
        masks_np = masks.to(torch.uint8).numpy()
        return masks_np, [self._sounding(m, s) for m, s in zip(masks_np, per_class.numpy())]

    def _sounding(self, mask: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        classes, counts = np.unique(mask, return_counts=True)
        found = [
            {
                "index": int(c),
                "name": self.class_names[c],
                "share": round(float(n) / mask.size, 6),
                "score": round(float(scores[c][mask == c].mean()), 6),
            }
            for c, n in zip(classes, counts)
            if c != 0
        ]
        return sorted(found, key=lambda item: (-item["share"], item["index"]))


def load_models(
    checkpoint: str | Path | None = None,
    prior_checkpoint: str | Path | None = None,
    experiment: str | Path | None = None,
    stage: str | None = None,
    base: str | None = None,
    vggish: str | None = None,
    vggish_pca: str | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device | str | None = None,
) -> Models:
    """Networks for :func:`predict_video`: ``experiment`` (a results folder) or ``checkpoint`` [+ ``prior_checkpoint``]."""
    return Models(
        model_source(checkpoint, prior_checkpoint, experiment, stage, base, vggish, vggish_pca, cache_dir), device
    )
