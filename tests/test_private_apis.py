"""The private APIs of our dependencies that aavs still uses, each pinned here with why it stays.

A release that renames or changes one fails this module by name, instead of a training run failing
somewhere inside. Where a public API exists we use it (``dataclasses.fields`` for a Mask2Former
config's settings, ``ray.tune.get_context`` to tell a Tune trial); these are the ones without.
"""

from __future__ import annotations

import inspect

import pytest


def test_accelerate_reset_state_clears_the_singleton():
    """``orchestrator/recipe/accelerator.py``: each training phase builds a fresh ``Accelerator`` in the
    same process (and a ``--local`` run several trials). Accelerate keeps its state in a process-wide
    singleton and has no public way to drop it, so a second ``Accelerator`` with other settings (another
    DeepSpeed plugin, another precision) would raise without ``AcceleratorState._reset_state``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    Accelerator(cpu=True)
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(cpu=True, mixed_precision="bf16")
    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    finally:
        AcceleratorState._reset_state(reset_partial_state=False)


@pytest.mark.parametrize(
    "name, ours",
    [
        (
            "Mask2FormerMaskedAttentionDecoder",
            (
                "inputs_embeds",
                "multi_stage_positional_embeddings",
                "pixel_embeddings",
                "encoder_hidden_states",
                "query_position_embeddings",
                "feature_size_list",
                "output_attentions",
                "output_hidden_states",
                "return_dict",
            ),
        ),
        ("Mask2FormerMaskPredictor", ("outputs", "pixel_embeddings", "attention_mask_target_size")),
        (
            "Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention",
            (
                "hidden_states",
                "attention_mask",
                "encoder_hidden_states",
                "encoder_attention_mask",
                "position_embeddings",
                "reference_points",
                "spatial_shapes_list",
                "level_start_index",
                "output_attentions",
            ),
        ),
    ],
)
def test_transformers_internal_forwards_keep_the_signatures_aavs_overrides(name, ours):
    """``models/modeling_aavs.py``: AAVS subclasses three internal Mask2Former modules and promotes the
    library's instances to them (docs/method.md §3), so that parameter names stay those of the released
    checkpoints without copying the model. Two overrides call ``super().forward`` with these
    parameters; the deformable attention's (``models/deformable_attention.py``) is called by the
    library's encoder layer with them. transformers may change an internal signature in any release
    (pinned < 6)."""
    from transformers.models.mask2former import modeling_mask2former

    parameters = inspect.signature(getattr(modeling_mask2former, name).forward).parameters
    assert tuple(p for p in parameters if p != "self") == ours


def test_ray_address_file_helper_used_by_the_cluster_test():
    """``keep_ray_address_file`` in conftest.py: a test cluster must put back the address file a bare
    ``ray.init()`` reads, so other Ray users on the machine never join it; Ray exposes the file's
    path only through ``ray._common.utils``."""
    from ray._common.utils import get_ray_address_file

    assert str(get_ray_address_file(None)).endswith("ray_current_cluster")
