"""AAVS: Mask2Former + adaptive audio queries + bottleneck adapters, and the Stepping Stones prior.

The network is transformers' ``Mask2FormerForUniversalSegmentation`` (kept as ``AAVS.model``, so the
parameter names are the library's, prefixed with ``model.``) changed in place, never copied:

- every Swin block's attention output projection (``attention.o_proj``) and MLP output (``mlp.fc2``)
  gets a residual bottleneck adapter; every pixel-decoder deformable attention (``output_proj``) and
  every transformer-decoder self-attention (``out_proj``) gets one that replaces the projection in the
  stage-one network and follows it in the stage-two network (:mod:`aavs.models.adapters`);
- the transformer decoder is promoted to :class:`AAVSMaskedAttentionDecoder`, which receives the
  projected audio (and the prior) of the frames being run, turns the query features into
  ``F[q] + cos(E[q], a_t) * a_t``, and for a prior adds the prior embeddings to the multi-scale
  position embeddings, the prior to the mask features, and substitutes the first masked-attention mask
  through :class:`AAVSMaskPredictor`. The library's forward passes do the rest, including its fallback
  for a query row with nothing to attend to (it then attends everywhere).

Everything else of Mask2Former is frozen; :func:`set_phase` decides which AAVS parts train
(docs/method.md §4). Frames are independent batch items: ``pixel_values[N, 3, S, S]`` with one second of
audio ``[N, 128]`` each.

The reference ran on transformers 4.35.2, and :class:`AAVS` restores what that release did and newer
ones changed (docs/method.md §4): the modules the ADE20k checkpoint
lacks start from the values its ``from_pretrained`` gave them (:meth:`AAVS._init_added_weights`), every
Swin block drops its attention path with the config's ``drop_path_rate`` (not a schedule rising from 0
to it), and the Hungarian matcher's class cost is 1.0 (the loss's class weight stays 2.0).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoder,
    Mask2FormerMaskPredictor,
)
from transformers.models.swin.modeling_swin import SwinBackbone, SwinDropPath, SwinLayer
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from aavs.datasets.errors import InputError
from aavs.datasets.tasks import get_task
from aavs.datasets.transforms import MASK_SIZE
from aavs.models.adapters import AdaptedLinear, AdapterMode, attach_adapter, promote
from aavs.models.clip_inference import chunked_scores, clip_inputs
from aavs.models.configuration_aavs import AAVSConfig
from aavs.models.deformable_attention import FusedMultiscaleDeformableAttention
from aavs.models.presets import DEFAULT_IMAGE_SIZE, PRESETS, preset_config, task_sizes
from aavs.models.video_loss import counted_frames, video_frames_or_one
from aavs.models.weights import copy_state, few

log = logging.getLogger(__name__)

PHASES = ("A", "B")
# Prior thresholds (docs/method.md §3): attend where P >= 0.5; silent P <= 0.4, sounding P >= 0.6.
PRIOR_ATTEND = 0.5
PRIOR_SILENT = 0.4
PRIOR_SOUNDING = 0.6
SILENT, UNCERTAIN, SOUNDING = 0, 1, 2  # rows of the prior embedding table
# transformers 4.35.2 built Mask2FormerLoss's matcher with cost_class=1.0 whatever the config's class_weight.
MATCHER_CLASS_COST = 1.0

# The trainable parts, by parameter-name prefix (AAVS.model is the Mask2Former).
SWIN_PREFIX = "model.model.pixel_level_module.encoder."
QUERY_EMBEDDINGS = "model.model.transformer_module.queries_embedder."
QUERY_FEATURES = "model.model.transformer_module.queries_features."
PRIOR_EMBEDDINGS = "model.model.transformer_module.decoder.prior_embeddings."
CLASS_PREDICTOR = "model.class_predictor."
AUDIO_PROJECTION = "audio_proj."
PARTS = (
    "audio_projection",
    "query_embeddings",
    "query_features",
    "decoder_adapters",
    "class_predictor",
    "prior_embeddings",
    "swin_adapters",
    "base",
)  # base: the rest, trainable only with config.train_base
# Semantic network -> parts trained in phase A; phase B adds the Swin adapters. The stage-two network has
# no query_features part: the reference keeps them at their pre-trained ADE20k values in both phases, so
# they belong to the (frozen) base; see AAVS.parameter_parts.
_PHASE_A = {
    False: ("audio_projection", "query_embeddings", "query_features", "decoder_adapters", "class_predictor"),
    True: ("audio_projection", "query_embeddings", "decoder_adapters", "class_predictor", "prior_embeddings"),
}
# transformers 5's SwinModel final norm: the Swin backbone never applies it and 4.x checkpoints lack it.
UNUSED_SWIN_NORM = re.compile(r"pixel_level_module\.encoder\.swin\.layernorm\.")
_M2F_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# The settings a Mask2Former config takes (its dataclass fields; class-level constants such as
# model_type are not among them).
_MASK2FORMER_FIELDS = frozenset(f.name for f in dataclasses.fields(Mask2FormerConfig))


# ------------------------------------------------------------------------------------ outputs
@dataclass
class AAVSOutput(ModelOutput):
    """``loss`` (scalar, when labels were given), ``class_queries_logits [N, Q, C+1]`` (last entry:
    no-object), ``masks_queries_logits [N, Q, S/4, S/4]``, and the same two for every earlier decoder
    layer in ``auxiliary_logits``."""

    loss: Tensor | None = None
    class_queries_logits: Tensor | None = None
    masks_queries_logits: Tensor | None = None
    auxiliary_logits: list[dict[str, Tensor]] | None = None

    def logits(self) -> tuple[Tensor, Tensor]:
        """``(masks_queries_logits, class_queries_logits)``, which every forward pass sets."""
        if self.masks_queries_logits is None or self.class_queries_logits is None:
            raise ValueError("this output holds no mask and class logits")
        return self.masks_queries_logits, self.class_queries_logits


@dataclass
class DecoderConditioning:
    """What one forward pass hands the transformer decoder besides the images."""

    audio: Tensor  # [N, D] projected audio, one second per frame
    prior: Tensor | None  # [N, h, w] in [0, 1], stage two only


# ----------------------------------------------------------------------- decoder-side changes
def adaptive_query_features(features: Tensor, position: Tensor, audio: Tensor) -> Tensor:
    """``F[q] + cos(E[q], a_t) * a_t``: each query takes as much audio as it resembles.

    features, position: ``[Q, N, D]`` (query features F and position embeddings E, repeated per
    frame); audio: ``[N, D]``. Returns ``[Q, N, D]``.
    """
    audio = audio.unsqueeze(0)  # [1, N, D]
    similarity = F.cosine_similarity(position, audio, dim=-1)  # [Q, N]
    return features + similarity.unsqueeze(-1) * audio


def resize_prior(prior: Tensor, size: Sequence[int]) -> Tensor:
    """``[N, h, w] -> [N, H, W]`` by bilinear resizing (align_corners False)."""
    return F.interpolate(prior.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def prior_attention_mask(prior: Tensor, size: Sequence[int], num_heads: int, num_queries: int) -> Tensor:
    """The first masked-attention mask from the prior: True (blocked) where P < 0.5.

    Returns ``[N * heads, Q, H * W]`` bool, the layout of Mask2Former's own attention masks.
    """
    blocked = (resize_prior(prior, size) < PRIOR_ATTEND).flatten(1)  # [N, HW]
    n, hw = blocked.shape
    return blocked[:, None, None, :].expand(n, num_heads, num_queries, hw).reshape(n * num_heads, num_queries, hw)


def prior_regions(prior: Tensor) -> Tensor:
    """Per pixel: 0 silent (P <= 0.4), 1 uncertain, 2 sounding (P >= 0.6). Same shape, int64."""
    return (prior > PRIOR_SILENT).long() + (prior >= PRIOR_SOUNDING).long()


class AAVSMaskPredictor(Mask2FormerMaskPredictor):
    """Mask2Former's mask predictor; when ``pending_attention_mask`` is set, its next call returns that
    attention mask (once) instead of the one derived from the predicted masks."""

    pending_attention_mask: Tensor | None

    def forward(
        self, outputs: Tensor, pixel_embeddings: Tensor, attention_mask_target_size: Any = None
    ) -> tuple[Tensor, Tensor]:
        predicted_mask, attention_mask = super().forward(outputs, pixel_embeddings, attention_mask_target_size)
        if self.pending_attention_mask is not None:
            attention_mask, self.pending_attention_mask = self.pending_attention_mask, None
        return predicted_mask, attention_mask


class AAVSMaskedAttentionDecoder(Mask2FormerMaskedAttentionDecoder):
    """Mask2Former's masked-attention decoder conditioned on audio and, in stage two, on a prior.

    ``conditioning`` is set by :meth:`AAVS.forward` for the duration of one pass (the transformer
    module calls the decoder with a fixed signature). ``prior_embeddings`` (semantic network only) holds
    the learnt silent / uncertain / sounding position embeddings, one row each.
    """

    conditioning: DecoderConditioning | None
    prior_embeddings: nn.Embedding | None
    mask_predictor: AAVSMaskPredictor  # promoted with the decoder (AAVS.__init__)

    # transformers annotates the two per-level arguments as one Tensor; its transformer module passes lists.
    def forward(
        self,
        inputs_embeds: Tensor | None = None,  # [Q, N, D] query features F
        multi_stage_positional_embeddings: list[Tensor] | None = None,  # type: ignore[override]  # per level [h*w, N, D]
        pixel_embeddings: Tensor | None = None,  # [N, D_mask, S/4, S/4] mask features
        encoder_hidden_states: list[Tensor] | None = None,  # type: ignore[override]
        query_position_embeddings: Tensor | None = None,  # [Q, N, D] query position embeddings E
        feature_size_list: list[Sequence[int]] | None = None,  # per level (h, w)
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        conditioning = self.conditioning
        if conditioning is None:
            raise RuntimeError("the AAVS decoder needs the frames' audio: call the AAVS module, not its Mask2Former")
        if (
            inputs_embeds is None
            or multi_stage_positional_embeddings is None
            or pixel_embeddings is None
            or query_position_embeddings is None
            or feature_size_list is None
        ):
            raise ValueError("the AAVS decoder needs the query, position and pixel embeddings and the feature sizes")
        inputs_embeds = adaptive_query_features(inputs_embeds, query_position_embeddings, conditioning.audio)
        prior = conditioning.prior
        if prior is not None:
            prior = prior.to(pixel_embeddings.dtype)
            pixel_embeddings = pixel_embeddings + resize_prior(prior, pixel_embeddings.shape[-2:]).unsqueeze(1)
            multi_stage_positional_embeddings = [
                position + self._prior_position(prior, size)
                for position, size in zip(multi_stage_positional_embeddings, feature_size_list)
            ]
            self.mask_predictor.pending_attention_mask = prior_attention_mask(
                prior, feature_size_list[0], self.mask_predictor.num_heads, inputs_embeds.shape[0]
            )
        try:
            return super().forward(
                inputs_embeds=inputs_embeds,
                multi_stage_positional_embeddings=multi_stage_positional_embeddings,  # type: ignore[arg-type]
                pixel_embeddings=pixel_embeddings,
                encoder_hidden_states=encoder_hidden_states,  # type: ignore[arg-type]
                query_position_embeddings=query_position_embeddings,
                feature_size_list=feature_size_list,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=return_dict,
            )
        finally:
            self.mask_predictor.pending_attention_mask = None

    def _prior_position(self, prior: Tensor, size: Sequence[int]) -> Tensor:
        """The prior embedding of every pixel of one level: ``[h * w, N, D]``."""
        if self.prior_embeddings is None:
            raise RuntimeError("this network has no prior embeddings (only the avss network takes a prior)")
        regions = prior_regions(resize_prior(prior, size))  # [N, h, w]
        embedded = self.prior_embeddings(regions.flatten(1))  # [N, h*w, D]
        return embedded.transpose(0, 1)


# ------------------------------------------------------------------------------------- network
class AAVS(nn.Module):
    """The AAVS network around a (pre-trained) ``Mask2FormerForUniversalSegmentation``.

    Built by :func:`build_model`; starts in phase A (Swin adapters at zero and frozen). The new modules'
    initial values depend only on the torch seed.
    """

    def __init__(self, config: AAVSConfig, mask2former: Mask2FormerForUniversalSegmentation) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        # per second: [N, 128] -> [N, 512] -> [N, 256]
        self.audio_proj = nn.Sequential(
            nn.Linear(config.audio_dim, config.audio_hidden_dim), nn.ReLU(), nn.Linear(config.audio_hidden_dim, hidden)
        )
        self.model = mask2former
        self._add_adapters()
        # Risk: private transformers API. The promotions below swap the class of three internal Mask2Former
        # modules in place, so they rely on what no release promises: the attribute paths
        # (transformer_module.decoder, decoder.mask_predictor, the pixel decoder's encoder layers'
        # self_attn), the three internal classes and their forward signatures (two overrides call
        # super().forward by keyword; the library calls the deformable attention's by keyword), and the
        # decoder taking each layer's attention mask from its mask predictor. tests/test_private_apis.py
        # pins the signatures (transformers < 6); a release that changes the rest changes the outputs,
        # which tests/test_reference_parity.py compares with the reference's.
        decoder = promote(mask2former.model.transformer_module.decoder, AAVSMaskedAttentionDecoder)
        decoder.conditioning = None
        decoder.prior_embeddings = nn.Embedding(3, hidden) if config.takes_prior else None
        promote(decoder.mask_predictor, AAVSMaskPredictor).pending_attention_mask = None
        for layer in mask2former.model.pixel_level_module.decoder.encoder.layers:
            promote(layer.self_attn, FusedMultiscaleDeformableAttention)  # the same numbers, faster on the CPU
        self._init_added_weights()
        self._set_swin_drop_path()
        mask2former.criterion.matcher.cost_class = MATCHER_CLASS_COST
        self.phase: str | None = None
        set_phase(self, "A")

    def _swin_blocks(self) -> list[SwinLayer]:
        """Every Swin block, stage by stage (``modules()`` walks depth first, in order)."""
        backbone = self.model.model.pixel_level_module.encoder
        if not isinstance(backbone, SwinBackbone):
            raise InputError(f"AAVS needs a Swin backbone, the Mask2Former config has {type(backbone).__name__}")
        return [block for block in backbone.swin.encoder.layers.modules() if isinstance(block, SwinLayer)]

    def _add_adapters(self) -> None:
        reduction = self.config.adapter_reduction
        for block in self._swin_blocks():
            attach_adapter(block.attention.o_proj, "residual", reduction)
            attach_adapter(block.mlp.fc2, "residual", reduction)
        mode: AdapterMode = "follow" if self.config.semantic else "replace"
        for layer in self.model.model.pixel_level_module.decoder.encoder.layers:
            attach_adapter(layer.self_attn.output_proj, mode, reduction)
        for layer in self.model.model.transformer_module.decoder.layers:
            attach_adapter(layer.self_attn.out_proj, mode, reduction)

    @torch.no_grad()
    def _init_added_weights(self) -> None:
        """Start the decoder-side adapters and the prior embeddings where the reference's
        ``from_pretrained`` (transformers 4.35.2) started them.

        That release ran ``Mask2FormerPreTrainedModel._init_weights`` on every module the checkpoint did
        not fully cover, innermost first, so the outermost rule reaching a module won:

        - pixel-decoder adapters: ``Mask2FormerPixelLevelModule``'s rule, N(0, init_std) for every Linear
          under it (the Swin adapters too), biases zero;
        - decoder self-attention adapters: ``Mask2FormerMaskedAttentionDecoderLayer``'s xavier-uniform
          (gain init_xavier_std) on every matrix, biases zero from the Linear rule run before it;
        - prior embeddings: the Embedding rule, N(0, init_std).

        The Swin adapters get theirs entering phase B (:func:`set_phase`); the audio projection lived
        outside the Mask2Former there and keeps PyTorch's default init here too.
        """
        m2f = self.config.mask2former
        for layer in self.model.model.pixel_level_module.decoder.encoder.layers:
            layer.self_attn.output_proj.adapter.normal_(m2f.init_std)
        decoder = self.model.model.transformer_module.decoder
        for layer in decoder.layers:
            layer.self_attn.out_proj.adapter.xavier_uniform_(m2f.init_xavier_std)
        if decoder.prior_embeddings is not None:
            nn.init.normal_(decoder.prior_embeddings.weight, mean=0.0, std=m2f.init_std)

    def _set_swin_drop_path(self) -> None:
        """Every Swin block drops its attention path with the backbone's ``drop_path_rate`` (0.3 for the
        ADE20k Swin-B), as transformers 4.35.2's SwinLayer did; transformers 5 instead gives block i of n
        ``rate * i / (n - 1)``, the first block none. Active in train mode only."""
        rate = self.model.model.pixel_level_module.encoder.config.drop_path_rate
        for block in self._swin_blocks():
            block.drop_path = SwinDropPath(rate)

    # -------------------------------------------------------------------------------- parts
    def parameter_parts(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """The trainable parts (see :data:`PARTS`), each a list of (name, parameter); the rest is frozen.

        The stage-two network counts its query features as base: the reference keeps their pre-trained
        values (docs/method.md §4). A random-weight base
        (``train_base``, the tiny preset) has none to keep, so there they train with the rest of the base,
        in both phases.
        """
        parts: dict[str, list[tuple[str, nn.Parameter]]] = {part: [] for part in PARTS}
        for name, param in self.named_parameters():
            part = _part_of(name)
            if part == "query_features" and self.config.semantic:
                part = None
            if part is None and self.config.train_base:
                part = "base"
            if part is not None:
                parts[part].append((name, param))
        return parts

    def swin_adapters(self) -> list[AdaptedLinear]:
        return [m for m in self.model.model.pixel_level_module.encoder.modules() if isinstance(m, AdaptedLinear)]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Every parameter that is trainable in some phase, detached (the weights a checkpoint needs)."""
        return {name: p.detach() for params in self.parameter_parts().values() for name, p in params}

    def load_trainable_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True) -> None:
        """Copy trainable weights in; any unknown key or wrong shape is an InputError naming it, and with
        ``strict`` so is a missing key."""
        copy_state(self.trainable_state_dict(), state_dict, strict, "trainable weights", network="AAVS")

    # The methods of the model protocol (aavs.models.protocol) that the functions below implement.
    def set_phase(self, phase: str) -> None:
        """:func:`set_phase` on this network."""
        set_phase(self, phase)

    def phase_parameter_groups(self, phase: str, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """:func:`phase_parameter_groups` of this network."""
        return phase_parameter_groups(self, phase, lr, weight_decay)

    def save_pretrained(self, folder: str | Path) -> Path:
        """:func:`aavs.models.checkpoint.save_checkpoint` of this network."""
        from aavs.models.checkpoint import save_checkpoint  # here, not at the top: checkpoint.py imports this module

        return save_checkpoint(self, folder)

    # ------------------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: Tensor,  # [N, 3, S, S] normalised frames
        audio: Tensor,  # [N, 128] VGGish embedding of each frame's second
        prior: Tensor | None = None,  # [N, h, w] in [0, 1] (stage two), typically 224 x 224
        labels: Tensor | None = None,  # [N, H, W] int64 class per pixel, typically 224 x 224
        loss_frames: Tensor | None = None,  # [N] bool, frames that count in the loss (default: all)
        video_frames: Sequence[int] | None = None,  # frames per video (default: one video); only the loss uses it
    ) -> AAVSOutput:
        n = pixel_values.shape[0]
        _check_shape("pixel_values", pixel_values, (n, 3, None, None))
        _check_shape("audio", audio, (n, self.config.audio_dim))
        if prior is not None:
            if not self.config.takes_prior:
                raise ValueError(f"the {self.config.task} network takes no prior (only the avss network does)")
            _check_shape("prior", prior, (n, None, None))
        audio_embeds = self.audio_proj(audio.to(pixel_values.dtype))  # [N, D]
        decoder = self.model.model.transformer_module.decoder
        decoder.conditioning = DecoderConditioning(audio=audio_embeds, prior=prior)
        try:
            out = self.model(pixel_values=pixel_values, output_auxiliary_logits=True, return_dict=True)
        finally:
            decoder.conditioning = None
        output = AAVSOutput(
            class_queries_logits=out.class_queries_logits,  # [N, Q, C+1]
            masks_queries_logits=out.masks_queries_logits,  # [N, Q, S/4, S/4]
            auxiliary_logits=out.auxiliary_logits,
        )
        if labels is not None:
            output.loss = self._loss(output, labels, loss_frames, video_frames_or_one(video_frames, n))
        return output

    def _loss(
        self, output: AAVSOutput, labels: Tensor, loss_frames: Tensor | None, video_frames: Sequence[int]
    ) -> Tensor:
        """The mean over the batch's videos of each video's Mask2Former loss over its selected frames
        (:mod:`aavs.models.video_loss`): one library loss per video, so each is normalised by its own
        number of masks, as when it trains alone."""
        n = labels.shape[0]
        _check_shape("labels", labels, (n, None, None))
        selected = torch.ones(n, dtype=torch.bool) if loss_frames is None else loss_frames.detach().bool().cpu()
        _check_shape("loss_frames", selected, (n,))
        losses = [self._frames_loss(output, labels, index) for index in counted_frames(selected, video_frames)]
        return torch.stack(losses).sum() / len(video_frames)

    def _frames_loss(self, output: AAVSOutput, labels: Tensor, index: Tensor) -> Tensor:
        """transformers' Mask2Former loss (matching, class CE, mask BCE + dice on sampled points, auxiliary
        losses of every decoder layer) over the frames ``index``.

        With no frame the loss is 0 times the loss of frame 0 against an all-background target: a zero
        with a graph, and the library's loss still runs once per video, so the all-reduce of the mask
        count it does under accelerate stays in step across processes. The targets are the labels at the
        input size (:func:`resize_labels`), as the reference's image processor makes them.
        """
        if len(index) == 0:
            index = torch.zeros(1, dtype=torch.long)
            targets = torch.zeros_like(labels[:1])
            scale = 0.0
        else:
            targets = labels[index.to(labels.device)]
            scale = 1.0
        mask_labels, class_labels = frame_targets(
            resize_labels(targets, self.config.image_size), self.config.num_labels
        )
        device = output.logits()[0].device
        index = index.to(device)
        # The loss runs in fp32 whatever the weights' dtype: the library's matcher samples points with
        # fp32 coordinates, and a bf16 module (DeepSpeed keeps one) would not match them; autocast (bf16
        # mixed precision) is off here, or the matcher's cost products would run in bf16. transformers
        # annotates the targets and auxiliary predictions as one Tensor (one dict); they are per-frame
        # (per-layer) lists.
        with torch.autocast(device.type, enabled=False):
            loss_dict = self._loss_dict(output, index, mask_labels, class_labels)
        return self.model.get_loss(loss_dict) * scale

    def _loss_dict(
        self, output: AAVSOutput, index: Tensor, mask_labels: list[Tensor], class_labels: list[Tensor]
    ) -> dict[str, Tensor]:
        """transformers' loss terms of the frames ``index``, from fp32 logits."""
        masks_logits, class_logits = output.logits()
        return self.model.get_loss_dict(
            masks_queries_logits=masks_logits[index].float(),
            class_queries_logits=class_logits[index].float(),
            mask_labels=[m.float() for m in mask_labels],  # type: ignore[arg-type]
            class_labels=class_labels,  # type: ignore[arg-type]
            auxiliary_predictions=[  # type: ignore[arg-type]
                {k: v[index].float() for k, v in aux.items()} for aux in output.auxiliary_logits or []
            ],
        )

    def class_scores(self, output: AAVSOutput) -> Tensor:
        """Per-class score maps ``[N, C, 224, 224]`` (no-object excluded), before any argmax.

        Mask logits are resized bilinearly to the ``image_size`` input, then per class c:
        ``sum_q softmax(class logits)[q, c] * sigmoid(mask logits)[q]``, then bilinear to 224 x 224.
        One frame at a time, so a 100-query semantic network stays within memory.
        """
        size = (self.config.image_size, self.config.image_size)
        scores = []
        for masks, classes in zip(*output.logits()):
            masks = F.interpolate(masks.unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]  # [Q, S, S]
            probs = classes.softmax(-1)[:, :-1]  # [Q, C]
            frame = torch.einsum("qc,qhw->chw", probs, masks.sigmoid())  # [C, S, S]
            scores.append(
                F.interpolate(frame.unsqueeze(0), size=(MASK_SIZE, MASK_SIZE), mode="bilinear", align_corners=False)
            )
        return torch.cat(scores)  # [N, C, 224, 224]

    @torch.no_grad()
    def predict(self, frames: Any, audio: Any, prior: Any = None, batch_size: int | None = None) -> Tensor:
        """RGB uint8 frames ``[T, H, W, 3]``, VGGish embeddings ``[T, 128]`` and, for the avss network,
        prior masks ``[T, h, w]`` in [0, 1] -> per-class scores ``[T, C, 224, 224]`` float32 on the CPU.

        Runs in eval mode (restoring the previous mode), ``batch_size`` frames at a time (default all).
        """
        frames, audio_t, prior_t = clip_inputs(
            frames,
            audio,
            prior,
            audio_dim=self.config.audio_dim,
            takes_prior=self.config.takes_prior,
            task=self.config.task,
        )
        if frames.shape[0] == 0:
            return torch.zeros(0, self.config.num_labels, MASK_SIZE, MASK_SIZE)
        step = batch_size or frames.shape[0]
        return chunked_scores(self, frames, audio_t, prior_t, self.config.image_size, step)


