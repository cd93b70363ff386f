"""The model side of the reference's training recipe: which parts train in each phase, the initial
values of the modules the ADE20k checkpoint lacks, drop-path on every Swin block, the matcher's class
cost, and when phase B starts (docs/method.md §4)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Mask2FormerForUniversalSegmentation
from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher
from transformers.models.swin.modeling_swin import SwinDropPath

from aavs.models import build_model, set_phase
from aavs.models.modeling_aavs import AAVS, phase_parameter_groups
from aavs.models.presets import preset_config
from aavs.orchestrator.recipe.config import TrainConfig

S = 128  # tiny preset input size

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ade_like_dir(tmp_path_factory):
    """A tiny Mask2Former saved like the ADE20k checkpoint: 150 labels, Swin drop-path rate 0.3."""
    config, _ = preset_config("tiny", "s4")
    labels = {i: f"ade_{i}" for i in range(150)}
    config.id2label, config.label2id = labels, {v: k for k, v in labels.items()}
    config.backbone_config.drop_path_rate = 0.3
    torch.manual_seed(5)
    folder = tmp_path_factory.mktemp("m2f") / "mask2former-tiny-ade"
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    return folder


def tiny(task: str, seed: int = 0, train_base: bool = False) -> AAVS:
    torch.manual_seed(seed)
    return build_model(task, preset="tiny", train_base=train_base)


def trainable(model: AAVS) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def values(modules, kind: str) -> torch.Tensor:
    """The weights (kind "weight") or biases of Linear layers, flattened into one tensor."""
    return torch.cat([getattr(m, kind).detach().flatten() for m in modules])


def adapter_linears(adapted) -> list[torch.nn.Linear]:
    return [layer for a in adapted for layer in (a.adapter[0], a.adapter[2])]


# ------------------------------------------------------------------------------- phases
def test_stage_two_keeps_its_query_features_frozen_in_both_phases():
    semantic, binary = tiny("avss"), tiny("s4")
    for phase in ("A", "B"):
        set_phase(semantic, phase)
        set_phase(binary, phase)
        assert not any("queries_features" in name for name in trainable(semantic)), phase
        assert any("queries_features" in name for name in trainable(binary)), phase
        groups = [g["name"] for g in phase_parameter_groups(semantic, phase, 1e-3, 0.05)]
        expected = ["audio_projection", "query_embeddings", "decoder_adapters", "class_predictor", "prior_embeddings"]
        assert groups == expected + (["swin_adapters"] if phase == "B" else [])
    assert not any("queries_features" in name for name in semantic.trainable_state_dict())


def test_a_random_semantic_base_trains_its_query_features_in_both_phases():
    """train_base (the tiny preset) trains what a pre-trained base would keep frozen, query features
    included: a random base has no pre-trained values to keep."""
    model = tiny("avss", train_base=True)
    for phase in ("A", "B"):
        set_phase(model, phase)
        assert any("queries_features" in name for name in trainable(model)), phase
        base = next(g for g in phase_parameter_groups(model, phase, 1e-3, 0.05) if g["name"] == "base")
        features = model.model.model.transformer_module.queries_features.weight
        assert any(p is features for p in base["params"])


# --------------------------------------------------------------------- initial values
def assert_normal(sample: torch.Tensor, std: float) -> None:
    assert sample.mean().abs() < 3 * std / sample.numel() ** 0.5
    assert sample.std().item() == pytest.approx(std, rel=0.1)


def assert_uniform(sample: torch.Tensor, bound: float) -> None:
    assert sample.abs().max() <= bound
    assert sample.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)


def test_added_modules_start_as_the_reference_from_pretrained():
    model = tiny("avss")
    m2f = model.model.model
    std = model.config.mask2former.init_std
    assert (std, model.config.mask2former.init_xavier_std) == (0.02, 1.0)
    # pixel-decoder adapters: N(0, 0.02), zero biases
    pixel = adapter_linears(layer.self_attn.output_proj for layer in m2f.pixel_level_module.decoder.encoder.layers)
    assert_normal(values(pixel, "weight"), std)
    assert torch.count_nonzero(values(pixel, "bias")) == 0
    # decoder self-attention adapters: xavier-uniform (bound sqrt(6 / (fan_in + fan_out))), zero biases
    decoder = adapter_linears(layer.self_attn.out_proj for layer in m2f.transformer_module.decoder.layers)
    for layer in decoder:
        assert_uniform(layer.weight.detach(), math.sqrt(6 / (layer.in_features + layer.out_features)))
    assert torch.count_nonzero(values(decoder, "bias")) == 0
    # prior embeddings: N(0, 0.02) (3 x 64 values, hence the loose tolerance)
    prior = m2f.transformer_module.decoder.prior_embeddings.weight.detach()
    assert prior.std().item() == pytest.approx(std, rel=0.25)
    # Swin adapters: zero in phase A, N(0, 0.02) with zero biases entering phase B
    swin = adapter_linears(model.swin_adapters())
    assert torch.count_nonzero(values(swin, "weight")) == 0
    set_phase(model, "B")
    assert_normal(values(swin, "weight"), std)
    assert torch.count_nonzero(values(swin, "bias")) == 0
    # class predictor: nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    head = model.model.class_predictor
    bound = 1 / head.in_features**0.5
    assert_uniform(head.weight.detach(), bound)
    assert head.bias.abs().max() <= bound and torch.count_nonzero(head.bias) == head.out_features


def test_initial_values_depend_only_on_the_seed():
    def phase_b(seed: int) -> AAVS:
        model = tiny("avss", seed=seed)
        set_phase(model, "B")
        return model

    first, second, other = phase_b(3), phase_b(3), phase_b(4)
    for name, value in first.trainable_state_dict().items():
        assert torch.equal(value, second.trainable_state_dict()[name]), name
    assert not torch.equal(first.model.class_predictor.weight, other.model.class_predictor.weight)


def test_a_pretrained_base_resized_class_predictor_gets_the_default_linear_init(ade_like_dir):
    torch.manual_seed(0)
    model = build_model("avss", pretrained=str(ade_like_dir), image_size=S)
    head = model.model.class_predictor
    assert head.weight.shape == (72, 64)
    assert_uniform(head.weight.detach(), 1 / head.in_features**0.5)


# ---------------------------------------------------------------------------- drop path
def drop_probs(model: AAVS) -> list[float]:
    blocks = [b for stage in model.model.model.pixel_level_module.encoder.swin.encoder.layers for b in stage.blocks]
    assert all(isinstance(b.drop_path, SwinDropPath) for b in blocks)
    return [b.drop_path.drop_prob for b in blocks]


def test_every_swin_block_drops_with_the_config_rate_swin_base():
    model = build_model("s4", preset="swin-base")
    assert model.config.mask2former.backbone_config.drop_path_rate == 0.3
    assert drop_probs(model) == [0.3] * 24
    assert drop_probs(tiny("s4")) == [0.0] * 5


def test_every_swin_block_drops_with_the_base_rate_in_train_mode_only(ade_like_dir):
    torch.manual_seed(0)
    model = build_model("s4", pretrained=str(ade_like_dir), image_size=S)
    assert drop_probs(model) == [0.3] * 5
    drop = model.model.model.pixel_level_module.encoder.swin.encoder.layers[0].blocks[0].drop_path
    x = torch.ones(1000, 4, 8)
    torch.manual_seed(1)
    kept = drop.train()(x)[:, 0, 0]
    dropped = (kept == 0).float().mean().item()
    assert 0.24 < dropped < 0.36 and torch.allclose(kept[kept != 0], torch.tensor(1 / 0.7))
    assert torch.equal(drop.eval()(x), x)
    g = torch.Generator().manual_seed(2)
    pixels, audio = torch.randn(2, 3, S, S, generator=g), torch.randn(2, 128, generator=g)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(pixels, audio).masks_queries_logits, model(pixels, audio).masks_queries_logits)
        model.train()
        torch.manual_seed(3)
        first = model(pixels, audio).masks_queries_logits
        torch.manual_seed(4)
        assert not torch.equal(first, model(pixels, audio).masks_queries_logits)


# ------------------------------------------------------------------------------ matcher
def test_matcher_class_cost_is_one_while_the_loss_class_weight_stays_two():
    model = tiny("s4")
    m2f = model.model
    matcher = m2f.criterion.matcher
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice) == (1.0, 5.0, 5.0)
    assert m2f.weight_dict == {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert m2f.criterion.weight_dict["loss_cross_entropy"] == 2.0
    assert m2f.criterion.empty_weight[-1].item() == pytest.approx(0.1)

    # One all-ones target of class 1 and two queries: query 0 has the better mask (logit 8 against 2),
    # query 1 the more confident class (p = 0.8 against 0.1). The masks cost query 1 about 0.95 more;
    # its class saves it 0.7 at class cost 1 (query 0 matched) but 1.4 at class cost 2 (query 1 matched).
    masks = torch.stack([torch.full((64, 64), 8.0), torch.full((64, 64), 2.0)])[None]  # [1, 2, 64, 64]
    classes = torch.tensor([[0.45, 0.1, 0.45], [0.1, 0.8, 0.1]]).log()[None]  # [1, 2, 3]
    targets, labels = [torch.ones(1, 64, 64)], [torch.tensor([1])]
    torch.manual_seed(0)
    (ours,) = matcher(masks, classes, targets, labels)
    old = Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=matcher.num_points)
    torch.manual_seed(0)
    (with_class_weight,) = old(masks, classes, targets, labels)
    assert ours[0].tolist() == [0] and with_class_weight[0].tolist() == [1]


# ------------------------------------------------------------------------ phase B start
@pytest.mark.parametrize(("task", "warmup", "divisor"), [("s4", 0.5, 2), ("avss", 1 / 3, 3)])
def test_phase_b_starts_at_epochs_floor_divided_like_the_reference(task, warmup, divisor):
    """The tasks' default adapter_warmup (aavs.datasets.tasks): 0.5 for stage one, 1/3 for stage two."""
    for epochs in range(1, 121):
        config = TrainConfig(task=task, data_root="data", trial_dir="trial", epochs=epochs)
        assert config.adapter_warmup == warmup
        phase_a = epochs // divisor
        assert [config.phase_of(e) for e in range(epochs)] == ["A"] * phase_a + ["B"] * (epochs - phase_a), epochs


def test_phase_b_start_examples():
    def first_b(task: str, epochs: int, warmup: float) -> int:
        config = TrainConfig(task=task, data_root="data", trial_dir="trial", epochs=epochs, adapter_warmup=warmup)
        return next(e for e in range(epochs) if config.phase_of(e) == "B")

    assert first_b("avss", 10, 1 / 3) == 3 and first_b("avss", 8, 1 / 3) == 2
    assert first_b("s4", 7, 0.5) == 3 and first_b("s4", 9, 0.5) == 4  # round() gave 4 for both
    assert first_b("s4", 100, 0.29) == 29  # 100 * 0.29 is 28.999999999999996 in floating point
