"""Building from a local Mask2Former folder, our checkpoints, and import of released Stepping Stones files."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Mask2FormerForUniversalSegmentation

from aavs.datasets.errors import InputError
from aavs.datasets.layout import AVSBENCH_CLASSES, class_names
from aavs.models import build_model, load_model, save_checkpoint, set_phase
from aavs.models.checkpoint import import_released_checkpoint
from aavs.models.presets import preset_config
from aavs.orchestrator.cli import main
from aavs.orchestrator.recipe.evaluation import check_classes

S = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny ADE-like Mask2Former (150 labels, 8 queries) saved in Hugging Face format."""
    config, _ = preset_config("tiny", "s4")
    labels = {i: f"ade_{i}" for i in range(150)}
    config.id2label, config.label2id, config.num_queries = labels, {v: k for k, v in labels.items()}, 8
    torch.manual_seed(11)
    folder = tmp_path_factory.mktemp("m2f") / "mask2former-tiny-ade"
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    return folder


def inputs(n: int = 2, semantic: bool = False, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    prior = torch.rand(n, 224, 224, generator=g) if semantic else None
    return torch.randn(n, 3, S, S, generator=g), torch.randn(n, 128, generator=g), prior


def outputs(model, pixels, audio, prior):
    model.eval()
    with torch.no_grad():
        out = model(pixels, audio, prior)
    return out.class_queries_logits, out.masks_queries_logits


def assert_same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def trained(model):
    """Phase B with every trainable weight moved off its initial value, as after training."""
    set_phase(model, "B")
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in model.trainable_state_dict().values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


# ------------------------------------------------------------------------- pretrained folder
def test_build_from_a_pretrained_folder_keeps_its_weights_and_resizes_the_head(base_dir):
    reference = Mask2FormerForUniversalSegmentation.from_pretrained(base_dir, local_files_only=True)
    model = build_model("s4", pretrained=str(base_dir), image_size=S)
    assert model.config.base == str(base_dir.resolve())
    assert model.config.num_labels == 2 and model.config.num_queries == 30
    assert model.model.class_predictor.weight.shape == (3, 64)
    assert model.model.model.transformer_module.queries_features.weight.shape == (30, 64)
    ours = model.model.model.pixel_level_module
    theirs = reference.model.pixel_level_module
    assert torch.equal(ours.decoder.mask_projection.weight, theirs.decoder.mask_projection.weight)
    block = "swin.encoder.layers.2.blocks.1.attention.o_proj.weight"
    assert torch.equal(ours.encoder.get_parameter(block), theirs.encoder.get_parameter(block))


def test_build_from_a_transformers_4_folder_with_the_old_swin_names(base_dir, tmp_path, caplog):
    """The hub's ADE20k checkpoint was saved by transformers 4.x (``encoder.encoder.layers...attention.self.query``)."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((base_dir / "config.json").read_text())
    state = {}
    for key, value in load_file(base_dir / "model.safetensors").items():
        if ".swin.layernorm." in key:
            continue
        for pattern, replacement in TO_REFERENCE:
            key = re.sub(pattern, replacement, key)
        state[key] = value
    assert "model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.query.weight" in state
    save_file(state, old / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="aavs"):
        from_old = build_model("s4", pretrained=str(old), image_size=S)
    assert "left randomly initialised" not in caplog.text
    from_new = build_model("s4", pretrained=str(base_dir), image_size=S)
    new_state = from_new.state_dict()
    for key, value in from_old.state_dict().items():
        if "pixel_level_module" in key and ".adapter." not in key and ".swin.layernorm." not in key:
            assert torch.equal(value, new_state[key]), key


def test_pretrained_folder_errors_name_the_missing_file(base_dir, tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        build_model("s4", pretrained=str(tmp_path / "nowhere"))
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((base_dir / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match=r"no_config/config\.json is missing"):
        build_model("s4", pretrained=str(no_config))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((base_dir / "config.json").read_text())
    with pytest.raises(InputError, match=r"no_weights/model\.safetensors is missing"):
        build_model("s4", pretrained=str(no_weights))
    (no_config / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"config\.json: not a readable JSON file"):
        build_model("s4", pretrained=str(no_config))
    (no_config / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(InputError, match=r"config\.json: model_type is 'detr', expected 'mask2former'"):
        build_model("s4", pretrained=str(no_config))
    (no_weights / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="could not load the Mask2Former weights"):
        build_model("s4", pretrained=str(no_weights))
    with pytest.raises(InputError, match="unknown model setting 'num_querys'"):
        build_model("s4", preset="tiny", num_querys=3)


# ---------------------------------------------------------------------------- our checkpoints
def test_save_load_preset_stores_everything_and_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    model = trained(build_model("avss", preset="tiny"))
    pixels, audio, prior = inputs(semantic=True)
    expected = outputs(model, pixels, audio, prior)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["aavs.json", "checkpoint.json", "model.safetensors"]
    meta = json.loads((folder / "aavs.json").read_text())
    assert (meta["task"], meta["base"], meta["weights"], meta["phase"]) == ("avss", "tiny", "all", "B")
    assert meta["classes"] == list(AVSBENCH_CLASSES)  # the class list it predicts (no data given: AVSBench's)
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict())
    torch.manual_seed(123)  # a different random init underneath: every weight must come from the file
    loaded = load_model(folder)
    assert loaded.phase == "B" and loaded.config.num_queries == 20
    assert_same(outputs(loaded, pixels, audio, prior), expected)
    with pytest.raises(InputError, match="holds a avss network, not s4"):
        load_model(folder, task="s4")


def test_save_load_pretrained_stores_trainable_parts_and_base_path(base_dir, tmp_path):
    torch.manual_seed(0)
    model = trained(build_model("ms3", pretrained=str(base_dir), image_size=S))
    pixels, audio, _ = inputs()
    expected = outputs(model, pixels, audio, None)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    meta = json.loads((folder / "aavs.json").read_text())
    assert (meta["base"], meta["weights"]) == (str(base_dir.resolve()), "trainable")
    stored = load_file(folder / "model.safetensors")
    assert set(stored) == set(model.trainable_state_dict())
    assert any(".swin.encoder." in k for k in stored) and not any(k.endswith("mask_projection.weight") for k in stored)
    assert_same(outputs(load_model(folder), pixels, audio, None), expected)
    # the base moved: the stored path no longer exists, base= points to it
    moved = tmp_path / "moved"
    base_dir.rename(moved)
    try:
        with pytest.raises(InputError, match="its base Mask2Former folder .* is missing: pass base="):
            load_model(folder)
        assert_same(outputs(load_model(folder, base=str(moved)), pixels, audio, None), expected)
    finally:
        moved.rename(base_dir)


def test_load_trainable_state_dict_names_mismatches():
    model = build_model("s4", preset="tiny")
    state = dict(model.trainable_state_dict())
    state["audio_proj.0.weight"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    del state["model.class_predictor.bias"]
    with pytest.raises(InputError) as err:
        model.load_trainable_state_dict(state)
    message = str(err.value)
    assert "unexpected keys: extra.weight" in message
    assert "missing keys: model.class_predictor.bias" in message
    assert "audio_proj.0.weight [3, 3] (expected [512, 128])" in message


def test_load_model_errors(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty/aavs\.json is missing"):
        load_model(tmp_path / "empty")
    (tmp_path / "released.pth").write_bytes(b"x")
    with pytest.raises(InputError, match="needs base="):
        load_model(tmp_path / "released.pth")


# --------------------------------------------------------------------- released checkpoints
# transformers 5 / our names -> the reference's (transformers 4.35.2 + its adapter names), written
# independently of aavs.models.checkpoint so that the import is checked against a second reading.
TO_REFERENCE = [
    (r"\.encoder\.swin\.(embeddings|encoder)\.", r".encoder.\1."),
    (r"\.attention\.o_proj\.adapter\.", ".attention.output.swin_adapt_1."),
    (r"\.mlp\.fc2\.adapter\.", ".output.swin_adapt_3."),
    (
        r"\.attention\.([qkv])_proj\.",
        lambda m: ".attention.self." + {"q": "query", "k": "key", "v": "value"}[m[1]] + ".",
    ),
    (
        r"\.attention\.relative_position_bias\.relative_position_bias_table$",
        ".attention.self.relative_position_bias_table",
    ),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
    (r"\.self_attn\.(output_proj|out_proj)\.adapter\.", ".self_attn.avs_adapt."),
]


def reference_state_dict(model) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        if ".swin.layernorm." in key:  # not in the 4.35.2 backbone
            continue
        if key.endswith("prior_embeddings.weight"):
            for row, name in enumerate(["silence_embed", "uncertain_embed", "audio_embed"]):
                state[f"model.model.transformer_module.{name}.weight"] = value[row : row + 1].clone()
            continue
        for pattern, replacement in TO_REFERENCE:
            key = re.sub(pattern, replacement, key)
        state[key] = value.clone()
    for name, buffer in model.named_buffers(remove_duplicate=False):  # 4.35.2 saved these (persistent then)
        if name.endswith("relative_position_index"):
            old = re.sub(r"\.encoder\.swin\.encoder\.", ".encoder.encoder.", name)
            state[old.replace("attention.relative_position_bias.", "attention.self.")] = buffer.clone()
    return state


@pytest.mark.parametrize("task", ["s4", "avss"])
def test_import_released_reference_layout_reproduces_outputs(task, tmp_path):
    torch.manual_seed(1)
    model = trained(build_model(task, preset="tiny"))
    pixels, audio, prior = inputs(semantic=task == "avss")
    expected = outputs(model, pixels, audio, prior)
    released = tmp_path / "released.pth"
    state = reference_state_dict(model)
    assert (
        "model.model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.output.swin_adapt_1.0.weight"
        in state
    )
    assert "model.model.pixel_level_module.encoder.encoder.layers.2.blocks.1.attention.self.query.weight" in state
    assert "model.model.transformer_module.decoder.layers.0.self_attn.avs_adapt.2.bias" in state
    torch.save(state, released)
    out = import_released_checkpoint(released, base="tiny", task=task, out=tmp_path / "imported")
    torch.manual_seed(77)
    imported = load_model(out)
    assert imported.config.num_queries == model.config.num_queries and imported.phase == "B"
    assert_same(outputs(imported, pixels, audio, prior), expected)
    assert_same(outputs(load_model(released, base="tiny", task=task), pixels, audio, prior), expected)


def test_import_on_a_pretrained_base_stores_only_trainable_parts(base_dir, tmp_path):
    torch.manual_seed(2)
    model = trained(build_model("s4", pretrained=str(base_dir), image_size=S))
    pixels, audio, _ = inputs()
    expected = outputs(model, pixels, audio, None)
    released = tmp_path / "released.pth"
    torch.save({"state_dict": reference_state_dict(model)}, released)
    code = main(
        ["import-checkpoint", str(released), "--base", str(base_dir), "--task", "s4", "--out", str(tmp_path / "ckpt")]
    )
    assert code == 0
    assert json.loads((tmp_path / "ckpt" / "aavs.json").read_text())["weights"] == "trainable"
    imported = load_model(tmp_path / "ckpt")
    assert_same(outputs(imported, pixels, audio, None), expected)


def test_import_names_what_does_not_fit(tmp_path, capsys):
    model = trained(build_model("s4", preset="tiny"))
    state = reference_state_dict(model)
    extra = dict(state, **{"model.model.transformer_module.decoder.layers.0.self_attn.lora.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(
        InputError,
        match=r"no place in the AAVS network: model\.model\.transformer_module\.decoder"
        r"\.layers\.0\.self_attn\.lora\.weight",
    ):
        load_model(tmp_path / "extra.pth", base="tiny", task="s4")
    lacking = {k: v for k, v in state.items() if "swin_adapt_3" not in k}
    torch.save(lacking, tmp_path / "lacking.pth")
    with pytest.raises(InputError, match=r"lacks weights the AAVS network needs: .*mlp\.fc2\.adapter\.0\.bias"):
        load_model(tmp_path / "lacking.pth", base="tiny", task="s4")
    torch.save(state, tmp_path / "s4.pth")
    with pytest.raises(InputError, match="has no prior embeddings, which does not fit task avss"):
        load_model(tmp_path / "s4.pth", base="tiny", task="avss")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    code = main(
        [
            "import-checkpoint",
            str(tmp_path / "junk.pth"),
            "--base",
            "tiny",
            "--task",
            "s4",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "junk.pth: not a loadable PyTorch state dict" in capsys.readouterr().err


# -------------------------------------------------------------------------------- class lists
def test_checkpoint_and_import_keep_the_data_classes(synth_root, tmp_path, capsys):
    """A checkpoint records its classes; a semantic release takes --data's names (AVSBench's by default)."""
    classes = class_names(synth_root)
    torch.manual_seed(0)
    model = trained(build_model("avss", preset="tiny", classes=classes))
    folder = save_checkpoint(model, tmp_path / "ckpt")
    assert json.loads((folder / "aavs.json").read_text())["classes"] == list(classes)
    assert load_model(folder).config.class_names == classes
    released = tmp_path / "released.pth"
    torch.save(reference_state_dict(model), released)
    out = tmp_path / "imported"
    assert (
        main(
            [
                "import-checkpoint",
                str(released),
                "--base",
                "tiny",
                "--task",
                "avss",
                "--out",
                str(out),
                "--data",
                str(synth_root),
            ]
        )
        == 0
    )
    assert json.loads((out / "aavs.json").read_text())["classes"] == list(classes)
    assert main(["import-checkpoint", str(released), "--base", "tiny", "--task", "avss", "--out", str(out)]) == 2
    assert (
        "released.pth predicts 9 classes but the avss task's built-in class list has 71 classes [background, "
        "accordion, airplane"
    ) in capsys.readouterr().err


def test_evaluating_on_data_with_other_classes_names_both_lists(synth_root, tmp_path, capsys):
    torch.manual_seed(0)
    folder = save_checkpoint(build_model("avss", preset="tiny"), tmp_path / "avsbench-classes")  # 71 classes
    code = main(["evaluate", str(folder), "--data", str(synth_root), "--split", "val"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert (
        f"checkpoint {folder} has 71 classes [background, accordion, airplane, axe, baby, bassoon, bell, bird, "
        f"... (63 more)] but data {synth_root}'s label2idx.json has 9 classes [background, violin, dog, piano, "
        "car, bird, drum, trumpet, ... (1 more)] (class 1 is 'accordion' in one, 'violin' in the other)"
    ) in err
    binary = save_checkpoint(build_model("s4", preset="tiny"), tmp_path / "binary")  # background / sounding: any data
    check_classes(load_model(binary), binary, synth_root)
