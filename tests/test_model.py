"""The AAVS network on the tiny preset: shapes, audio queries, adapters, phases, the prior, the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aavs.datasets.errors import InputError
from aavs.datasets.layout import AVSBENCH_CLASSES, class_names
from aavs.models import build_model, phase_parameter_groups, set_phase
from aavs.models.adapters import AdaptedLinear
from aavs.models.modeling_aavs import AAVSOutput, frame_targets

S = 128  # tiny preset input size


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(task: str, seed: int = 0, train_base: bool = False):
    """The tiny preset with the method's freezing (the preset itself trains its random base)."""
    torch.manual_seed(seed)
    return build_model(task, preset="tiny", train_base=train_base)


def batch(n: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, S, S, generator=g), torch.randn(n, 128, generator=g)


def half_prior(n: int = 1) -> torch.Tensor:
    """Sounding (1) on the left half of a 224 x 224 mask, silent (0) on the right."""
    prior = torch.zeros(n, 224, 224)
    prior[:, :, :112] = 1.0
    return prior


def labels_for(n: int, num_labels: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 224, 224, dtype=torch.long)
    for i in range(n):  # a square of one class per frame on background
        c = int(torch.randint(1, num_labels, (1,), generator=g))
        labels[i, 40 + 10 * i : 140, 60:160] = c
    return labels


