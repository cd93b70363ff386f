"""A model type from a package of its own, end to end through the ``aavs`` console script.

The package is written as pip installs one: ``plugin_seg`` and a ``.dist-info`` whose
``entry_points.txt`` names its ``ModelType`` in the ``aavs.models`` group, found on ``PYTHONPATH`` by a
subprocess. Its network is AVSBench's baseline under a name and a configuration class of its own, so its
checkpoints record ``plugin-seg`` and are read back through the plugin's ``load``. The run trains it
through both Stepping Stones stages (``run --local``: training, stage one's mask export, the test pass
and the report), then ``evaluate`` and ``predict`` load its checkpoints by their record alone. A broken
entry point beside it is named in a warning and the rest still works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from PIL import Image

from aavs.datasets.layout import select_videos
from aavs.datasets.video import write_video

PLUGIN = '''
"""AVSBench's baseline under a model type of its own: what a third party's package looks like."""
from aavs.models import checkpoint_avsbench, modeling_avsbench
from aavs.models.configuration_avsbench import AVSBenchConfig
from aavs.models.registry import ModelType


class PluginConfig(AVSBenchConfig):
    model_type = "plugin-seg"


def _as_plugin(model):
    model.config = PluginConfig(**model.config.to_dict())
    return model


def build(task, **kwargs):
    return _as_plugin(modeling_avsbench.build_model(task, **kwargs))


def load(path, base=None, task=None):
    return _as_plugin(checkpoint_avsbench.load_model(path, base=base, task=task))


MODEL_TYPE = ModelType(
    name="plugin-seg",
    description="a model type from another package",
    build="plugin_seg:build",
    load="plugin_seg:load",
    read_weights="aavs.models.checkpoint_avsbench:read_weights",
    presets=("tiny",),
    temporal=True,
    info="aavs.models.checkpoint_avsbench:model_info",
    render_info="aavs.models.checkpoint_avsbench:render_model_info",
)
'''

EXPERIMENT = {
    "name": "plugin",
    "data": {"synthetic": {"videos_per_split": 1, "eval_videos_per_split": 1, "seed": 0}},
    "model": {"type": "plugin-seg", "preset": "tiny"},
    "compute": {"workers_per_trial": 1, "gpus_per_worker": 0, "strategy": "plain", "loader_workers": 0},
    "stages": [
        {"name": "localize", "task": "avss-binary", "epochs": 1, "params": {"lr": 1e-3, "weight_decay": 0}},
        {"name": "semantic", "task": "avss", "prior": "localize", "epochs": 1, "params": {"lr": 1e-3}},
    ],
}


def install_plugin(site: Path) -> None:
    """``plugin_seg`` and its ``plugin_seg-0.1.dist-info`` (METADATA, entry_points.txt), as pip writes them."""
    (site / "plugin_seg").mkdir(parents=True)
    (site / "plugin_seg" / "__init__.py").write_text(PLUGIN)
    info = site / "plugin_seg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-seg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[aavs.models]\nplugin-seg = plugin_seg:MODEL_TYPE\nbroken = plugin_seg_missing:MODEL_TYPE\n"
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_model_type_from_an_entry_point_trains_exports_evaluates_and_predicts(tmp_path):
    install_plugin(tmp_path / "site")
    aavs = shutil.which("aavs", path=str(Path(sys.executable).parent))
    assert aavs, "the aavs console script is installed beside this Python"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")])),
    }

    def console(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([aavs, *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    run = console("run", "plugin.yaml", "--local", "--results", "results")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (
        "entry point broken = plugin_seg_missing:MODEL_TYPE (aavs.models): not loaded (ModuleNotFoundError"
        in run.stderr
    )
    results = tmp_path / "results" / "plugin"
    best = {s: json.loads((results / s / "best.json").read_text()) for s in ("localize", "semantic")}
    for stage in best.values():
        record = json.loads((Path(stage["checkpoint"]) / "checkpoint.json").read_text())
        assert record["model_type"] == "plugin-seg"
    masks = sorted((results / "localize" / "masks").rglob("*.png"))
    assert masks, "stage one's masks were exported"
    assert (results / "report" / "semantic" / "samples.png").is_file()  # the report's sample grid

    # evaluate: no --type; the record names the plugin, whose load reads the checkpoint.
    data = Path(best["semantic"]["data_root"])
    evaluated = console(
        "evaluate",
        best["semantic"]["checkpoint"],
        "--data",
        str(data),
        "--split",
        "test",
        "--prior",
        str(results / "localize" / "masks"),
        "--json",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout)["miou"] == pytest.approx(best["semantic"]["test"]["miou"], abs=1e-9)

    # predict: stage one's network feeding stage two's, both loaded by their records.
    record = select_videos(data, "avss-binary", "test")[0]
    frames = [np.asarray(Image.open(record.frame_path(data, i)).convert("RGB")) for i in range(record.num_frames)]
    samples, rate = soundfile.read(record.audio_path(data), dtype="int16")
    video = tmp_path / "clip.mkv"
    write_video(video, iter(frames), 1, audio=(samples, rate), codec="ffv1", pix_fmt="bgr0")
    predicted = console("predict", str(video), "--experiment", str(results), "--out", "out", "--json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    summary = json.loads(predicted.stdout)
    assert summary["done"] == 1
    assert len(list((tmp_path / "out" / "clip" / "masks").glob("*.png"))) == record.num_frames

    wrong = console("model-info", "--type", "plugin-seg", "--preset", "swin-base", "--task", "s4")
    assert wrong.returncode == 2 and "--preset swin-base: model type plugin-seg has the presets tiny" in wrong.stderr
