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


def test_aavs_is_the_default_and_avsbench_the_second_type():
    assert registry.model_types() == ("aavs", "avsbench") and registry.DEFAULT_TYPE == "aavs"
    assert registry.model_presets("avsbench") == ("tiny", "resnet-50", "pvt-v2-b5")


def test_unknown_type_names_the_value_and_the_known_types():
    message = r"model.type 'avsegformer' is not a known model type: expected one of aavs, avsbench"
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
    with pytest.raises(
        InputError, match=r"^x\.yaml: model\.type: expected one of \['aavs', 'avsbench'\].*got 'avsegformer'"
    ):
        parse_spec(apply_overrides(raw, ["model.type=avsegformer"], "x.yaml"), "x.yaml")
    with pytest.raises(InputError, match=r"model\.type: expected one of \['aavs', 'avsbench'\].*got 'avsegformer'"):
        TrainConfig.load(
            {"task": "s4", "data_root": "d", "trial_dir": "t", "model": {"type": "avsegformer", "preset": "tiny"}}
        )


@pytest.mark.parametrize("model_type", ["aavs", "avsbench"])
def test_a_built_network_implements_the_protocol(model_type, one_torch_thread):
    torch.manual_seed(0)
    tiny = registry.build(model_type, "s4", preset="tiny")
    assert isinstance(tiny, SegmentationModel) and isinstance(tiny.config, ModelConfig)
    assert tiny.config.model_type == model_type and tiny.config.class_names == ("background", "sounding")
    tiny.set_phase("B")
    groups = tiny.phase_parameter_groups("B", lr=1e-4, weight_decay=0.05)
    trained = {id(p) for group in groups for p in group["params"]}
    assert trained == {id(p) for p in tiny.parameters() if p.requires_grad}


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
    assert registry.model_types() == ("aavs", "avsbench", "aavs-copy")
    assert registry.get_model_type("aavs-copy").function("build") is registry.get_model_type("aavs").function("build")
    with pytest.raises(ValueError, match="registered already"):
        registry.register(copy)


def register_aavs_as(monkeypatch, name: str, **fields) -> None:
    """AAVS's functions registered under ``name`` for this test (``fields`` override them)."""
    monkeypatch.setattr(registry, "_TYPES", dict(registry._TYPES))
    functions = {
        "build": "aavs.models.modeling_aavs:build_model",
        "load": "aavs.models.checkpoint:load_model",
        "read_weights": "aavs.models.checkpoint:read_weights",
    }
    registry.register(registry.ModelType(name=name, description=f"AAVS as {name}", **{**functions, **fields}))


def _load_marker(path, base=None, task=None):
    """The `load` of the test's second type: says it was called, with what."""
    return ("aavs-copy loaded", str(path))


def test_a_checkpoint_records_its_type_and_the_registry_reads_it(tiny, tmp_path, monkeypatch):
    """checkpoint.json names the type, task, classes and weight files; loads need no type; the digest is
    the weights file's SHA-256 (as before the record); a folder without a record is an AAVS one."""
    import hashlib
    import json

    folder = tiny.save_pretrained(tmp_path / "ckpt")
    record = json.loads((folder / "checkpoint.json").read_text())
    assert {k: record[k] for k in ("model_type", "task", "classes", "weights")} == {
        "model_type": "aavs",
        "task": "s4",
        "classes": ["background", "sounding"],
        "weights": ["model.safetensors"],
    }
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert registry.checkpoint_digest(folder) == sha
    assert registry.read_checkpoint_classes(folder) == ["background", "sounding"]

    (folder / "checkpoint.json").unlink()  # written before the record existed
    assert registry.checkpoint_type(folder) == "aavs" and registry.load(folder).config.task == "s4"
    assert registry.checkpoint_digest(folder) == sha
    assert registry.read_checkpoint_classes(folder) == ["background", "sounding"]  # from aavs.json

    register_aavs_as(monkeypatch, "aavs-copy", load="test_model_registry:_load_marker")
    other = tmp_path / "other"
    other.mkdir()
    for name in ("a.bin", "b.bin"):
        (other / name).write_bytes(name.encode() * 3)
    (other / "checkpoint.json").write_text(
        json.dumps({**record, "model_type": "aavs-copy", "weights": ["a.bin", "b.bin"]})
    )
    assert registry.load(other) == ("aavs-copy loaded", str(other))
    parts = [f"{n}\0{hashlib.sha256(n.encode() * 3).hexdigest()}\n" for n in ("a.bin", "b.bin")]
    assert registry.checkpoint_digest(other) == hashlib.sha256("".join(parts).encode()).hexdigest()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"model_type": "avsegformer"},
            "model type 'avsegformer' is not a known model type: expected one of aavs, avsbench",
        ),
        ({"version": 2}, "checkpoint record version 2; this aavs reads up to 1"),
        ({"format": "other"}, "expected a checkpoint record with format 'aavs-model-checkpoint'"),
        ({"weights": ["../x.safetensors"]}, "expected model_type (a name) and weights (file names inside the folder)"),
    ],
)
def test_a_bad_checkpoint_record_is_named(tiny, tmp_path, change, message):
    import json

    folder = tiny.save_pretrained(tmp_path / "ckpt")
    record = json.loads((folder / "checkpoint.json").read_text())
    (folder / "checkpoint.json").write_text(json.dumps({**record, **change}))
    with pytest.raises(InputError) as err:
        registry.load(folder)
    assert str(err.value).startswith(f"{folder / 'checkpoint.json'}: {message}")


def test_a_type_without_a_warmup_trains_every_epoch_in_phase_b(monkeypatch):
    from aavs.orchestrator.recipe.config import TrainConfig

    register_aavs_as(monkeypatch, "no-warmup", presets=("tiny",))  # warmup=False, the default
    common = {"task": "s4", "data_root": "d", "trial_dir": "t", "epochs": 6, "adapter_warmup": 0.5}
    aavs = TrainConfig.load({**common, "model": {"type": "aavs", "preset": "tiny"}})
    other = TrainConfig.load({**common, "model": {"type": "no-warmup", "preset": "tiny"}})
    assert [aavs.phase_of(e) for e in range(6)] == ["A"] * 3 + ["B"] * 3
    assert other.phase_a_epochs == 0 and [other.phase_of(e) for e in range(6)] == ["B"] * 6
    with pytest.raises(
        InputError, match=r"model\.preset: expected a preset of model type no-warmup: one of \['tiny'\]"
    ):
        TrainConfig.load({**common, "model": {"type": "no-warmup", "preset": "swin-base"}})