# ----------------------------------------------------------------------------- loss targets
def resize_labels(labels: Tensor, size: int) -> Tensor:
    """Label maps ``[N, H, W]`` -> ``[N, size, size]`` by nearest neighbour at pixel centres (source
    index ``floor((i + 0.5) * H / size)``, PIL's NEAREST rule): the reference's loss targets are its
    224 x 224 masks resized so by Mask2FormerImageProcessor to the network's input size."""
    rows = (torch.arange(size, device=labels.device) * 2 + 1) * labels.shape[-2] // (2 * size)
    cols = (torch.arange(size, device=labels.device) * 2 + 1) * labels.shape[-1] // (2 * size)
    return labels[:, rows][:, :, cols]


def frame_targets(labels: Tensor, num_labels: int) -> tuple[list[Tensor], list[Tensor]]:
    """Label maps ``[N, H, W]`` -> per frame one binary mask ``[K, H, W]`` per class present (background
    included) and their classes ``[K]``, the targets of Mask2Former's loss."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise InputError(
            f"labels hold values in [{int(labels.min())}, {int(labels.max())}]; "
            f"this network has {num_labels} classes 0..{num_labels - 1}"
        )
    mask_labels, class_labels = [], []
    for frame in labels:
        classes = torch.unique(frame)  # [K], sorted
        mask_labels.append((frame.unsqueeze(0) == classes[:, None, None]).float())  # [K, H, W]
        class_labels.append(classes.long())
    return mask_labels, class_labels


# ---------------------------------------------------------------------------------- phases
def _part_of(name: str) -> str | None:
    if name.startswith(AUDIO_PROJECTION):
        return "audio_projection"
    if name.startswith(QUERY_EMBEDDINGS):
        return "query_embeddings"
    if name.startswith(QUERY_FEATURES):
        return "query_features"
    if name.startswith(PRIOR_EMBEDDINGS):
        return "prior_embeddings"
    if name.startswith(CLASS_PREDICTOR):
        return "class_predictor"
    if ".adapter." in name:
        return "swin_adapters" if name.startswith(SWIN_PREFIX) else "decoder_adapters"
    return None


def phase_parts(model: AAVS, phase: str) -> tuple[str, ...]:
    """Names of the parts trained in ``phase`` (docs/method.md §4)."""
    if phase not in PHASES:
        raise ValueError(f"unknown training phase {phase!r}: expected A or B")
    if phase == "B":
        return PARTS
    return _PHASE_A[model.config.semantic] + (("base",) if model.config.train_base else ())


def set_phase(model: AAVS, phase: str) -> None:
    """Set ``requires_grad`` for ``phase``; in A zero the Swin adapters; entering B (from any other
    phase) re-initialise them as the reference's phase-B ``from_pretrained`` did: weights N(0, init_std),
    biases zero (see :meth:`AAVS._init_added_weights`).

    Load a phase-B checkpoint *after* calling ``set_phase(model, "B")``.
    """
    trained = phase_parts(model, phase)
    for param in model.parameters():
        param.requires_grad_(False)
    for part, params in model.parameter_parts().items():
        for _, param in params:
            param.requires_grad_(part in trained)
    if phase == "A":
        for layer in model.swin_adapters():
            layer.adapter.zero_()
    elif model.phase != "B":
        for layer in model.swin_adapters():
            layer.adapter.normal_(model.config.mask2former.init_std)
    model.phase = phase


def phase_parameter_groups(model: AAVS, phase: str, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``phase``, one per part (named, for logging), all at ``lr`` and
    ``weight_decay`` like the reference. The model must already be in ``phase`` (:func:`set_phase`)."""
    if model.phase != phase:
        raise ValueError(f"the model is in phase {model.phase}; call set_phase(model, {phase!r}) first")
    parts = model.parameter_parts()
    return [
        {"name": part, "params": [p for _, p in parts[part]], "lr": lr, "weight_decay": weight_decay}
        for part in phase_parts(model, phase)
        if parts[part]
    ]


