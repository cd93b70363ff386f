"""experiments/avss.yaml as a researcher runs it (issue 22): the two files it names replaced by
stand-ins in their published formats (tests/fixtures/make_standins.py: the Hugging Face folder of
``facebook/mask2former-swin-base-ade-semantic`` with its 150 ADE20k classes and transformers 4.x key
names, and the converted VGGish state dict), on an AVSBench-shaped set of one video per subset and
split (71 classes), through both stages on the CPU (``--local``), then ``aavs predict`` on one clip.

To run in seconds the Mask2Former is reduced (one Swin block a stage, widths 32 / 64, one pixel-decoder
layer, one masked-attention layer per level: make_standins.REDUCED) and frames enter at 128 px
(``model.overrides.image_size``) instead of 384; the folder's format, its 150-class head, the VGGish
layout and every step of the run are the paper file's. Each stage has 2 epochs (one of them phase A,
stage two at ``adapter_warmup`` 0.5 instead of 1/3) and one training video an epoch. The full-size
run is tests/benchmarks/bench_swin_base.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from safetensors.torch import load_file

from aavs.datasets.audio_features import cache_key, embed_examples, read_audio, waveform_to_examples
from aavs.datasets.files import file_sha256
from aavs.datasets.layout import AVSBENCH_CLASSES, SPLITS, class_names, select_videos
from aavs.datasets.palette import unknown_colours
from aavs.datasets.synth_shape import write_shaped_avsbench
from aavs.datasets.video import write_video
from aavs.models import load_model
from aavs.models.presets import preset_config
from aavs.models.vggish import RAW_FEATURES, VGGish, build_vggish, weights_identity
from aavs.orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
import make_standins  # noqa: E402

pytestmark = pytest.mark.slow

IMAGE_SIZE = 128
CLIP_SECONDS = 3
# A Swin weight under its transformers 4.x name, as the hub file has it (transformers 5 calls it q_proj).
SWIN_QUERY_4X = "model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.query.weight"
QUERY_FEATURES = "model.transformer_module.queries_features.weight"
QUERY_EMBEDDINGS = "model.transformer_module.queries_embedder.weight"


def _clip(root: Path, out: Path) -> Path:
    """The first CLIP_SECONDS of the v1s test video as an mp4 (one frame a second, shown for 5 frames)."""
    record = select_videos(root, "avss", "test")[0]
    frames = [np.asarray(Image.open(record.frame_path(root, i)).convert("RGB")) for i in range(CLIP_SECONDS)]
    samples, rate = soundfile.read(record.audio_path(root), dtype="int16", always_2d=True)
    mono = samples.mean(axis=1).astype(np.int16)[: CLIP_SECONDS * rate]
    write_video(out, (f for f in frames for _ in range(5)), 5, options={"preset": "ultrafast"}, audio=(mono, rate))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict[str, Path]:
    """Stand-ins, data, ``aavs run experiments/avss.yaml --local`` and ``aavs predict`` on one clip."""
    work = tmp_path_factory.mktemp("swin-base-path")
    base, vggish = make_standins.write_standins(work / "weights", **make_standins.REDUCED)
    data = write_shaped_avsbench(work / "data", scale=1e-5, workers=1)  # every count rounds to one video
    overrides = {
        "data.root": data,
        "model.pretrained": base,
        "model.vggish": vggish,
        "model.overrides.image_size": IMAGE_SIZE,
        "model.overrides.train_num_points": 1024,  # as the tiny preset: its 32 x 32 mask logits have 1024 pixels
        "compute.gpus_per_worker": 0,
        "compute.cpus_per_worker": 1,
        "compute.loader_workers": 0,
        "stages.localize.epochs": 2,
        "stages.localize.max_videos": 1,
        "stages.semantic.epochs": 2,
        "stages.semantic.max_videos": 1,
        "stages.semantic.params.adapter_warmup": 0.5,
    }
    sets = [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]
    experiment = str(REPO / "experiments" / "avss.yaml")
    assert main(["run", experiment, "--local", "--results", str(work / "results"), *sets]) == 0
    results = work / "results" / "avss-stepping-stones"
    clip = _clip(data, work / "clip.mp4")
    assert main(["predict", str(clip), "--experiment", str(results), "--out", str(work / "predicted")]) == 0
    return {"base": base, "vggish": vggish, "data": data, "results": results, "predicted": work / "predicted" / "clip"}


def test_the_standins_have_the_published_layouts(run):
    config = json.loads((run["base"] / "config.json").read_text())
    assert config["model_type"] == "mask2former" and config["backbone_config"]["model_type"] == "swin"
    assert config["id2label"]["0"] == "wall" and config["id2label"]["149"] == "flag"
    assert len(config["id2label"]) == 150 and config["label2id"]["skyscraper"] == 48
    keys = set(load_file(str(run["base"] / "model.safetensors")))
    assert SWIN_QUERY_4X in keys and not any(".swin." in k for k in keys)  # 4.x names, nothing 5.x adds
    assert load_file(str(run["base"] / "model.safetensors"))["class_predictor.weight"].shape[0] == 151
    vggish = torch.load(run["vggish"], weights_only=True)
    assert {k: tuple(v.shape) for k, v in vggish.items()} == dict(make_standins.VGGISH_LAYOUT)
    assert {k: tuple(v.shape) for k, v in VGGish().state_dict().items()} == dict(make_standins.VGGISH_LAYOUT)
    # The full-size configuration is the architecture of the project's swin-base preset.
    full, preset = make_standins.ade_config(), preset_config("swin-base", "avss")[0]
    for field in ("hidden_dim", "feature_size", "mask_feature_size", "encoder_layers", "decoder_layers"):
        assert getattr(full, field) == getattr(preset, field), field
    for field in ("embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "image_size", "drop_path_rate"):
        assert getattr(full.backbone_config, field) == getattr(preset.backbone_config, field), field


def test_stage_one_trains_both_phases_and_exports_every_frame(run):
    results, data = run["results"], run["data"]
    best = json.loads((results / "localize" / "best.json").read_text())
    assert set(best["test"]) == {"miou", "fscore"} and all(0 <= v <= 1 for v in best["test"].values())
    rows = [json.loads(line) for line in (results / "localize/trials/t000/metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["A", "B"] and all(0 <= r["val/miou"] <= 1 for r in rows)
    masks = Path(best["masks"])
    expected = {
        f"{r.subset}/{r.uid}/{i}.png"
        for split in SPLITS
        for r in select_videos(data, "avss", split)
        for i in range(r.num_frames)
    }
    assert {str(p.relative_to(masks)) for p in masks.rglob("*.png")} == expected and len(expected) == 60
    assert json.loads((masks / "_SUCCESS.json").read_text())["checkpoint_sha256"] == best["checkpoint_sha256"]
    assert set(np.unique(np.asarray(Image.open(masks / sorted(expected)[0])))) <= {0, 255}


def test_stage_two_has_the_datas_71_classes_on_the_ade_base(run):
    results, data, base = run["results"], run["data"], run["base"]
    best = json.loads((results / "semantic" / "best.json").read_text())
    assert set(best["test"]) == {"miou", "fscore", "miou_no_bg", "fscore_no_bg"}
    config = json.loads((results / "semantic/trials/t000/config.json").read_text())
    assert config["prior"] == json.loads((results / "localize" / "best.json").read_text())["masks"]
    rows = (results / "semantic/trials/t000/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["phase"] for r in rows] == ["A", "B"]
    model = load_model(best["checkpoint"])
    assert list(model.config.class_names) == list(class_names(data)) == list(AVSBENCH_CLASSES)
    assert model.model.class_predictor.weight.shape == (72, 64)  # 150 ADE classes -> 71 + no-object
    ade = load_file(str(base / "model.safetensors"))
    ours = model.state_dict()
    # From the base: the Swin weights (read under their 4.x names) and the query features, which stage
    # two keeps frozen (docs/method.md §4); the query embeddings start there and train.
    swin = next(v for k, v in ours.items() if k.endswith("layers.0.blocks.0.attention.q_proj.weight"))
    assert torch.equal(swin, ade[SWIN_QUERY_4X])
    assert torch.equal(ours[f"model.{QUERY_FEATURES}"], ade[QUERY_FEATURES])
    assert ours[f"model.{QUERY_EMBEDDINGS}"].shape == ade[QUERY_EMBEDDINGS].shape
    assert not torch.equal(ours[f"model.{QUERY_EMBEDDINGS}"], ade[QUERY_EMBEDDINGS])
    report = results / "report"
    for name in ("localize/curves.png", "semantic/curves.png", "semantic/per_class.png", "semantic/samples.png"):
        assert (report / name).stat().st_size > 0, name
    per_class = json.loads((report / "semantic" / "predictions.json").read_text())["per_class"]
    assert per_class["classes"] == list(AVSBENCH_CLASSES)


def test_the_run_embedded_the_audio_with_the_converted_vggish(run):
    """Every video's embedding is cached under the stand-in file's identity, and is what aavs's VGGish
    loaded from that file computes."""
    data = run["data"]
    folder = run["results"] / "cache" / cache_key(weights_identity(run["vggish"]), RAW_FEATURES)
    records = [r for split in SPLITS for r in select_videos(data, "avss", split)]
    cached = {r.uid: folder / f"{file_sha256(r.audio_path(data))}.npy" for r in records}
    assert len(records) == 9 and all(path.is_file() for path in cached.values())
    samples, rate = read_audio(records[0].audio_path(data))
    first = embed_examples(waveform_to_examples(samples[: 2 * rate], rate), build_vggish(run["vggish"]))  # 2 s
    np.testing.assert_allclose(
        np.load(cached[records[0].uid])[:2], first, rtol=1e-4, atol=1e-4
    )  # batching changes the last digits


def test_predict_names_the_datas_classes_from_both_stages(run):
    out, results = run["predicted"], run["results"]
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in masks] == [f"{t}.png" for t in range(CLIP_SECONDS)]
    for path in masks:  # AVSBench palette colours of the data's 71 classes, nothing else
        assert unknown_colours(np.asarray(Image.open(path).convert("RGB")), len(AVSBENCH_CLASSES)) == []
    assert (out / "overlay.mp4").stat().st_size > 0
    timeline = json.loads((out / "timeline.json").read_text())
    models = timeline["models"]
    assert models["task"] == "avss"
    assert models["checkpoint"] == json.loads((results / "semantic" / "best.json").read_text())["checkpoint"]
    assert models["prior_checkpoint"] == json.loads((results / "localize" / "best.json").read_text())["checkpoint"]
    assert len(timeline["timeline"]) == CLIP_SECONDS
    named = {c["name"] for second in timeline["timeline"] for c in second["sounding"]}
    assert named <= set(AVSBENCH_CLASSES[1:])
