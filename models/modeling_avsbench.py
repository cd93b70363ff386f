"""AVSBench's baseline (Zhou et al., ECCV 2022) as ``model.type: avsbench``, with Stepping Stones' prior.

The network, per frame of a video (docs/method.md §9 says it in prose)::

    frames [N, 3, S, S] -> backbone (PVT-v2 or ResNet) -> 4 maps, strides 4, 8, 16, 32
      each map -> DilatedReduction (4 dilated 3x3 convs, summed) -> [N, D, S/k, S/k]
               -> TPAVI (audio-visual attention over a group of frames) -> F_i
               (+ PriorEmbedding of stage one's mask, stage two only)
    F_4 -> fusion -> (+ F_3) -> fusion -> (+ F_2) -> fusion -> (+ F_1) -> fusion -> head -> logits [N, K, S, S]

K is 1 (the sounding logit) for the binary tasks, the number of classes for ``avss``. TPAVI relates each
position of a frame to the audio of every frame of its group (the public code's groups of 5 frames; a
10-frame AVSBench-semantic video is two groups). Frames belong to videos, so unlike AAVS the network
needs to know where each video starts (``video_frames``) and the recipe keeps a video's unannotated
frames in a training step (the registry's ``temporal``), counting only the annotated ones in the loss.

Loss, as the public code trains it, normalised per frame over the frames that count: binary
cross-entropy (binary tasks) or cross-entropy (``avss``) averaged over pixels, plus ``avm_weight`` times
the audio-visual matching loss: per stage, the KL divergence between the softmax of the stage's audio
embedding and of the visual map averaged under the predicted mask (soft for binary, the argmax's
foreground for ``avss``), summed over channels and averaged over the four stages.

**Stepping Stones for it (ours).** The paper applies its strategy to existing methods without saying
how the prior enters them. Ours: stage one's sounding mask, resized to each stage, enters through a
1x1 convolution added to that stage's fused map before the decoder (:class:`PriorEmbedding`), zero
at initialisation, so the network with a zero-initialised prior computes the baseline. It is the
analogue of what AAVS does with the prior in its pixel decoder. The end-to-end arm is the same network
given no prior; the two arms differ only in the prior.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aavs.datasets.transforms import MASK_SIZE
from aavs.models.clip_inference import chunked_scores, clip_inputs
from aavs.models.configuration_avsbench import AVSBenchConfig, make_config
from aavs.models.video_loss import frame_weights, video_frames_or_one
from aavs.models.weights import copy_state

log = logging.getLogger(__name__)

DILATIONS = (3, 6, 12, 18)  # DilatedReduction's four branches
HEAD_HIDDEN = (128, 32)  # the head's two hidden widths at full size


# ----------------------------------------------------------------------------------- backbones
def build_backbone(config: AVSBenchConfig) -> nn.Module:
    """The preset's backbone with random weights (:func:`backbone_maps` runs it)."""
    if config.backbone == "pvt-v2-b5":
        from timm.models.pvt_v2 import pvt_v2_b5  # timm is imported for this backbone only

        return pvt_v2_b5(pretrained=False, num_classes=0, drop_path_rate=config.drop_path)
    from torchvision.models.resnet import BasicBlock, ResNet, resnet50

    resnet = resnet50(weights=None) if config.backbone == "resnet-50" else ResNet(BasicBlock, [1, 1, 1, 1])
    resnet.fc = nn.Identity()  # features only: no classifier weights
    return resnet


def backbone_maps(backbone: nn.Module, pixel_values: Tensor) -> list[Tensor]:
    """The four stage maps ``[N, C_i, S/4, ...]`` ... ``[N, C_4, S/32, S/32]``."""
    from torchvision.models.resnet import ResNet

    if isinstance(backbone, ResNet):
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(pixel_values))))
        maps = []
        for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
            x = layer(x)
            maps.append(x)
        return maps
    return list(backbone.forward_intermediates(pixel_values, intermediates_only=True))  # type: ignore[operator]