# ---------------------------------------------------------------------------------- building
def check_base_dir(path: str | Path) -> Path:
    """A local Hugging Face Mask2Former folder, resolved; InputError naming the missing file otherwise."""
    folder = Path(path).expanduser()
    hint = (
        "expected a local Hugging Face Mask2Former checkpoint folder (config.json + model.safetensors or "
        "pytorch_model.bin), e.g. facebook/mask2former-swin-base-ade-semantic downloaded beforehand"
    )
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder; {hint}")
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder / 'config.json'} is missing; {hint}")
    if not any((folder / name).is_file() for name in _M2F_WEIGHTS):
        raise InputError(f"{folder / 'model.safetensors'} is missing (and there is no pytorch_model.bin); {hint}")
    return folder.resolve()


def load_base_config(folder: Path) -> Mask2FormerConfig:
    config_file = folder / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{config_file}: not a readable JSON file ({err})") from err
    if not isinstance(raw, dict) or raw.get("model_type") != "mask2former":
        got = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise InputError(f"{config_file}: model_type is {got!r}, expected 'mask2former'")
    backbone = raw.get("backbone_config") or {}
    if not isinstance(backbone, dict) or backbone.get("model_type", "swin") != "swin":
        raise InputError(f"{config_file}: backbone_config.model_type must be 'swin' (AAVS adapts Swin layers)")
    try:
        return Mask2FormerConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"{config_file}: not a valid Mask2Former config ({err})") from err


