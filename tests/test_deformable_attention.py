"""The fused CPU sampler of the pixel decoder's deformable attention (aavs.models.deformable_attention)
against transformers' PyTorch sampling: the same outputs and gradients to 1e-5, a training step's loss
and gradients to 1e-5, the same bits at any thread count, and transformers' sampling where no C
compiler is found."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention

from aavs.models import build_model, phase_parameter_groups, set_phase
from aavs.models import deformable_attention as fused_attention
from aavs.models.deformable_attention import FusedMultiscaleDeformableAttention, deformable_sampling

SHAPES = [(5, 7), (3, 4), (2, 2)]  # three levels, one not square


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch, heads, dim, queries, points = 2, 3, 8, 11, 3
    rows = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, rows, heads, dim, generator=generator)
    # (x, y) from -0.3 to 1.3: corners inside, across the border and wholly outside
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=generator) * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=generator)
    grad = torch.randn(batch, queries, heads * dim, generator=generator)
    return value, locations, weights, grad


def _run(sampler, value, locations, weights, grad):
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    out = sampler(leaves[0], SHAPES, leaves[1], leaves[2])
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_fused_sampling_gives_transformers_outputs_and_gradients_at_any_thread_count():
    value, locations, weights, grad = _inputs()
    assert fused_attention.fused_sampling_applies(value, locations, weights)  # the kernel builds here
    expected = _run(multi_scale_deformable_attention, value, locations, weights, grad)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(deformable_sampling, value, locations, weights, grad)
        torch.set_num_threads(2)
        two = _run(deformable_sampling, value, locations, weights, grad)
    finally:
        torch.set_num_threads(threads)
    for name, ours, theirs in zip(("output", "value", "locations", "weights"), two, expected):
        assert _relative(ours, theirs) < 1e-5, name
    assert all(torch.equal(a, b) for a, b in zip(one, two))  # one task per (batch, head): no thread-order sums
    # every gradient carries signal: the borders' zero padding did not zero the comparison
    assert all(t.abs().max() > 0.1 for t in expected)


@pytest.mark.parametrize("phase", ["A", "B"])
def test_a_training_step_computes_what_transformers_sampling_computes(phase):
    """The tiny stage-two network (prior, pixel-decoder adapters following the projection), train mode:
    the loss and every trainable parameter's gradient with the fused sampler against transformers'."""
    torch.manual_seed(0)
    model = build_model("avss", preset="tiny", classes=["background", "a", "b"])
    set_phase(model, phase)
    model.train()
    frames, audio = torch.randn(2, 3, 128, 128), torch.randn(2, 128)
    prior = torch.rand(2, 224, 224)
    labels = torch.randint(0, 3, (2, 224, 224))
    trained = [p for group in phase_parameter_groups(model, phase, lr=1e-3, weight_decay=0.05) for p in group["params"]]
    results = {}
    for fused in (True, False):
        FusedMultiscaleDeformableAttention.fused = fused
        try:
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the loss samples its points at random: the same ones for both
            loss = model(frames, audio, prior=prior, labels=labels).loss
            loss.backward()
        finally:
            FusedMultiscaleDeformableAttention.fused = True
        results[fused] = (loss.detach(), [p.grad.clone() for p in trained if p.grad is not None])
    (loss, grads), (expected_loss, expected_grads) = results[True], results[False]
    assert abs(loss - expected_loss) <= 1e-5 * abs(expected_loss)
    assert len(grads) == len(expected_grads) > 10
    # A key projection's bias has a zero gradient (softmax ignores a shift shared by every key), which
    # both compute as rounding noise near 1e-11: gradients below 1e-6 of the largest are not compared.
    floor = 1e-6 * max(e.abs().max() for e in expected_grads)
    compared = [(g, e) for g, e in zip(grads, expected_grads) if e.abs().max() > floor]
    assert len(compared) > 10 and all(_relative(g, e) < 1e-5 for g, e in compared)


def test_without_a_compiler_the_attention_runs_transformers_sampling(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("AAVS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(fused_attention, "load_kernel", fused_attention.load_kernel.__wrapped__)
    value, locations, weights, _ = _inputs()
    with caplog.at_level(logging.WARNING, logger=fused_attention.__name__):
        assert not fused_attention.fused_sampling_applies(value, locations, weights)
        out = deformable_sampling(value, SHAPES, locations, weights)
    assert "transformers' sampling runs" in caplog.text
    assert torch.equal(out, multi_scale_deformable_attention(value, SHAPES, locations, weights))
    assert not (tmp_path / "kernels").exists() or not any((tmp_path / "kernels").iterdir())
