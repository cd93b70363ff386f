"""The binary network's query tables (30 queries) cannot come from a base with another number of queries
(ADE20k's 100; the parity fixture's 10): they start from PyTorch's default ``nn.Embedding`` init, N(0, 1),
as the reference's transformers 4.35.2 left them, drawn by our code (docs/method.md §4), whatever
transformers' own initialisation of mismatched sizes does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPreTrainedModel

from aavs.models import build_model

BASE = Path(__file__).parent / "fixtures" / "reference-parity" / "avs" / "base"  # 10 queries, hidden 64


@pytest.mark.parametrize("transformers_init", ["as released", "N(0, 0.02)"])
def test_resized_query_tables_start_from_pytorchs_default_whatever_transformers_does(
    transformers_init: str, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None
) -> None:
    if transformers_init != "as released":  # a release that initialises embeddings as its other weights
        own = Mask2FormerPreTrainedModel._init_weights

        def small_embeddings(self: Mask2FormerPreTrainedModel, module: nn.Module) -> None:
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            else:
                own(self, module)

        monkeypatch.setattr(Mask2FormerPreTrainedModel, "_init_weights", small_embeddings)
    torch.manual_seed(0)
    model = build_model("avss-binary", pretrained=str(BASE))
    for name in ("queries_embedder", "queries_features"):
        weight = getattr(model.model.model.transformer_module, name).weight.detach()
        assert weight.shape == (30, 64), name
        # 1920 draws: the mean's standard error is 0.023, the std's 0.016.
        assert abs(weight.mean().item()) < 0.1 and abs(weight.std().item() - 1) < 0.1, (
            f"{name}: mean {weight.mean():.3f}, std {weight.std():.3f}"
        )