def _apply_overrides(config: Mask2FormerConfig, fields: dict[str, Any], overrides: dict[str, Any]) -> None:
    aavs_fields = ("image_size", "audio_dim", "audio_hidden_dim", "adapter_reduction", "train_base")
    for key, value in overrides.items():
        if key in aavs_fields:
            fields[key] = value
        elif key in _MASK2FORMER_FIELDS and key not in ("backbone_config", "id2label", "label2id"):
            try:
                setattr(config, key, value)
            except (StrictDataclassError, ValueError, TypeError) as err:
                raise InputError(f"model setting {key}={value!r}: {err}") from err
        else:
            raise InputError(
                f"unknown model setting {key!r}: expected one of {', '.join(aavs_fields)} or a "
                "Mask2Former config field (e.g. num_queries, train_num_points); the classes come "
                "from the data's label2idx.json"
            )


def _instantiate(config: AAVSConfig, load_base: bool) -> Mask2FormerForUniversalSegmentation:
    """A fresh Mask2Former for ``config``: random for a preset base (or when ``load_base`` is False),
    loaded offline for a folder.

    A class predictor resized for the task starts from PyTorch's default ``nn.Linear`` init, as in the
    reference: transformers 4.35.2's ``from_pretrained`` counted a resized module as loaded, so it kept its
    constructor's init. A preset stands for the ADE20k checkpoint resized to the task and does the same.
    """
    if config.base in PRESETS or not load_base:
        mask2former = Mask2FormerForUniversalSegmentation(config.mask2former)
        mask2former.class_predictor.reset_parameters()
        return mask2former
    folder = check_base_dir(config.base)
    try:
        with _quiet_transformers():  # its load report and progress bar; we log what matters below
            loaded = Mask2FormerForUniversalSegmentation.from_pretrained(
                str(folder),
                config=config.mask2former,
                local_files_only=True,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                dtype=torch.float32,  # fp32 master weights whatever the file's dtype
            )
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError) as err:
        raise InputError(f"{folder}: could not load the Mask2Former weights ({type(err).__name__}: {err})") from err
    # output_loading_info=True: (model, info), which from_pretrained's annotation does not say.
    mask2former, info = cast(tuple[Mask2FormerForUniversalSegmentation, dict[str, Any]], loaded)
    resized = sorted(key for key, *_ in info.get("mismatched_keys", ()))
    if resized:
        log.info("re-initialised for the %s task (sizes differ from %s): %s", config.task, folder, ", ".join(resized))
    if any(key.startswith("class_predictor.") for key in resized):
        mask2former.class_predictor.reset_parameters()
    _reset_resized_queries(mask2former, resized)
    missing = sorted(key for key in info.get("missing_keys", ()) if not UNUSED_SWIN_NORM.search(key))
    if missing:
        log.warning("%s lacks %d weights, left randomly initialised: %s", folder, len(missing), ", ".join(few(missing)))
    return mask2former


