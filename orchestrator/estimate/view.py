"""``aavs estimate``'s sheet (:mod:`.estimate`) as rich tables: one column per stage, then the run's
one-off work and the totals."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render_estimate(console: Console, sheet: dict[str, Any]) -> None:
    """The sheet: the device and its assumptions, the per-stage table, the totals, the notes."""
    device, unit = sheet["device"], sheet["device"]["unit"]
    hours = "GPU-hours" if unit == "GPU" else "CPU core-hours"
    console.print(f"{sheet['experiment']} ({sheet['file']}): {sheet['data']}", soft_wrap=True, markup=False)
    console.print(
        f"{device['count']:g} x {device['name']} ({unit}): peak {flops(device['peak_flops_per_s'])}/s "
        f"{device['precision']} ({device['peak_source']}); MFU {device['mfu']:.3g} ({device['mfu_source']})",
        soft_wrap=True,
        markup=False,
    )
    table = Table(title="per stage", title_justify="left")
    table.add_column("")
    for stage in sheet["stages"]:
        table.add_column(stage["name"], justify="right")
    for label, cell in _ROWS(hours):
        table.add_row(label, *(cell(stage) for stage in sheet["stages"]))
    console.print(table)
    once, total = sheet["once"], sheet["total"]
    audio, base = once["audio_features"], once["pretraining"]
    summary = Table(title="once per run, and in all", title_justify="left", show_header=False)
    summary.add_column("")
    summary.add_column("", justify="right")
    summary.add_row("Ray's start", duration(once["ray_start_s"]))
    if once["synthetic_data_s"]:
        summary.add_row("writing the synthetic set", duration(once["synthetic_data_s"]))
    summary.add_row(
        "audio embeddings (VGGish on this CPU)", f"{audio['examples']:,} examples, {duration(audio['wall_s'])}"
    )
    if base["flops"]:
        summary.add_row(
            "model.pretrain's base",
            f"{flops(base['flops'])} at MFU {base['mfu']:.2g}, {duration(base['wall_s'])}",
        )
    summary.add_row("the report at the end", duration(once["end_s"]))
    summary.add_row("trials", f"{total['trials']:,}")
    summary.add_row("FLOPs", flops(total["flops"]))
    summary.add_row(hours, f"{total['device_hours']:,.3g}")
    summary.add_row(f"wall time on {device['count']:g} {unit}s", duration(total["wall_s"]))
    summary.add_row(
        "checkpoints of the search",
        f"{size(total['checkpoint_bytes'])} (tensors {size(total['checkpoint_tensor_bytes'])})",
    )
    console.print(summary)
    for note in sheet["notes"]:
        console.print(f"note: {note}", soft_wrap=True, markup=False)


def _ROWS(hours: str) -> list[tuple[str, Any]]:  # noqa: N802 - a table's definition
    return [
        ("task", lambda s: s["task"]),
        ("scheduler", lambda s: s["scheduler"]),
        ("trials x epochs", lambda s: f"{s['trials']} x {s['epochs']}"),
        ("expected trial-epochs", lambda s: f"{s['trial_epochs']:,.4g} ({s['epoch_share']:.0%})"),
        ("phase A epochs", lambda s: str(s["phase_a_epochs"])),
        ("trials at once (devices each)", lambda s: f"{s['concurrent_trials']} ({s['devices_per_trial']:g})"),
        ("training frames / epoch", lambda s: f"{s['frames']['train_per_epoch']:,.6g}"),
        ("evaluation frames / epoch", lambda s: f"{s['frames']['eval_per_epoch']:,}"),
        ("test + mask-export frames", lambda s: f"{s['frames']['test']:,} + {s['frames']['mask_export']:,}"),
        ("FLOPs / training frame (A, B)", lambda s: _phases(s["flops_per_frame"]["train"])),
        ("FLOPs / evaluation frame", lambda s: _phases(s["flops_per_frame"]["eval"])),
        ("FLOPs", lambda s: flops(s["flops"]["total"])),
        (hours, lambda s: f"{s['device_hours']:,.3g}"),
        ("wall time", lambda s: duration(s["wall_s"])),
        ("checkpoints / trial", lambda s: size(s["checkpoints"]["per_trial_bytes"])),
        ("checkpoints / stage", lambda s: size(s["checkpoints"]["search_bytes"])),
        ("frames/s of one device", lambda s: f"{s['loader']['frames_per_s_per_device']:,.4g}"),
        (
            "loader workers / device (configured)",
            lambda s: f"{s['loader']['workers_needed_per_device']} ({s['loader']['configured_per_worker']})",
        ),
        ("network params (image size)", lambda s: f"{s['network']['params']:,} ({s['network']['image_size']})"),
    ]


def _phases(values: dict[str, float]) -> str:
    return ", ".join(flops(v) for v in values.values())


def flops(value: float) -> str:
    """``288 GFLOP``-style: the largest prefix under which the value is at least 1."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(value) >= scale:
            return f"{value / scale:,.3g} {prefix}FLOP"
    return f"{value:,.3g} FLOP"


def size(value: float) -> str:
    """Bytes in binary units (KiB, MiB, ...)."""
    for prefix, scale in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value >= scale:
            return f"{value / scale:,.3g} {prefix}B"
    return f"{value:,.0f} B"


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``7.2 h`` or ``3.1 d``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} d"
