"""Our AAVS against the reference implementation's own outputs (tests/fixtures/reference-parity).

The fixture holds, for the stage-one (``avs`` tree, our ``s4``) and stage-two (``avss``, with the prior)
networks of the reference code: a release-format ``.pth``, the Mask2Former base folder, inputs and the
reference's per-class score maps (every 4th pixel of the 224 x 224 maps). Its README says how it was made.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from aavs.datasets.errors import InputError
from aavs.models import load_model
from aavs.orchestrator.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "reference-parity"
NETWORKS = [("avs", "s4"), ("avss", "avss")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fixture_files(variant: str) -> tuple[Path, Path, dict[str, np.ndarray], np.ndarray, int]:
    folder = FIXTURE / variant
    inputs = dict(np.load(folder / "inputs.npz"))
    reference = np.load(folder / "scores.npz")
    return folder / "released.pth", folder / "base", inputs, reference["scores"], int(reference["stride"])


def our_scores(model, inputs: dict[str, np.ndarray], stride: int) -> np.ndarray:
    prior = inputs["prior"] if model.config.semantic else None
    return model.predict(inputs["frames"], inputs["audio"], prior)[..., ::stride, ::stride].numpy()


def assert_matches_reference(ours: np.ndarray, reference: np.ndarray) -> None:
    """Within a relative error of 1e-4 of the reference's score maps.

    No separate check that the predicted classes agree: on these tiny random networks the reference's
    argmax is one class on every pixel (background for ``avs``, one class for ``avss``), so agreement
    would test nothing. The relative-error bound carries it: a pixel's class can change only where the
    error moves two of its scores apart by the reference's margin between its top two classes, which
    takes an error of at least margin / sqrt(2); the bound allows less (checked first)."""
    assert ours.shape == reference.shape
    top_two = np.sort(reference, axis=1)[:, -2:]
    margin = float((top_two[:, 1] - top_two[:, 0]).min())
    assert 1e-4 * np.linalg.norm(reference) < margin / np.sqrt(2), "the bound no longer implies the classes"
    relative = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    assert relative < 1e-4, f"relative error {relative:.3g}"


@pytest.mark.parametrize("variant,task", NETWORKS)
def test_released_checkpoint_reproduces_the_reference_scores(variant, task):
    released, base, inputs, reference, stride = fixture_files(variant)
    model = load_model(released, base=str(base), task=task)
    assert model.config.num_labels == reference.shape[1]
    assert_matches_reference(our_scores(model, inputs, stride), reference)


@pytest.mark.parametrize("variant,task", NETWORKS)
def test_imported_checkpoint_gives_the_same_scores(variant, task, tmp_path):
    released, base, inputs, reference, stride = fixture_files(variant)
    code = main(
        ["import-checkpoint", str(released), "--base", str(base), "--task", task, "--out", str(tmp_path / "ours")]
    )
    assert code == 0
    meta = json.loads((tmp_path / "ours" / "aavs.json").read_text())
    assert meta["task"] == task and meta["phase"] == "B"
    assert_matches_reference(our_scores(load_model(tmp_path / "ours"), inputs, stride), reference)


def test_weights_come_from_the_release_not_from_the_base(tmp_path):
    """The base folder gives the architecture only: with every base weight perturbed, the scores hold."""
    released, base, inputs, reference, stride = fixture_files("avss")
    other = Path(shutil.copytree(base, tmp_path / "base"))
    weights = load_file(other / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    save_file(
        {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in weights.items()},
        other / "model.safetensors",
        metadata={"format": "pt"},
    )
    assert_matches_reference(our_scores(load_model(released, base=str(other), task="avss"), inputs, stride), reference)


def test_a_release_with_a_renamed_or_missing_tensor_fails_naming_it(tmp_path):
    released, base, *_ = fixture_files("avs")
    state = torch.load(released, map_location="cpu", weights_only=True)
    adapter = "model.model.pixel_level_module.encoder.encoder.layers.1.blocks.0.output.swin_adapt_3.2.weight"
    assert adapter in state
    renamed = dict(state)
    renamed[adapter.replace("swin_adapt_3", "swin_adapt_2")] = renamed.pop(adapter)
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(InputError, match=r"no place in the AAVS network: .*blocks\.0\.output\.swin_adapt_2\.2\.weight"):
        load_model(tmp_path / "renamed.pth", base=str(base), task="s4")
    missing = {k: v for k, v in state.items() if k != adapter}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(
        InputError,
        match=r"lacks weights the AAVS network needs: .*layers\.1\.blocks\.0\.mlp\.fc2"
        r"\.adapter\.2\.weight",
    ):
        load_model(tmp_path / "missing.pth", base=str(base), task="s4")