# The query tables a base with another number of queries (ADE20k's 100 against the binary network's 30)
# cannot give: Mask2Former's names for them, relative to Mask2FormerForUniversalSegmentation.
QUERY_TABLES = ("queries_embedder", "queries_features")


def _reset_resized_queries(mask2former: Mask2FormerForUniversalSegmentation, resized: Sequence[str]) -> None:
    """Query tables whose size differs from the base's start from PyTorch's default ``nn.Embedding`` init,
    N(0, 1), as the reference's 4.35.2 ``from_pretrained`` left them (it counted a resized module as
    loaded). transformers 5 re-initialises a resized table itself (its ``_init_weights``: N(0, 1) in
    5.25); drawn here, the values do not depend on what a release of transformers does with mismatched
    sizes (docs/method.md §4)."""
    module = mask2former.model.transformer_module
    for name in QUERY_TABLES:
        if any(key.startswith(f"model.transformer_module.{name}.") for key in resized):
            getattr(module, name).reset_parameters()


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own warnings and progress bars off for one load (restored afterwards)."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_from_config(config: AAVSConfig, load_base: bool = True) -> AAVS:
    """The AAVS network described by ``config``, with the base folder's weights when ``load_base``
    (skip it when every weight is about to be loaded anyway)."""
    return AAVS(config, _instantiate(config, load_base))


