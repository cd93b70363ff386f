"""A model type from a package of its own: an ``aavs.models`` entry point in a real ``.dist-info`` on
``PYTHONPATH``, found by the ``aavs`` console script in a subprocess; a broken entry point is named in
a warning and the other types still work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = """
from aavs.models.registry import ModelType

# AAVS's own functions under a second name: what is shown is how the type is found, not a new network.
MODEL_TYPE = ModelType(
    name="plugin-seg",
    description="a model type from another package",
    build="aavs.models.modeling_aavs:build_model",
    load="aavs.models.checkpoint:load_model",
    read_weights="aavs.models.checkpoint:read_weights",
    presets=("tiny",),
    info="aavs.models.info:model_info",
    render_info="aavs.models.info:render_model_info",
)
"""


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
def test_a_model_type_from_an_entry_point_is_found_by_the_console_script(tmp_path):
    install_plugin(tmp_path / "site")
    aavs = shutil.which("aavs", path=str(Path(sys.executable).parent))
    assert aavs, "the aavs console script is installed beside this Python"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")])),
    }

    def model_info(model_type: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [aavs, "model-info", "--type", model_type, "--preset", "tiny", "--task", "s4", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    plugin, builtin = model_info("plugin-seg"), model_info("aavs")
    assert plugin.returncode == 0, plugin.stderr[-3000:]
    assert json.loads(plugin.stdout) == json.loads(builtin.stdout)  # the same functions, found through the entry point
    assert (
        "entry point broken = plugin_seg_missing:MODEL_TYPE (aavs.models): not loaded (ModuleNotFoundError"
        in plugin.stderr
    )
    wrong = subprocess.run(
        [aavs, "model-info", "--type", "plugin-seg", "--preset", "swin-base", "--task", "s4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrong.returncode == 2 and "--preset swin-base: model type plugin-seg has the presets tiny" in wrong.stderr
