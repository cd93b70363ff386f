"""aavs.datasets: AVSBench layout and reader, synthetic AVSBench, audio features, masks and metrics.

The names below are re-exported lazily (PEP 562), so ``from aavs.datasets.errors import InputError``
in the command line does not import torch and ``aavs --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "audio_features": ("compute_features", "embed_clip", "embed_videos", "waveform_to_examples"),
    "avsbench": ("AVSBenchDataset", "collate_videos"),
    "check": ("Problem", "check_data_root", "render_problems"),
    "errors": ("InputError",),
    "layout": (
        "AVSBENCH_CLASSES",
        "FRAMES_PER_SUBSET",
        "SPLITS",
        "SUBSETS",
        "VideoRecord",
        "class_names",
        "read_label2idx",
        "read_metadata",
        "select_videos",
    ),
    "masks": ("read_binary_masks", "read_class_masks", "write_binary_masks", "write_class_masks"),
    "metrics": ("BinaryMetric", "SemanticMetric", "binary_video_scores"),
    "palette": ("decode_colour_mask", "encode_class_map", "palette"),
    "score": ("render_scores", "score_predictions"),
    "synth": ("write_synthetic_avsbench",),
    "tasks": ("TASKS", "Task", "get_task"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