def build_model(
    task: str,
    preset: str | None = None,
    pretrained: str | None = None,
    classes: Sequence[str] | None = None,
    **overrides: Any,
) -> AAVS:
    """An AAVS network for ``task`` (s4, ms3, avss-binary: stage one; avss: stage two) on a preset
    architecture (random weights), a local pre-trained Mask2Former folder, or both: the preset's
    architecture with its base weights from a folder pre-trained for it
    (:mod:`aavs.orchestrator.recipe.base_pretraining`), frozen as the method keeps its pre-trained base.
    In phase A.

    ``classes`` are the semantic network's class names in index order, background first: the data's
    label2idx.json (:func:`aavs.datasets.layout.class_names`), AVSBench's 71 by default; the binary
    networks are always background / sounding. ``overrides`` set ``image_size`` / ``audio_hidden_dim`` /
    ``adapter_reduction`` or any Mask2Former config field (``num_queries``, ``train_num_points``, ...).
    """
    get_task(task)
    if preset is not None:
        m2f_config, image_size = preset_config(preset, task, classes)
        base = preset
        if pretrained is not None:  # the preset's network on a base pre-trained for it (base_pretraining)
            base = str(check_base_dir(pretrained))
            _check_preset_architecture(preset, m2f_config, load_base_config(Path(base)), Path(base))
    elif pretrained is not None:
        folder = check_base_dir(pretrained)
        m2f_config, image_size = load_base_config(folder), DEFAULT_IMAGE_SIZE
        for key, value in task_sizes(task, classes=classes).items():
            setattr(m2f_config, key, value)
        base = str(folder)
    else:
        raise InputError("give a model preset (tiny, swin-base), a pretrained Mask2Former folder, or both")
    # Only a preset's random base trains: a pre-trained one stays frozen, as the method keeps ADE20k's.
    fields: dict[str, Any] = {"image_size": image_size, "train_base": preset == "tiny" and pretrained is None}
    _apply_overrides(m2f_config, fields, overrides)
    return build_from_config(AAVSConfig(task=task, base=base, mask2former=m2f_config, **fields))


