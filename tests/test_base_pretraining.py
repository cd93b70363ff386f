"""The tiny preset's pre-trained base (the demo's stand-in for ADE20k): written, loaded, frozen, refused."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aavs.datasets import synth
from aavs.datasets.errors import InputError
from aavs.models.modeling_aavs import build_model
from aavs.orchestrator.experiment.preparation import prepare_base
from aavs.orchestrator.experiment.runners.local import LocalRunner
from aavs.orchestrator.experiment.spec import parse_spec
from aavs.orchestrator.recipe.base_pretraining import RECORD, pretrain_base, read_record


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny-base"
    pretrain_base("tiny", folder, steps=30, images_per_step=2, lr=1e-3, seed=0)
    return folder


def test_still_images_label_every_object_by_its_class():
    image, class_map = synth.still_image(np.random.default_rng(3))
    pixels = np.asarray(image).astype(float)
    present = [c for c in range(1, len(synth.CLASS_NAMES)) if (class_map == c).any()]
    assert 2 <= len(present) <= 4
    for c in present:  # each labelled region has its class's colour (JPEG and noise aside)
        colour = np.asarray(synth.SYNTH_CLASSES[c - 1].colour, dtype=float)
        assert np.abs(pixels[class_map == c].mean(0) - colour).max() < 20


def test_pretraining_learns_and_records_its_settings(base):
    record = read_record(base)
    assert record == json.loads((base / RECORD).read_text())
    assert {k: record[k] for k in ("preset", "steps", "images_per_step", "lr", "seed")} == {
        "preset": "tiny",
        "steps": 30,
        "images_per_step": 2,
        "lr": 1e-3,
        "seed": 0,
    }
    assert record["classes"] == list(synth.CLASS_NAMES)
    losses = record["losses"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])  # it learns to segment the stills


def test_pretraining_is_deterministic_for_its_seed(base, tmp_path):
    again = tmp_path / "again"
    pretrain_base("tiny", again, steps=30, images_per_step=2, lr=1e-3, seed=0)

    def digest(folder):
        return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    assert digest(again) == digest(base)
    other = tmp_path / "other"
    pretrain_base("tiny", other, steps=2, images_per_step=2, lr=1e-3, seed=1)
    assert read_record(other)["losses"][0] != read_record(base)["losses"][0]


def test_the_preset_network_takes_its_base_from_the_folder_and_keeps_it_frozen(base):
    saved = load_file(base / "model.safetensors")
    torch.manual_seed(0)
    model = build_model("avss-binary", preset="tiny", pretrained=str(base))
    own = model.model.state_dict()
    loaded = [k for k, v in saved.items() if k in own and own[k].shape == v.shape]
    assert len(loaded) > 100
    for key in loaded:
        assert torch.equal(own[key], saved[key]), key
    # The binary network has 10 queries where the base has 20: those start afresh, as from ADE20k's 100.
    queries = "model.transformer_module.queries_features.weight"
    assert saved[queries].shape[0] == 20 and own[queries].shape[0] == 10
    assert model.config.train_base is False and model.config.base == str(base.resolve())
    model.set_phase("A")
    backbone = [p for n, p in model.named_parameters() if ".encoder.swin.embeddings." in n]
    assert backbone and not any(p.requires_grad for p in backbone)
    assert build_model("avss-binary", preset="tiny").config.train_base is True  # a random base trains


def test_a_base_of_another_architecture_is_refused_naming_the_field(base, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((base / "config.json").read_text())
    config["hidden_dim"] = 32
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match=r"not the tiny preset's architecture: hidden_dim 32 \(the preset has 64\)"):
        build_model("avss-binary", preset="tiny", pretrained=str(other))


def test_an_experiment_pretrains_its_base_once_and_again_only_when_the_settings_change(tmp_path, caplog):
    raw = {
        "name": "with-base",
        "data": {"synthetic": {"videos_per_split": 1}},
        "model": {"preset": "tiny", "pretrain": {"steps": 2, "images_per_step": 1}},
        "stages": [{"name": "localize", "task": "avss-binary", "epochs": 1}],
    }
    spec = parse_spec(raw, "x.yaml")
    results_dir = tmp_path / "with-base"
    trials_spec = prepare_base(spec, results_dir, LocalRunner(spec, results_dir))
    folder = results_dir / "base"
    assert trials_spec.model.pretrained == str(folder.resolve()) and trials_spec.model.pretrain is None
    assert trials_spec.model.preset == "tiny" and not trials_spec.model.trains_base
    assert read_record(folder)["steps"] == 2
    written = (folder / RECORD).stat().st_mtime_ns

    assert prepare_base(spec, results_dir, LocalRunner(spec, results_dir)) == trials_spec
    assert (folder / RECORD).stat().st_mtime_ns == written  # reused

    changed = parse_spec({**raw, "model": {"preset": "tiny", "pretrain": {"steps": 3, "images_per_step": 1}}}, "x.yaml")
    prepare_base(changed, results_dir, LocalRunner(changed, results_dir))
    assert read_record(folder)["steps"] == 3
    assert "model.pretrain changed: pre-training the base" in caplog.text
