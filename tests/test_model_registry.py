"""The model seam: the recipe builds, saves and loads networks through the registry by ``model.type``,
and uses them only through the protocol."""

from __future__ import annotations

import pytest
import torch

from aavs.datasets.errors import InputError
from aavs.models import registry
from aavs.models.protocol import ModelConfig, SegmentationModel


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    torch.manual_seed(0)
    return registry.build("aavs", "s4", preset="tiny")


def test_aavs_is_the_default_and_only_type():
    assert registry.model_types() == ("aavs",) and registry.DEFAULT_TYPE == "aavs"


def test_unknown_type_names_the_value_and_the_known_types():
    message = r"model.type 'avsegformer' is not a known model type: expected one of aavs"
    with pytest.raises(InputError, match=message):
        registry.build("avsegformer", "s4", preset="tiny")
    with pytest.raises(InputError, match=message):
        registry.load("anywhere", model_type="avsegformer")


def test_unknown_type_in_the_experiment_file_and_the_trial_config():
    from aavs.orchestrator.experiment.spec import apply_overrides, parse_spec
    from aavs.orchestrator.recipe.config import TrainConfig

    raw = {
        "name": "x",
        "data": {"synthetic": {"videos_per_split": 2}},
        "model": {"preset": "tiny"},
        "stages": [{"name": "one", "task": "s4"}],
    }
    assert parse_spec(raw, "x.yaml").model.type == "aavs"
    with pytest.raises(InputError, match=r"^x\.yaml: model\.type: expected one of \['aavs'\].*got 'avsegformer'"):
        parse_spec(apply_overrides(raw, ["model.type=avsegformer"], "x.yaml"), "x.yaml")
    with pytest.raises(InputError, match=r"model\.type: expected one of \['aavs'\].*got 'avsegformer'"):
        TrainConfig.load(
            {"task": "s4", "data_root": "d", "trial_dir": "t", "model": {"type": "avsegformer", "preset": "tiny"}}
        )


def test_a_built_network_implements_the_protocol(tiny):
    assert isinstance(tiny, SegmentationModel) and isinstance(tiny.config, ModelConfig)
    assert tiny.config.model_type == "aavs" and tiny.config.class_names == ("background", "sounding")
    tiny.set_phase("B")
    groups = tiny.phase_parameter_groups("B", lr=1e-4, weight_decay=0.05)
    trained = {id(p) for group in groups for p in group["params"]}
    assert trained == {id(p) for p in tiny.parameters() if p.requires_grad}
    tiny.set_phase("A")


def test_save_pretrained_then_registry_load_and_read_weights(tiny, tmp_path):
    folder = tiny.save_pretrained(tmp_path / "ckpt")
    loaded = registry.load(folder)
    assert loaded.config.task == "s4" and loaded.phase == tiny.phase
    weights = registry.read_weights(folder, loaded.config.model_type)
    for name, value in tiny.state_dict().items():
        assert torch.equal(weights[name], value), name
    frames, audio = torch.zeros(1, 3, 128, 128), torch.zeros(1, 128)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.class_scores(loaded.eval()(frames, audio)), tiny.eval().class_scores(tiny(frames, audio))
        )


def test_a_second_type_is_one_registration(monkeypatch):
    copy = registry.ModelType(
        name="aavs-copy",
        description="the same network under a second name",
        build="aavs.models.modeling_aavs:build_model",
        load="aavs.models.checkpoint:load_model",
        read_weights="aavs.models.checkpoint:read_weights",
    )
    monkeypatch.setattr(registry, "_TYPES", dict(registry._TYPES))
    registry.register(copy)
    assert registry.model_types() == ("aavs", "aavs-copy")
    assert registry.get_model_type("aavs-copy").function("build") is registry.get_model_type("aavs").function("build")
    with pytest.raises(ValueError, match="registered already"):
        registry.register(copy)