# ------------------------------------------------------------------------------------ helpers
_ARCHITECTURE_FIELDS = ("hidden_dim", "feature_size", "mask_feature_size", "encoder_layers", "decoder_layers")
_BACKBONE_FIELDS = ("embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "patch_size")


def _check_preset_architecture(preset: str, ours: Mask2FormerConfig, given: Mask2FormerConfig, folder: Path) -> None:
    """A base folder given with a preset must hold that preset's architecture (its weights load into it)."""
    pairs = [(f, getattr(ours, f), getattr(given, f, None)) for f in _ARCHITECTURE_FIELDS]
    pairs += [
        (f"backbone_config.{f}", getattr(ours.backbone_config, f), getattr(given.backbone_config, f, None))
        for f in _BACKBONE_FIELDS
    ]
    wrong = [f"{name} {theirs!r} (the preset has {mine!r})" for name, mine, theirs in pairs if mine != theirs]
    if wrong:
        raise InputError(f"{folder / 'config.json'}: not the {preset} preset's architecture: {', '.join(wrong)}")


@torch.no_grad()
def _check_shape(name: str, tensor: Tensor, expected: tuple[int | None, ...]) -> None:
    if tensor.ndim != len(expected) or any(e is not None and s != e for s, e in zip(tensor.shape, expected)):
        want = ", ".join("*" if e is None else str(e) for e in expected)
        raise ValueError(f"{name}: expected shape [{want}], got {list(tensor.shape)}")
