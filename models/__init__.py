"""aavs.models: the AAVS network (Mask2Former + adaptive audio queries + adapters) and its audio encoder.

The public names below are imported lazily, so ``import aavs.models.vggish`` does not pay for
transformers::

    from aavs.models import build_model, load_model, save_checkpoint, set_phase, phase_parameter_groups

The recipe reaches a network only through ``aavs.models.registry`` (keyed by the experiment file's
``model.type``) and the ``aavs.models.protocol.SegmentationModel`` methods.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AAVS": "modeling_aavs",
    "AAVSOutput": "modeling_aavs",
    "build_model": "modeling_aavs",
    "set_phase": "modeling_aavs",
    "phase_parameter_groups": "modeling_aavs",
    "AAVSConfig": "configuration_aavs",
    "SegmentationModel": "protocol",
    "save_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "read_weights": "checkpoint",
    "import_released_checkpoint": "checkpoint",
    "model_info": "info",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
