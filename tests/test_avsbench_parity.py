"""Our AVSBench baseline against the public code's own outputs (tests/fixtures/avsbench-parity, written by
tests/fixtures/avsbench_parity.py): the same named weights, imported through the released-checkpoint
mapping, give the same logits (relative error < 1e-4) and the same S4, MS3 and AVSS losses."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from fixtures.avsbench_parity import FIXTURE, FRAMES, fill, inputs, sample_positions
from safetensors.torch import load_file

from aavs.datasets.errors import InputError
from aavs.models.checkpoint_avsbench import from_released_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEYS = json.loads(gzip.decompress((FIXTURE / "keys.json.gz").read_bytes()))
SUMMARY = json.loads((FIXTURE / "summary.json").read_text())
OUTPUTS = load_file(str(FIXTURE / "outputs.safetensors"))


def public_state(name: str) -> dict[str, torch.Tensor]:
    """The public network's state dict of the fixture, filled as the generator filled it."""
    state = {key: fill(key, tuple(shape)) for key, shape in KEYS[name]}
    state.update({key: torch.tensor(value) for key, value in SUMMARY[name]["overrides"].items()})
    return state


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("backbone", ["resnet-50", "pvt-v2-b5"])
@pytest.mark.parametrize("variant", ["binary", "semantic"])
def test_logits_and_losses_match_the_public_code(variant, backbone):
    name = f"{variant}-{backbone}"
    x = inputs(variant)
    assert float(x["frames"].sum()) == pytest.approx(SUMMARY[name]["input_sum"], rel=1e-6), "the seeded inputs drifted"
    task = "avss" if variant == "semantic" else "s4"
    model = from_released_state(public_state(name), task).eval()
    assert model.config.backbone == backbone  # read from the file's keys
    t = FRAMES[variant]
    with torch.no_grad():
        out = model(x["frames"], x["audio"], video_frames=[t])
    logits = out.logits
    if variant == "binary":
        expected = OUTPUTS[f"{name}/logits"]
        assert 0.2 < float((expected > 0).float().mean()) < 0.8  # both answers occur
        assert relative_error(logits, expected) < 1e-4
    else:
        sample = logits.flatten()[sample_positions(tuple(logits.shape))]
        assert relative_error(sample, OUTPUTS[f"{name}/sample"]) < 1e-4
        clear = OUTPUTS[f"{name}/margin"] > 1e-3  # pixels whose winner a rounding cannot change
        argmax = OUTPUTS[f"{name}/argmax"].long()
        assert argmax.unique().numel() > 5
        assert torch.equal(logits.argmax(1)[clear], argmax[clear])

    # The losses as the public train.sh scripts configure them, on the same forward pass.
    losses = SUMMARY[name]["losses"]
    labels = x["labels"]
    if variant == "semantic":
        with torch.no_grad():
            ours = model(x["frames"], x["audio"], labels=labels, video_frames=[t]).loss
        assert float(ours) == pytest.approx(losses["avss"], rel=1e-4)
    else:
        first = torch.zeros(t, dtype=torch.bool)
        first[0] = True  # S4 trains on each video's first frame
        with torch.no_grad():
            s4 = model(x["frames"], x["audio"], labels=labels, loss_frames=first, video_frames=[t]).loss
        assert float(s4) == pytest.approx(losses["s4"], rel=1e-4)
        # MS3's matching loss is summed over the batch's frames there, averaged here: its per-frame
        # weight is 0.5 x the frames of a batch (ours defaults to 10 = 0.5 x 4 videos x 5 frames).
        model.config.avm_weight = 0.5 * t
        with torch.no_grad():
            ms3 = model(x["frames"], x["audio"], labels=labels, video_frames=[t]).loss
        assert float(ms3) == pytest.approx(losses["ms3"], rel=1e-4)


def test_a_renamed_or_missing_tensor_is_named():
    state = public_state("binary-resnet-50")
    wrapped = from_released_state({f"module.{k}": v for k, v in state.items()}, "ms3")  # saved from DataParallel
    plain = from_released_state(state, "ms3").state_dict()
    assert all(torch.equal(v, plain[k]) for k, v in wrapped.state_dict().items())
    renamed = dict(state)
    renamed["tpavi_b2.align_channels.weight"] = renamed.pop("tpavi_b2.align_channel.weight")
    with pytest.raises(InputError, match=r"tpavi_b2\.align_channels\.weight"):
        from_released_state(renamed, "s4")
    missing = dict(state)
    del missing["path3.resConfUnit1.conv2.bias"]
    with pytest.raises(InputError, match=r"lacks tensors .*fusion\.2\.skip_unit\.conv2\.bias"):
        from_released_state(missing, "s4")
    with pytest.raises(
        InputError, match=r"output_conv\.4\.weight has 1 outputs, expected 71 \(the avss network's classes\)"
    ):
        from_released_state(state, "avss")
