"""The rules of the GPU path that a CPU can check (issue 22, item 4): what reaches the network and the
loss lands on the network's device, in the dtypes the step expects, and bf16 autocast covers the
whole forward (the loss's matcher excepted, which runs in fp32 on purpose: models/modeling_aavs.py).

The device here is PyTorch's ``meta`` device, which every tensor operation supports without data: a
tensor the batch left on the CPU shows up as a device mismatch, as it would on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aavs.datasets.avsbench import AVSBenchDataset, collate_videos
from aavs.datasets.layout import select_videos
from aavs.models import build_model, set_phase
from aavs.orchestrator.recipe.accelerator import make_accelerator, release
from aavs.orchestrator.recipe.config import ComputeConfig
from aavs.orchestrator.recipe.evaluation import loss_targets, model_inputs, training_frames

META = torch.device("meta")


def _batch(root, compact: bool) -> dict:
    embeddings = {r.uid: np.zeros((r.num_frames, 128), np.float32) for r in select_videos(root, "avss", "train")}
    data = AVSBenchDataset(
        root,
        "avss",
        "train",
        image_size=32,
        prior="ground-truth",
        training=True,
        embeddings=embeddings,
        compact=compact,
    )
    return collate_videos([data[0], data[1]])


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inputs_and_loss_targets_land_on_the_networks_device_in_its_dtype(synth_root, compact, dtype):
    batch = _batch(synth_root, compact)
    batch, counted = training_frames(batch, "avss", temporal=False)
    inputs, targets = model_inputs(batch, META, dtype), loss_targets(batch, counted, META)
    tensors = {k: v for k, v in {**inputs, **targets}.items() if isinstance(v, torch.Tensor)}
    assert set(tensors) == {"pixel_values", "audio", "prior", "labels", "loss_frames"}
    assert all(t.device == META for t in tensors.values()), {k: t.device for k, t in tensors.items()}
    n = batch["pixel_values"].shape[0]
    assert inputs["pixel_values"].shape == (n, 3, 32, 32)  # channels first, whichever way it came
    assert inputs["pixel_values"].dtype == inputs["audio"].dtype == inputs["prior"].dtype == dtype
    assert targets["labels"].dtype == torch.int64 and targets["loss_frames"].dtype == torch.bool


def test_bf16_autocast_covers_every_layer_of_the_forward(one_torch_thread):
    """Under compute.mixed_precision bf16, the prepared model (accelerate's autocast around forward)
    runs every Linear and convolution in bf16, and its loss and the weights' gradients are fp32."""
    torch.manual_seed(0)
    model = build_model("avss", preset="tiny")
    set_phase(model, "B")
    accelerator = make_accelerator(ComputeConfig(mixed_precision="bf16"), 1, None, 1)
    try:
        prepared = accelerator.prepare(model)
        seen: dict[str, torch.dtype] = {}

        def record(name):
            return lambda _module, _args, out: seen.__setitem__(name, out.dtype)

        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                module.register_forward_hook(record(name))
        n, size = 2, model.config.image_size
        out = prepared(
            pixel_values=torch.randn(n, 3, size, size),
            audio=torch.randn(n, 128),
            prior=torch.ones(n, 224, 224),
            labels=torch.randint(0, 3, (n, 224, 224)),
            loss_frames=torch.ones(n, dtype=torch.bool),
        )
        assert len(seen) > 50  # the backbone's, the pixel decoder's, the decoder's, the adapters'
        assert {name for name, dtype in seen.items() if dtype != torch.bfloat16} == set()
        assert out.loss.dtype == torch.float32
        out.loss.backward()  # the weights stay fp32: their gradients too
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(g.dtype == torch.float32 for g in grads)
    finally:
        release(accelerator)
