"""``aavs model-info``: what an AAVS network is made of and how many parameters each part has."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from rich.console import Console
from rich.table import Table
from transformers import SwinConfig

from aavs.models.adapters import AdaptedLinear
from aavs.models.modeling_aavs import PARTS, build_model, phase_parts


def model_info(
    preset: str | None = None, pretrained: str | None = None, task: str = "s4", classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Architecture summary and parameter counts of the ``task`` network on a preset or a local folder
    (``classes``: the semantic network's, AVSBench's 71 by default).

    ``trainable_params`` is what phase B trains (every AAVS part), ``trainable_params_phase_a`` what
    phase A trains; ``adapter_params`` counts the Swin and decoder-side adapters.
    """
    model = build_model(task, preset=preset, pretrained=pretrained, classes=classes)
    config = model.config
    parts = {part: sum(p.numel() for _, p in params) for part, params in model.parameter_parts().items()}
    m2f = config.mask2former
    swin = cast(SwinConfig, m2f.backbone_config)  # AAVS builds on Swin only (its adapters are Swin's)
    return {
        "task": config.task,
        "base": config.base,
        "semantic": config.semantic,
        "image_size": config.image_size,
        "num_labels": config.num_labels,
        "num_queries": config.num_queries,
        "backbone": {
            "embed_dim": swin.embed_dim,
            "depths": list(swin.depths),
            "num_heads": list(swin.num_heads),
            "window_size": swin.window_size,
        },
        "hidden_dim": m2f.hidden_dim,
        "pixel_decoder_layers": m2f.encoder_layers,
        "masked_attention_layers": m2f.decoder_layers - 1,
        "decoder_adapter_mode": "follow" if config.semantic else "replace",
        "train_num_points": m2f.train_num_points,
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(parts.values()),
        "trainable_params_phase_a": sum(parts[part] for part in phase_parts(model, "A")),
        "adapter_params": parts["swin_adapters"] + parts["decoder_adapters"],
        "num_swin_adapters": len(model.swin_adapters()),
        "num_decoder_adapters": sum(isinstance(m, AdaptedLinear) for m in model.modules()) - len(model.swin_adapters()),
        "parts": parts,
    }


def render_model_info(console: Console, info: dict[str, Any]) -> None:
    """A rich table of :func:`model_info`'s result."""
    swin = info["backbone"]
    title = f"AAVS {info['task']} network on {info['base']}"
    summary = Table(title=title, show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    rows = [
        ("network", "stage two (semantic, prior-guided)" if info["semantic"] else "stage one (binary)"),
        ("classes + no-object", f"{info['num_labels']} + 1"),
        ("queries", str(info["num_queries"])),
        ("input", f"{info['image_size']} x {info['image_size']}"),
        (
            "Swin",
            f"embed {swin['embed_dim']}, depths {swin['depths']}, heads {swin['num_heads']}, "
            f"window {swin['window_size']}",
        ),
        (
            "decoder",
            f"hidden {info['hidden_dim']}, {info['pixel_decoder_layers']} pixel-decoder layers, "
            f"{info['masked_attention_layers']} masked-attention layers",
        ),
        (
            "adapters",
            f"{info['num_swin_adapters']} Swin (residual), {info['num_decoder_adapters']} decoder-side "
            f"({info['decoder_adapter_mode']} the projection)",
        ),
        ("loss points", str(info["train_num_points"])),
    ]
    for row in rows:
        summary.add_row(*row)
    console.print(summary)

    counts = Table(title="parameters")
    counts.add_column("part")
    counts.add_column("parameters", justify="right")
    for part in PARTS:
        if info["parts"][part]:
            counts.add_row(part.replace("_", " "), f"{info['parts'][part]:,}")
    counts.add_row("adapters (Swin + decoder-side)", f"{info['adapter_params']:,}", style="bold")
    counts.add_row("trainable, phase A", f"{info['trainable_params_phase_a']:,}")
    counts.add_row("trainable, phase B", f"{info['trainable_params']:,}", style="bold")
    counts.add_row("frozen", f"{info['total_params'] - info['trainable_params']:,}")
    counts.add_row("total", f"{info['total_params']:,}", style="bold")
    console.print(counts)