# ----------------------------------------------------------------------------------- shapes
def test_forward_shapes_and_scores_binary():
    model = tiny("s4").eval()
    pixels, audio = batch(3)
    with torch.no_grad():
        out = model(pixels, audio)
    assert out.loss is None
    assert out.class_queries_logits.shape == (3, 10, 3)  # 10 queries, background + sounding + no-object
    assert out.masks_queries_logits.shape == (3, 10, S // 4, S // 4)
    assert len(out.auxiliary_logits) == 3  # decoder_layers 4: 3 earlier predictions
    scores = model.class_scores(out)
    assert scores.shape == (3, 2, 224, 224)
    frames = np.random.default_rng(0).integers(0, 256, (3, 100, 150, 3), dtype=np.uint8)
    predicted = model.predict(frames, audio.numpy())
    assert predicted.shape == (3, 2, 224, 224) and predicted.dtype == torch.float32
    assert predicted.device.type == "cpu"
    assert ((predicted >= 0) & (predicted <= 10)).all()  # a sum over 10 queries of products in [0, 1]


def test_forward_shapes_semantic_with_prior_and_loss():
    model = tiny("avss")
    pixels, audio = batch(2)
    out = model(pixels, audio, prior=torch.rand(2, 224, 224), labels=labels_for(2, 71))
    assert out.class_queries_logits.shape == (2, 20, 72)
    assert out.masks_queries_logits.shape == (2, 20, S // 4, S // 4)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss > 0
    frames = np.zeros((2, 64, 80, 3), dtype=np.uint8)
    predicted = model.predict(frames, audio, prior=np.full((2, 50, 60), 0.7), batch_size=1)
    assert predicted.shape == (2, 71, 224, 224) and predicted.dtype == torch.float32
    assert model.training, "predict restores the training mode"


def test_class_scores_are_query_sums_of_class_probability_times_mask():
    model = tiny("s4")
    # one query; class logits (0, 0, 0) -> each of bg, sounding, no-object has probability 1/3
    masks = torch.full((1, 1, 32, 32), -30.0)
    masks[..., :16] = 30.0  # mask on the left half (sigmoid ~1), off on the right (~0)
    out = AAVSOutput(class_queries_logits=torch.zeros(1, 1, 3), masks_queries_logits=masks)
    scores = model.class_scores(out)
    assert scores.shape == (1, 2, 224, 224)
    assert torch.allclose(scores[0, :, :, :100], torch.full((2, 224, 100), 1 / 3), atol=1e-6)
    assert torch.allclose(scores[0, :, :, 124:], torch.zeros(2, 224, 100), atol=1e-6)
    # two queries add up
    out2 = AAVSOutput(class_queries_logits=torch.zeros(1, 2, 3), masks_queries_logits=masks.repeat(1, 2, 1, 1))
    assert torch.allclose(model.class_scores(out2), 2 * scores, atol=1e-6)


def test_bad_inputs_are_named():
    model = tiny("s4")
    pixels, audio = batch(2)
    with pytest.raises(ValueError, match=r"audio: expected shape \[2, 128\], got \[2, 64\]"):
        model(pixels, audio[:, :64])
    with pytest.raises(ValueError, match="takes no prior"):
        model(pixels, audio, prior=torch.rand(2, 224, 224))
    with pytest.raises(InputError, match=r"frames: expected RGB uint8 \[T, H, W, 3\], got float32"):
        model.predict(np.zeros((2, 8, 8, 3), dtype=np.float32), audio)
    with pytest.raises(InputError, match=r"audio: expected \[2, 128\]"):
        model.predict(np.zeros((2, 8, 8, 3), dtype=np.uint8), audio[:1])
    with pytest.raises(InputError, match=r"values must lie in \[0, 1\]"):
        tiny("avss").predict(np.zeros((2, 8, 8, 3), dtype=np.uint8), audio, prior=np.full((2, 8, 8), 2.0))


# ------------------------------------------------------------------------------------ audio
def test_audio_enters_the_query_features_and_changes_the_masks():
    model = tiny("s4").eval()
    decoder = model.model.model.transformer_module.decoder
    seen = []
    hook = decoder.layernorm.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    pixels, audio = batch(2)
    with torch.no_grad():
        out_a = model(pixels, audio)
        first = seen[0]  # [Q, N, D], the decoder's input query features
        a = model.audio_proj(audio)  # [N, D]
        e = model.model.model.transformer_module.queries_embedder.weight  # [Q, D]
        f = model.model.model.transformer_module.queries_features.weight  # [Q, D]
        cos = (e @ a.T) / (e.norm(dim=1)[:, None] * a.norm(dim=1)[None, :])  # [Q, N]
        expected = f[:, None, :] + cos[..., None] * a[None]
        assert torch.allclose(first, expected, atol=1e-5)
        out_b = model(pixels, audio.flip(0))  # each frame now gets the other's audio
        out_a2 = model(pixels, audio)
    hook.remove()
    assert not torch.allclose(seen[len(seen) // 3], first)  # second pass: different features
    assert (out_a.masks_queries_logits - out_b.masks_queries_logits).abs().max() > 1e-3
    assert torch.equal(out_a.masks_queries_logits, out_a2.masks_queries_logits)


# --------------------------------------------------------------------------------- adapters
@pytest.mark.parametrize("task,mode", [("s4", "replace"), ("avss", "follow")])
def test_adapter_placement(task, mode):
    model = tiny(task)
    config = model.config.mask2former
    swin = model.swin_adapters()
    assert len(swin) == 2 * sum(config.backbone_config.depths)
    assert {a.adapter_mode for a in swin} == {"residual"}
    decoder_side = [m for m in model.modules() if isinstance(m, AdaptedLinear) and m not in swin]
    assert len(decoder_side) == config.encoder_layers + config.decoder_layers - 1
    assert {a.adapter_mode for a in decoder_side} == {mode}
    pixel_decoder = model.model.model.pixel_level_module.decoder.encoder.layers
    assert all(isinstance(layer.self_attn.output_proj, AdaptedLinear) for layer in pixel_decoder)
    first = model.model.model.transformer_module.decoder.layers[0].self_attn.out_proj
    assert first.adapter[0].in_features == 64 and first.adapter[0].out_features == 16  # d -> d/4


@pytest.mark.parametrize("task,uses_projection", [("s4", False), ("avss", True)])
def test_stage_one_adapter_replaces_the_projection_stage_two_follows_it(task, uses_projection):
    model = tiny(task).eval()
    pixels, audio = batch(1)
    with torch.no_grad():
        before = model(pixels, audio).masks_queries_logits
        model.model.model.pixel_level_module.decoder.encoder.layers[0].self_attn.output_proj.weight.mul_(3.0)
        after = model(pixels, audio).masks_queries_logits
    assert (not torch.equal(before, after)) == uses_projection


# ----------------------------------------------------------------------------------- phases
def expected_trainable(name: str, semantic: bool, phase: str) -> bool:
    swin_adapter = name.startswith("model.model.pixel_level_module.encoder.") and ".adapter." in name
    parts = [
        name.startswith("audio_proj."),
        "queries_embedder" in name,
        name.startswith("model.class_predictor."),
        ".adapter." in name and not swin_adapter,
        "prior_embeddings" in name,
    ]
    if not semantic:  # stage two keeps its pre-trained query features in both phases
        parts.append("queries_features" in name)
    if phase == "B":
        parts.append(swin_adapter)
    return any(parts)


@pytest.mark.parametrize("task", ["s4", "avss"])
@pytest.mark.parametrize("phase", ["A", "B"])
def test_phase_gradients(task, phase):
    model = tiny(task)
    set_phase(model, phase)
    semantic = model.config.semantic
    pixels, audio = batch(2)
    prior = torch.linspace(0, 1, 224).expand(2, 224, 224).contiguous() if semantic else None  # all 3 regions
    out = model(pixels, audio, prior=prior, labels=labels_for(2, model.config.num_labels))
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if expected_trainable(n, semantic, phase)}
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    swin_weights = [p for a in model.swin_adapters() for p in a.adapter.parameters()]
    zero = all(torch.count_nonzero(p) == 0 for p in swin_weights)
    assert zero == (phase == "A")


def test_phase_b_reinitialises_swin_adapters_once_and_groups_follow_the_phase():
    model = tiny("avss")
    adapter = model.swin_adapters()[0].adapter
    assert torch.count_nonzero(adapter[0].weight) == 0  # built in phase A
    with pytest.raises(ValueError, match="call set_phase"):
        phase_parameter_groups(model, "B", 1e-4, 0.05)
    groups = phase_parameter_groups(model, "A", 1e-3, 0.05)
    assert [g["name"] for g in groups] == [
        "audio_projection",
        "query_embeddings",
        "decoder_adapters",
        "class_predictor",
        "prior_embeddings",
    ]
    assert all(g["lr"] == 1e-3 and g["weight_decay"] == 0.05 for g in groups)
    set_phase(model, "B")
    fresh = adapter[0].weight.detach().clone()
    assert torch.count_nonzero(fresh) == fresh.numel() and torch.count_nonzero(adapter[0].bias) == 0
    set_phase(model, "B")  # already in B: kept
    assert torch.equal(adapter[0].weight, fresh)
    groups = phase_parameter_groups(model, "B", 1e-4, 0.05)
    assert {g["name"] for g in groups} == {
        "audio_projection",
        "query_embeddings",
        "decoder_adapters",
        "class_predictor",
        "prior_embeddings",
        "swin_adapters",
    }
    in_groups = sum(p.numel() for g in groups for p in g["params"])
    assert in_groups == sum(p.numel() for p in model.parameters() if p.requires_grad)
    set_phase(model, "A")
    assert torch.count_nonzero(adapter[0].weight) == 0


def test_tiny_preset_trains_its_random_base_in_both_phases():
    model = build_model("s4", preset="tiny")
    assert model.config.train_base and not build_model("s4", preset="swin-base").config.train_base
    adapters_only = {n for n, _ in tiny("s4").named_parameters() if expected_trainable(n, False, "A")}
    for phase in ("A", "B"):
        set_phase(model, phase)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert adapters_only <= trainable
        # Phase A still holds the Swin adapters at zero; everything else learns.
        assert frozen == (
            {n for n, _ in model.named_parameters() if ".adapter." in n and "swin" in n} if phase == "A" else set()
        )
        assert set(model.trainable_state_dict()) == {n for n, _ in model.named_parameters()}


# ------------------------------------------------------------------------------------ prior
def capture_first_layer(model):
    """Record the keyword and positional inputs of the first masked-attention layer."""
    seen = {}

    def hook(module, args, kwargs):
        seen["mask"] = kwargs["encoder_attention_mask"].detach().clone()
        seen["positions"] = [p.detach().clone() for p in args[3]]

    layer = model.model.model.transformer_module.decoder.layers[0]
    return seen, layer.register_forward_pre_hook(hook, with_kwargs=True)


def test_prior_sets_the_first_attention_mask():
    model = tiny("avss").eval()
    heads, queries = model.config.mask2former.num_attention_heads, model.config.num_queries
    prior = torch.cat([torch.zeros(1, 224, 224), torch.ones(1, 224, 224), half_prior(1)])
    pixels, audio = batch(3)
    seen, hook = capture_first_layer(model)
    with torch.no_grad():
        out = model(pixels, audio, prior=prior)
    hook.remove()
    mask = seen["mask"]  # level 0 of the tiny net is the 1/32 map: 4 x 4
    assert mask.shape == (3 * heads, queries, 16) and mask.dtype == torch.bool
    mask = mask.view(3, heads, queries, 4, 4)
    assert not mask[0].any(), "all-silent prior: every row falls back to attending everywhere"
    assert not mask[1].any(), "all-sounding prior: attend everywhere"
    assert not mask[2, ..., :2].any() and mask[2, ..., 2:].all(), "attend only where P >= 0.5 (left half)"
    assert torch.isfinite(out.masks_queries_logits).all() and torch.isfinite(out.class_queries_logits).all()
    assert model.model.model.transformer_module.decoder.mask_predictor.pending_attention_mask is None


def test_without_prior_the_first_mask_comes_from_the_queries():
    model = tiny("avss").eval()
    pixels, audio = batch(1)
    seen, hook = capture_first_layer(model)
    with torch.no_grad():
        model(pixels, audio)
        from_queries = seen["mask"]
        model(pixels, audio, prior=half_prior(1))
    hook.remove()
    assert not torch.equal(from_queries, seen["mask"])


def test_fully_masked_first_layer_gives_no_nan_in_outputs_loss_or_gradients():
    model = tiny("avss")
    set_phase(model, "B")
    pixels, audio = batch(2)
    out = model(pixels, audio, prior=torch.zeros(2, 224, 224), labels=labels_for(2, 71))
    out.loss.backward()
    assert torch.isfinite(out.masks_queries_logits).all() and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_prior_embeddings_are_added_to_the_position_embeddings_by_region():
    model = tiny("avss").eval()
    table = model.model.model.transformer_module.decoder.prior_embeddings.weight  # rows: silent, uncertain, sounding
    pixels, audio = batch(2)
    prior = torch.cat([half_prior(1), torch.full((1, 224, 224), 0.5)])
    seen, hook = capture_first_layer(model)
    with torch.no_grad():
        model(pixels, audio)
        plain = seen["positions"]
        model(pixels, audio, prior=prior)
        with_prior = seen["positions"]
    hook.remove()
    sizes = [(4, 4), (8, 8), (16, 16)]  # the three levels of the tiny net, coarse to fine
    for level, (h, w) in enumerate(sizes):
        diff = (with_prior[level] - plain[level]).view(h, w, 2, -1)  # [h, w, N, D]
        assert torch.allclose(diff[:, 0, 0], table[2].expand(h, -1), atol=1e-6)  # left column: sounding
        assert torch.allclose(diff[:, -1, 0], table[0].expand(h, -1), atol=1e-6)  # right column: silent
        assert torch.allclose(diff[:, :, 1], table[1].expand(h, w, -1), atol=1e-6)  # P = 0.5: uncertain


def test_prior_is_added_to_the_mask_features():
    model = tiny("avss").eval()
    predictor = model.model.model.transformer_module.decoder.mask_predictor
    seen = []
    hook = predictor.register_forward_pre_hook(lambda m, args: seen.append(args[1].detach().clone()))
    pixels, audio = batch(1)
    prior = half_prior(1)
    with torch.no_grad():
        model(pixels, audio)
        plain = seen[0]
        seen.clear()
        model(pixels, audio, prior=prior)
    hook.remove()
    resized = F.interpolate(prior[:, None], size=plain.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(seen[0] - plain, resized.expand_as(plain), atol=1e-5)


# ------------------------------------------------------------------------------------- loss
def test_frame_targets_one_mask_per_present_class():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, 0], labels[0, 1:3, 1:3] = 5, 3
    masks, classes = frame_targets(labels, 71)
    assert classes[0].tolist() == [0, 3, 5]
    assert masks[0].shape == (3, 4, 4) and masks[0].sum().item() == 16
    assert masks[0][1].sum().item() == 4 and masks[0][2][0, 0] == 1
    with pytest.raises(InputError, match=r"labels hold values in \[0, 2\]; this network has 2 classes 0..1"):
        frame_targets(torch.tensor([[[0, 2]]]), 2)


def test_loss_counts_only_the_selected_frames():
    model = tiny("s4")
    pixels, audio = batch(2)
    labels = labels_for(2, 2)
    labels[1] = 7  # an unannotated frame's placeholder: out of range, must be ignored
    torch.manual_seed(5)
    pair = model(pixels, audio, labels=labels, loss_frames=torch.tensor([True, False])).loss
    torch.manual_seed(5)
    alone = model(pixels[:1], audio[:1], labels=labels[:1]).loss
    assert torch.allclose(pair, alone, rtol=1e-4)
    with pytest.raises(InputError, match="labels hold values"):
        model(pixels, audio, labels=labels)


def test_no_selected_frame_gives_a_zero_loss_with_a_graph():
    model = tiny("ms3")
    pixels, audio = batch(2)
    out = model(pixels, audio, labels=labels_for(2, 2), loss_frames=torch.tensor([False, False]))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)


# ------------------------------------------------------------------------------------ classes
def test_the_semantic_head_has_the_data_classes(synth_root):
    """A data root's label2idx.json of N classes gives an N-class head (N + 1 with no-object)."""
    classes = class_names(synth_root)
    assert len(classes) == 9
    torch.manual_seed(0)
    model = build_model("avss", preset="tiny", classes=classes)
    assert model.config.num_labels == 9 and model.config.class_names == classes
    assert model.config.mask2former.id2label == dict(enumerate(classes))
    assert model.model.class_predictor.out_features == 10
    pixels, audio = batch(2)
    out = model(pixels, audio, prior=half_prior(2), labels=labels_for(2, 9))
    assert out.class_queries_logits.shape == (2, 20, 10) and torch.isfinite(out.loss)
    assert model.class_scores(out).shape == (2, 9, 224, 224)
    with pytest.raises(InputError, match="labels hold values"):
        model(pixels, audio, prior=half_prior(2), labels=torch.full((2, 224, 224), 9))
    assert tiny("avss").config.class_names == AVSBENCH_CLASSES  # no data given: AVSBench's 71
    assert build_model("s4", preset="tiny", classes=classes).config.class_names == ("background", "sounding")
    for bad in (["background"], ["dog", "background"], ["background", "dog", "dog"]):
        with pytest.raises(InputError, match="distinct names, 'background' first"):
            build_model("avss", preset="tiny", classes=bad)
