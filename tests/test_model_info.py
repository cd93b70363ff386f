"""``aavs model-info``: parameter counts, checked against counts worked out by hand."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from aavs.models.info import model_info, render_model_info
from aavs.orchestrator.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def adapter_params(d: int) -> int:
    """Linear(d, d/4) + Linear(d/4, d), with biases."""
    return d * (d // 4) + d // 4 + (d // 4) * d + d


def test_swin_base_adapter_count_matches_the_architecture():
    info = model_info(preset="swin-base", task="s4")
    swin = sum(depth * 2 * adapter_params(dim) for dim, depth in zip([128, 256, 512, 1024], [2, 2, 18, 2]))
    decoder = 6 * adapter_params(256) + 9 * adapter_params(256)
    assert swin == 7_009_664 and decoder == 496_320
    assert info["parts"]["swin_adapters"] == swin
    assert info["parts"]["decoder_adapters"] == decoder
    assert info["adapter_params"] == swin + decoder
    assert (info["num_swin_adapters"], info["num_decoder_adapters"]) == (48, 15)
    audio = 128 * 512 + 512 + 512 * 256 + 256
    queries = 2 * 30 * 256
    head = 256 * 3 + 3
    assert info["trainable_params"] == swin + decoder + audio + queries + head
    assert info["trainable_params_phase_a"] == decoder + audio + queries + head
    assert (info["num_labels"], info["num_queries"], info["image_size"]) == (2, 30, 384)
    assert info["backbone"] == {
        "embed_dim": 128,
        "depths": [2, 2, 18, 2],
        "num_heads": [4, 8, 16, 32],
        "window_size": 12,
    }
    assert info["total_params"] > 100_000_000


def test_model_info_cli_json_and_table(capsys):
    assert main(["model-info", "--preset", "tiny", "--task", "avss", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    info = model_info(preset="tiny", task="avss")
    assert printed == {k: info[k] for k in ("total_params", "trainable_params", "adapter_params")}
    assert info["parts"]["prior_embeddings"] == 3 * 64
    # Stage two counts its query features as base (pre-trained, kept); the tiny preset trains its random
    # base, query features included, in both phases: phase A lacks only the Swin adapters.
    assert info["parts"]["query_features"] == 0
    assert info["trainable_params_phase_a"] == info["trainable_params"] - info["parts"]["swin_adapters"]
    console = Console(record=True, width=120)
    render_model_info(console, info)
    text = console.export_text()
    assert "stage two (semantic, prior-guided)" in text and "71 + 1" in text
    assert f"{info['adapter_params']:,}" in text and f"{info['total_params']:,}" in text


def test_model_info_takes_the_classes_of_data(synth_root, capsys):
    assert main(["model-info", "--preset", "tiny", "--task", "avss", "--data", str(synth_root)]) == 0
    assert "9 + 1" in capsys.readouterr().out  # the synthetic data's 9 classes, not AVSBench's 71
    default = model_info(preset="tiny", task="avss")
    synth = model_info(preset="tiny", task="avss", classes=("background", *"abcdefgh"))
    assert (default["num_labels"], synth["num_labels"]) == (71, 9)
    assert default["total_params"] - synth["total_params"] == (71 - 9) * (64 + 1)  # the class head, hidden 64


def test_model_info_cli_bad_pretrained_folder(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert main(["model-info", "--pretrained", str(tmp_path), "--task", "s4"]) == 2
    assert "config.json is missing" in capsys.readouterr().err