# ------------------------------------------------------------------------------- the blocks
class DilatedReduction(nn.Module):
    """A stage map to the decoder width: four 3x3 convolutions at dilations 3, 6, 12, 18, summed."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        branches = [nn.Conv2d(in_channels, out_channels, 3, padding=d, dilation=d) for d in DILATIONS]
        for branch in branches:
            nn.init.normal_(branch.weight, 0.0, 0.01)
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def frame_groups(video_frames: Sequence[int], group: int) -> list[int]:
    """The TPAVI group of each frame: a video's frames in consecutive runs of ``group`` (the last may
    be shorter), numbered across the batch."""
    ids, next_id = [], 0
    for n in video_frames:
        for start in range(0, n, group):
            ids += [next_id] * min(group, n - start)
            next_id += 1
    return ids


class TPAVI(nn.Module):
    """Temporal pixel-wise audio-visual interaction: a non-local block whose keys are the audio.

    Each position p of a frame attends to every position q of every frame t of its group with weight
    ``theta(x_p) . phi(a_t) / (T H W)`` (no softmax) and takes ``g(x_q)``; the result goes through a
    1x1 convolution and a zero-initialised batch norm, is added to x, and a layer norm over channels
    ends it. The audio is the same at every position of a frame, so the sum over q factorises into a
    ``[I, I]`` matrix per group (``sum_t phi(a_t) (sum_hw g)_t^T``), never the ``[THW, THW]`` attention.
    """

    def __init__(self, channels: int, audio_dim: int, audio_bias: bool) -> None:
        super().__init__()
        inner = channels // 2
        self.audio_proj = nn.Linear(audio_dim, channels, bias=audio_bias)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Linear(channels, inner)  # a 1x1 convolution of the (spatially constant) audio map
        self.g = nn.Conv2d(channels, inner, 1)
        self.out_proj = nn.Conv2d(inner, channels, 1)
        self.out_norm = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.out_norm.weight)
        nn.init.zeros_(self.out_norm.bias)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor, audio: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
        """x ``[N, D, h, w]``, audio ``[N, 128]``, groups ``[N]`` (the group of each frame) ->
        (fused map ``[N, D, h, w]``, projected audio ``[N, D]``)."""
        n, _, h, w = x.shape
        audio_embeds = self.audio_proj(audio)  # [N, D]
        keys = self.phi(audio_embeds)  # [N, I]
        values = self.g(x).sum((2, 3))  # [N, I]
        num_groups = int(groups.max()) + 1
        per_frame = keys.unsqueeze(2) * values.unsqueeze(1)  # [N, I, I]
        per_group = per_frame.new_zeros((num_groups, *per_frame.shape[1:])).index_add(0, groups, per_frame)
        positions = torch.bincount(groups, minlength=num_groups).to(x.dtype) * (h * w)  # T H W per group
        mixing = (per_group / positions[:, None, None])[groups]  # [N, I, I]
        y = torch.einsum("nihw,nij->njhw", self.theta(x), mixing)  # [N, I, h, w]
        z = self.out_norm(self.out_proj(y)) + x
        return self.norm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), audio_embeds


class ResidualConvUnit(nn.Module):
    """``conv2(relu(conv1(relu(x)))) + relu(x)``: the public code's unit, whose in-place ReLU makes its
    shortcut carry ``relu(x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """One decoder step: the coarser result plus a unit of the stage's map, a unit, then x2 up."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels)
        self.unit = ResidualConvUnit(channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        return F.interpolate(self.unit(x), scale_factor=2, mode="bilinear", align_corners=True)


class SegmentationHead(nn.Module):
    """conv 3x3, x2 up, conv 3x3, ReLU, conv 1x1: the decoder's result to logits at the input size."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = tuple(max(channels * h // 256, 8) for h in HEAD_HIDDEN)
        self.conv1 = nn.Conv2d(channels, hidden[0], 3, padding=1)
        self.conv2 = nn.Conv2d(hidden[0], hidden[1], 3, padding=1)
        self.classifier = nn.Conv2d(hidden[1], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(self.conv1(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.classifier(F.relu(self.conv2(x)))


class PriorEmbedding(nn.Module):
    """Stage one's sounding mask into a stage's fused map: ``map + conv1x1(resize(prior))``, zero at
    initialisation (ours: the module docstring says why)."""

    def __init__(self, channels: int, stages: int = 4) -> None:
        super().__init__()
        convs = [nn.Conv2d(1, channels, 1) for _ in range(stages)]
        for conv in convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # a Conv2d made with its bias
        self.stages = nn.ModuleList(convs)

    def forward(self, maps: list[Tensor], prior: Tensor) -> list[Tensor]:
        prior = prior.unsqueeze(1).to(maps[0].dtype)  # [N, 1, h, w]
        return [
            x + conv(F.interpolate(prior, size=x.shape[-2:], mode="bilinear", align_corners=False))
            for x, conv in zip(maps, self.stages)
        ]


# --------------------------------------------------------------------------------- the network
@dataclass
class AVSBenchOutput:
    """A forward pass: logits ``[N, K, S, S]``, the fused stage maps and projected audio the matching
    loss reads, and the loss when labels were given."""

    logits: Tensor
    stage_maps: list[Tensor] = field(default_factory=list)  # 4 x [N, D, S/k, S/k]
    audio_embeds: list[Tensor] = field(default_factory=list)  # 4 x [N, D]
    loss: Tensor | None = None


class AVSBench(nn.Module):
    """The AVSBench baseline network; implements :class:`aavs.models.protocol.SegmentationModel`."""

    def __init__(self, config: AVSBenchConfig) -> None:
        super().__init__()
        self.config = config
        self.phase: str | None = None
        d = config.channel
        self.backbone = build_backbone(config)
        self.reduce = nn.ModuleList(DilatedReduction(c, d) for c in config.stage_channels)
        self.tpavi = nn.ModuleList(TPAVI(d, 128, audio_bias=not config.semantic) for _ in config.stage_channels)
        self.prior_embedding = PriorEmbedding(d) if config.semantic else None
        self.fusion = nn.ModuleList(FusionBlock(d) for _ in config.stage_channels)  # finest first
        self.head = SegmentationHead(d, config.out_channels)

    def forward(
        self,
        pixel_values: Tensor,  # [N, 3, S, S] normalised frames, each video's in order
        audio: Tensor,  # [N, 128] VGGish embedding of each frame's second
        prior: Tensor | None = None,  # [N, h, w] in [0, 1]: stage one's masks (avss only)
        labels: Tensor | None = None,  # [N, H, W] int64 class per pixel
        loss_frames: Tensor | None = None,  # [N] bool, frames that count in the loss (default: all)
        video_frames: Sequence[int] | None = None,  # frames per video, in order (default: one video)
    ) -> AVSBenchOutput:
        n = pixel_values.shape[0]
        if tuple(audio.shape) != (n, 128):
            raise ValueError(f"audio: expected [{n}, 128], got {list(audio.shape)}")
        video_frames = video_frames_or_one(video_frames, n)
        groups = torch.tensor(frame_groups(video_frames, self.config.group_frames), device=pixel_values.device)
        # The public code's VGGish ends in a ReLU; ours gives the last layer's raw output (models/vggish.py).
        audio = F.relu(audio.to(pixel_values.dtype))
        maps, audio_embeds = [], []
        for x, reduce, tpavi in zip(backbone_maps(self.backbone, pixel_values), self.reduce, self.tpavi):
            fused, embeds = tpavi(reduce(x), audio, groups)
            maps.append(fused)
            audio_embeds.append(embeds)
        if prior is not None:
            if self.prior_embedding is None:
                raise ValueError(f"the {self.config.task} network takes no prior (only the avss network does)")
            maps = self.prior_embedding(maps, prior)
        x = self.fusion[3](maps[3])
        for stage in (2, 1, 0):
            x = self.fusion[stage](x, maps[stage])
        output = AVSBenchOutput(logits=self.head(x), stage_maps=maps, audio_embeds=audio_embeds)
        if labels is not None:
            output.loss = self._loss(output, labels, loss_frames, video_frames)
        return output

    # ------------------------------------------------------------------------------ the loss
    def _loss(
        self, output: AVSBenchOutput, labels: Tensor, loss_frames: Tensor | None, video_frames: Sequence[int]
    ) -> Tensor:
        """Segmentation loss + ``avm_weight`` x matching loss, each averaged over a video's frames that
        count (module docstring), then over the batch's videos (:mod:`aavs.models.video_loss`). With no
        frame that counts, zero times the loss of every frame: a zero with a graph."""
        n = labels.shape[0]
        selected = torch.ones(n, dtype=torch.bool) if loss_frames is None else loss_frames.detach().bool().cpu()
        scale = 1.0
        if not selected.any():
            selected, scale, video_frames = torch.ones(n, dtype=torch.bool), 0.0, [n]
        weights = frame_weights(selected, video_frames).to(labels.device)  # [N], sums to 1 over videos with frames
        logits = output.logits.float()
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        if self.config.semantic:
            per_frame = F.cross_entropy(logits, labels, reduction="none").mean((1, 2))  # [N]
            foreground = (logits.argmax(1, keepdim=True) != 0).float()  # [N, 1, H, W], no gradient
        else:
            target = (labels > 0).float()
            per_frame = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none").mean((1, 2))
            foreground = logits  # pooled, then a sigmoid (the public code's order)
        loss = (per_frame * weights).sum()
        if self.config.avm_weight:
            matching = matching_loss(output, foreground, not self.config.semantic)  # [N]
            loss = loss + self.config.avm_weight * (matching * weights).sum()
        return loss * scale

    # ------------------------------------------------------------------------------ inference
    def class_scores(self, output: AVSBenchOutput) -> Tensor:
        """Per-class scores ``[N, C, 224, 224]``: softmax of the class logits, or (binary) background /
        sounding as ``1 - sigmoid``, ``sigmoid`` of the sounding logit."""
        logits = output.logits.float()
        if logits.shape[-2:] != (MASK_SIZE, MASK_SIZE):
            logits = F.interpolate(logits, size=(MASK_SIZE, MASK_SIZE), mode="bilinear", align_corners=False)
        if self.config.semantic:
            return logits.softmax(1)
        sounding = logits.sigmoid()
        return torch.cat([1 - sounding, sounding], 1)

    @torch.no_grad()
    def predict(self, frames: Any, audio: Any, prior: Any = None, batch_size: int | None = None) -> Tensor:
        """One clip: RGB uint8 frames ``[T, H, W, 3]``, embeddings ``[T, 128]`` (and, for avss, prior
        masks ``[T, h, w]`` in [0, 1]) -> scores ``[T, C, 224, 224]`` float32 on the CPU, in eval mode.

        ``batch_size`` frames at a time, rounded to whole TPAVI groups (the result does not depend on it).
        """
        frames, audio_t, prior_t = clip_inputs(
            frames, audio, prior, audio_dim=128, takes_prior=self.config.semantic, task=self.config.task
        )
        if frames.shape[0] == 0:
            return torch.zeros(0, self.config.num_labels, MASK_SIZE, MASK_SIZE)
        group = self.config.group_frames
        step = max(group, (batch_size or frames.shape[0]) // group * group)
        return chunked_scores(self, frames, audio_t, prior_t, self.config.image_size, step)

    # ------------------------------------------------------------------------ weights and phases
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Every weight and batch-norm statistic: the whole network trains, as in the public code."""
        return self.state_dict()

    def load_trainable_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True) -> None:
        copy_state(self.state_dict(), state_dict, strict, "the weights given", "AVSBench")

    def set_phase(self, phase: str) -> None:
        """No warm-up (the registry entry says so): every epoch is phase B, which trains everything."""
        if phase not in ("A", "B"):
            raise ValueError(f"unknown phase {phase!r}")
        self.phase = phase

    def phase_parameter_groups(self, phase: str, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]

    def save_pretrained(self, folder: str | Path) -> Path:
        from aavs.models.checkpoint_avsbench import save_checkpoint  # it imports this module

        return save_checkpoint(self, folder)


def matching_loss(output: AVSBenchOutput, foreground: Tensor, soft: bool) -> Tensor:
    """The audio-visual matching loss of each frame ``[N]``: per stage, KL(softmax(audio embedding) ||
    softmax(visual map averaged under the foreground)) summed over channels; the mean of the stages.

    ``foreground`` ``[N, 1, H, W]``: logits to pool then squash (``soft``), or a 0/1 mask to pool."""
    per_stage = []
    for visual, audio in zip(output.stage_maps, output.audio_embeds):
        mask = F.adaptive_avg_pool2d(foreground, (visual.shape[-2], visual.shape[-1]))
        if soft:
            mask = mask.sigmoid()
        pooled = (F.relu(visual.float()) * mask).mean((2, 3))  # [N, D]
        kl = F.kl_div(pooled.log_softmax(-1), audio.float().softmax(-1), reduction="none").sum(-1)
        per_stage.append(kl)
    return torch.stack(per_stage).mean(0)


def build_model(
    task: str,
    *,
    preset: str | None = None,
    pretrained: str | None = None,
    classes: Sequence[str] | None = None,
    **overrides: Any,
) -> AVSBench:
    """A fresh ``task`` network on ``preset`` (default ``pvt-v2-b5``); ``pretrained``: a local file of the
    backbone's ImageNet weights as their authors publish them (PVT-v2's ``pvt_v2_b5.pth``,
    torchvision's ``resnet50-*.pth``), which the public code starts from."""
    model = AVSBench(make_config(task, preset or "pvt-v2-b5", classes, **overrides))
    if pretrained:
        from aavs.models.checkpoint_avsbench import load_backbone_weights

        load_backbone_weights(model, pretrained)
    model.set_phase("B")
    return model
