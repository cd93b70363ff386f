"""GPU throughput of the AAVS training step in one table: fp32 and bf16 at 1 and 4 videos, and compiled.

    python tests/gpu/bench_gpu.py               # one CUDA GPU: about 5 minutes (tests/gpu/README.md)
    python tests/gpu/bench_gpu.py --dry-run     # anywhere, in seconds: the table's layout

The network is the stage-one ``avss-binary`` AAVS on the ``swin-base`` preset (random weights, the
ADE20k checkpoint's architecture) in phase B, every trainable part training, as the recipe's phase B
does: AdamW at the phase-B rate (fused on CUDA), the gradient norm clipped at the stage's 0.01, and the
loss read back once a step. Inputs are random tensors of the real shapes (``--frames-per-video`` frames
of 384 x 384 per video, a VGGish embedding per frame, a square sounding object in the 224 x 224
labels), so the numbers measure the step, not the disk.

Rows: fp32 and bf16 at 1 and 4 videos a step, then bf16 at 1 video through ``torch.compile``; then the
rows of the real run's path (issue 22): bf16 at 1 video with the inputs as the training loop gets them
from its loader (compact: uint8 frames and labels in pinned host memory, copied without blocking and
normalised on the GPU each step), and stage two's network (``avss``: 71 classes, the prior as an input)
at 1 video. bf16 is
``torch.autocast`` over the model's forward, which computes the loss, as accelerate's
``mixed_precision: bf16`` wraps it in the recipe; the backward runs outside it, the weights stay fp32.
fp32 is PyTorch's default (its matrix products without TF32). Each row runs ``--warmup`` steps, then
steps for about ``--seconds``, between ``torch.cuda.synchronize`` calls; a row that runs out of GPU
memory says so and the next one runs.

Columns: frames/s, the peak GPU memory PyTorch allocated (``torch.cuda.max_memory_allocated``: weights,
optimizer state, activations), and the model FLOP utilisation: frames/s x FLOPs per frame / the peak
FLOP/s of the row's precision. FLOPs per frame are counted once with
``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, a multiply-add counting
2) on one training step of the same network, a video of one frame: forward, loss, backward. Peaks, by
``torch.cuda.get_device_name()``, as ``aavs estimate`` prices a run (aavs.orchestrator.estimate.devices):
H100 and H200 790 TFLOP/s in bf16 (the matrix-product rate measured on the GPUs we are lent; the
datasheet says 989 dense) and 67 TFLOP/s in fp32 (datasheet, without tensor cores); A100 312 / 19.5
(datasheet); ``--peak-tflops`` / ``--peak-tflops-fp32`` for another GPU or another figure.

It imports nothing of aavs but ``aavs.models``, and no Ray, DeepSpeed, pydantic or PyAV: it runs where
aavs is installed with ``pip install --no-deps``. ``--deepspeed`` adds a row of the recipe's DeepSpeed
ZeRO-2 path (bf16, 4 videos), which needs the rest; it says "skipped" where DeepSpeed or pydantic is
missing.

Without CUDA, or with ``--dry-run``, it prints the table's layout, every value "-", naming the peaks
it would divide by on an H100 / H200, after one real training step of the ``tiny`` preset on the CPU
(in fp32 and in bf16 autocast, its FLOPs counted as above), so that the code path cannot rot
(tests/test_bench_gpu.py runs it).
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import aavs.models as models  # loads its names on first use: importing this script stays quick

TASK = "avss-binary"  # stage one's network
STAGE_TWO_TASK = "avss"  # stage two's: the data's 71 classes, stage one's masks as its prior
PHASE = "B"  # every trainable part: the Swin adapters too, so the backward runs through the backbone
LR = 1e-4  # phase B's rate: lr 1e-3 / 10
WEIGHT_DECAY = 0.05
GRAD_CLIP = 0.01  # stage one's (aavs.datasets.tasks)
LABEL_SIZE = 224  # the masks' size (AVSBench's, aavs.datasets.transforms.MASK_SIZE)
DRY_PRESET = "tiny"
GPU_IMAGE_SIZE = 384  # the swin-base preset's input, which a dry run's header describes

_MEASURED_BF16 = "the bf16 matrix-product rate measured on the H100 / H200 we are lent; the datasheet says 989 dense"
_FP32_SHEET = "NVIDIA H100 SXM / H200 datasheet, FP32 without tensor cores: PyTorch leaves TF32 off for matmuls"
# A fragment of torch.cuda.get_device_name() -> precision -> (peak FLOP/s, where it comes from); the
# same figures as aavs.orchestrator.estimate.devices.PEAKS, which this script may not import.
PEAKS: dict[str, dict[str, tuple[float, str]]] = {
    "H100": {"bf16": (790e12, _MEASURED_BF16), "fp32": (67e12, _FP32_SHEET)},
    "H200": {"bf16": (790e12, _MEASURED_BF16), "fp32": (67e12, _FP32_SHEET)},
    "A100": {
        "bf16": (312e12, "NVIDIA A100 datasheet, dense BF16 tensor cores"),
        "fp32": (19.5e12, "NVIDIA A100 datasheet, FP32 without tensor cores"),
    },
}
DRY_GPU = "H100"  # the peaks a dry run names: those of the machines this is run on

COLUMNS = ("configuration", "videos", "frames/step", "steps", "frames/s", "peak GPU memory", "MFU", "peak FLOP/s")


@dataclass(frozen=True)
class Row:
    precision: str  # "fp32" or "bf16"
    videos: int
    compiled: bool = False
    deepspeed: bool = False
    loader_fed: bool = False  # compact inputs from pinned host memory, converted on the device each step
    stage_two: bool = False  # the avss network (71 classes, a prior) instead of stage one's

    @property
    def name(self) -> str:
        if self.deepspeed:
            return f"{self.precision} DeepSpeed ZeRO-2"
        if self.loader_fed:
            return f"{self.precision} loader-fed (uint8 from pinned memory)"
        if self.stage_two:
            return f"{self.precision} stage two ({STAGE_TWO_TASK}, prior)"
        return self.precision + (" torch.compile" if self.compiled else "")


@dataclass
class Result:
    steps: int | None = None
    frames_per_s: float | None = None
    peak_bytes: int | None = None
    graph_breaks: int | None = None  # a compiled row's, as dynamo counted them
    note: str | None = None  # "out of memory", "skipped: ...": printed in place of the values


def rows(args: argparse.Namespace) -> list[Row]:
    table = [Row(precision, videos) for precision in ("fp32", "bf16") for videos in args.videos]
    if not args.no_compile:
        table.append(Row("bf16", 1, compiled=True))
    table += [Row("bf16", 1, loader_fed=True), Row("bf16", 1, stage_two=True)]
    if args.deepspeed:
        table.append(Row("bf16", max(args.videos), deepspeed=True))
    return table


def adamw_kwargs(device: torch.device) -> dict[str, Any]:
    """The recipe's choice (aavs.orchestrator.recipe.accelerator.adamw_kwargs): fused on CUDA."""
    return {"fused": True} if device.type == "cuda" else {}


# ------------------------------------------------------------------------------------- peaks
def peaks(gpu_name: str, args: argparse.Namespace) -> dict[str, tuple[float | None, str]]:
    """The peak FLOP/s each precision's MFU divides by, and where the figure comes from."""
    known = next((table for key, table in PEAKS.items() if key in gpu_name.upper()), None)
    chosen: dict[str, tuple[float | None, str]] = {}
    for precision, flag, given in (
        ("bf16", "--peak-tflops", args.peak_tflops),
        ("fp32", "--peak-tflops-fp32", args.peak_tflops_fp32),
    ):
        if given is not None:
            chosen[precision] = (given * 1e12, flag)
        elif known is not None:
            chosen[precision] = known[precision]
        else:
            chosen[precision] = (None, f"unknown for {gpu_name!r}: pass {flag}")
    return chosen


def tflops(flops: float | None) -> str:
    return "-" if flops is None else f"{flops / 1e12:g} TFLOP/s"


# ------------------------------------------------------------------------------------ a step
def network(preset: str, device: torch.device, task: str = TASK) -> Any:
    model = models.build_model(task, preset=preset)
    models.set_phase(model, PHASE)
    return model.to(device).train()


def inputs(model: Any, videos: int, frames: int, device: torch.device, dtype: torch.dtype = torch.float32) -> dict:
    """A batch of ``videos`` videos of ``frames`` frames: random pixels and audio, a square of class 1
    (sounding) on background as every frame's labels."""
    n, size = videos * frames, int(model.config.image_size)
    g = torch.Generator(device=device).manual_seed(0)
    labels = torch.zeros(n, LABEL_SIZE, LABEL_SIZE, dtype=torch.long, device=device)
    labels[:, LABEL_SIZE // 4 : LABEL_SIZE // 2, LABEL_SIZE // 4 : LABEL_SIZE // 2] = 1
    return {
        "pixel_values": torch.randn(n, 3, size, size, device=device, generator=g).to(dtype),
        "audio": torch.randn(n, int(model.config.audio_dim), device=device, generator=g).to(dtype),
        "labels": labels,
        "loss_frames": torch.ones(n, dtype=torch.bool, device=device),
        "video_frames": [frames] * videos,
    }


def loader_fed(batch: dict, device: torch.device) -> Callable[[], dict]:
    """``batch`` as a compact loader delivers it (uint8 ``[N, S, S, 3]`` frames and uint8 labels, pinned
    where CUDA is), and a function that makes the model's inputs of it on ``device`` each call as the
    recipe's model_inputs and loss_targets do: a non-blocking copy, then the conversion there."""
    from aavs.datasets.transforms import normalize_resized

    g = torch.Generator().manual_seed(0)
    n, size = batch["pixel_values"].shape[0], batch["pixel_values"].shape[-1]
    pin = device.type == "cuda"
    frames = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    labels = batch["labels"].to("cpu", torch.uint8)
    frames, labels = (frames.pin_memory(), labels.pin_memory()) if pin else (frames, labels)
    rest = {k: v for k, v in batch.items() if k not in ("pixel_values", "labels")}

    def fed() -> dict:
        return {
            **rest,
            "pixel_values": normalize_resized(frames.to(device, non_blocking=True)),
            "labels": labels.to(device, non_blocking=True).long(),
        }

    return fed


def with_prior(batch: dict) -> dict:
    """Stage two's inputs: the frame's true sounding mask as its prior."""
    return {**batch, "prior": (batch["labels"] != 0).to(batch["pixel_values"].dtype)}


def optimizer_for(model: Any, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as the recipe's ``_enter_phase`` makes it."""
    groups = models.phase_parameter_groups(model, PHASE, lr=LR, weight_decay=WEIGHT_DECAY)
    return torch.optim.AdamW(
        groups, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY, **adamw_kwargs(device)
    )


def make_step(
    model: Any,
    forward: Callable[..., Any],
    optimizer: torch.optim.Optimizer,
    batch: dict | Callable[[], dict],
    precision: str,
) -> Callable[[], float]:
    """One training step as the recipe's loop runs it on one device: forward and loss (under bf16
    autocast for a bf16 row), backward, the clipped gradient norm, AdamW, the loss read back. ``batch``
    may be a function that makes the inputs each step (:func:`loader_fed`)."""
    fed = batch if callable(batch) else None
    device_type = next(model.parameters()).device.type
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step() -> float:
        inputs_ = fed() if fed is not None else batch
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = forward(**inputs_).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().float().item()  # the step's one host sync, as in the recipe

    return step


def flops_per_frame(model: Any, device: torch.device) -> float:
    """FlopCounterMode's count of one training step (forward, loss, backward) on a video of one frame."""
    batch = inputs(model, 1, 1, device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def timed(step: Callable[[], float], warmup: int, seconds: float) -> tuple[int, float]:
    """``warmup`` steps, then steps for about ``seconds``: the timed steps and their seconds."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while steps == 0 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    torch.cuda.synchronize()
    return steps, time.perf_counter() - start


# ---------------------------------------------------------------------------------- the rows
def row_batch(model: Any, row: Row, frames_per_video: int, device: torch.device) -> dict | Callable[[], dict]:
    """A row's inputs: random tensors on the device, fed from host memory for a loader-fed row, with a
    prior for stage two."""
    batch = inputs(model, row.videos, frames_per_video, device)
    if row.stage_two:
        batch = with_prior(batch)
    return loader_fed(batch, device) if row.loader_fed else batch


def measure(model: Any, row: Row, args: argparse.Namespace, device: torch.device) -> Result:
    """One row on the shared network (a fresh optimizer, a fresh peak-memory count)."""
    frames = row.videos * args.frames_per_video
    try:
        torch.cuda.reset_peak_memory_stats()
        if row.stage_two:  # its own network, built here and freed after the row
            model = network(args.preset, device, STAGE_TWO_TASK)
        optimizer = optimizer_for(model, device)
        forward = torch.compile(model) if row.compiled else model
        batch = row_batch(model, row, args.frames_per_video, device)
        steps, elapsed = timed(make_step(model, forward, optimizer, batch, row.precision), args.warmup, args.seconds)
        result = Result(steps, steps * frames / elapsed, torch.cuda.max_memory_allocated())
        if row.compiled:
            result.graph_breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    except torch.OutOfMemoryError:
        result = Result(note="out of memory")
    optimizer = forward = batch = None
    model.zero_grad(set_to_none=True)
    if row.compiled:
        torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    return result


def measure_deepspeed(row: Row, args: argparse.Namespace) -> Result:
    """The recipe's DeepSpeed ZeRO-2 path through accelerate (a fresh network: DeepSpeed keeps it in bf16)."""
    try:
        import deepspeed  # noqa: F401
        import pydantic  # noqa: F401

        from aavs.orchestrator.recipe.accelerator import adamw_kwargs as recipe_adamw_kwargs
        from aavs.orchestrator.recipe.accelerator import make_accelerator, release
        from aavs.orchestrator.recipe.config import ComputeConfig
    except ImportError as err:
        return Result(note=f"skipped: needs {err.name or 'the recipe'}")
    frames = row.videos * args.frames_per_video
    accelerator = None
    try:
        torch.cuda.reset_peak_memory_stats()
        compute = ComputeConfig.model_validate(
            {"gpus_per_worker": 1, "strategy": "deepspeed", "mixed_precision": "bf16", "loader_workers": 0}
        )
        accelerator = make_accelerator(compute, grad_accum=1, grad_clip=GRAD_CLIP, micro_batch=row.videos)
        model = network(args.preset, torch.device("cpu"))
        groups = models.phase_parameter_groups(model, PHASE, lr=LR, weight_decay=WEIGHT_DECAY)
        optimizer = torch.optim.AdamW(
            groups, lr=LR, weight_decay=WEIGHT_DECAY, **recipe_adamw_kwargs(accelerator.device)
        )
        engine, optimizer = accelerator.prepare(model, optimizer)
        batch = inputs(model, row.videos, args.frames_per_video, accelerator.device, dtype=torch.bfloat16)

        def step() -> float:
            loss = engine(**batch).loss
            accelerator.backward(loss)  # DeepSpeed clips and steps inside
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach().float().item()

        steps, elapsed = timed(step, args.warmup, args.seconds)
        result = Result(steps, steps * frames / elapsed, torch.cuda.max_memory_allocated())
    except torch.OutOfMemoryError:
        result = Result(note="out of memory")
    if accelerator is not None:
        release(accelerator)
    gc.collect()
    torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------- the table
def table_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def row_cells(
    row: Row, frames_per_video: int, result: Result | None, peak: float | None, fpf: float | None
) -> list[str]:
    head = [row.name, str(row.videos), str(row.videos * frames_per_video)]
    if result is None:  # a dry run
        return [*head, "-", "-", "-", "-", tflops(peak)]
    if result.note is not None:
        return [*head, "-", result.note, "-", "-", tflops(peak)]
    assert result.frames_per_s is not None and result.peak_bytes is not None
    mfu = "-" if peak is None or fpf is None else f"{100 * result.frames_per_s * fpf / peak:.1f} %"
    return [
        *head,
        str(result.steps),
        f"{result.frames_per_s:.1f}",
        f"{result.peak_bytes / 2**30:.1f} GiB",
        mfu,
        tflops(peak),
    ]


def print_header(
    args: argparse.Namespace,
    image_size: int,
    device_line: str,
    fpf_line: str,
    chosen: dict[str, tuple[float | None, str]],
) -> None:
    size = f"{image_size} x {image_size}"
    print(
        f"# AAVS training step: {TASK} (stage one) on the {args.preset} preset, phase {PHASE}, "
        f"{args.frames_per_video} frames per video at {size}; AdamW (fused on CUDA), grad clip {GRAD_CLIP}"
    )
    print(f"# {device_line}")
    print(f"# FLOPs per frame: {fpf_line}")
    print("# MFU = frames/s x FLOPs per frame / peak FLOP/s of the row's precision:")
    for precision, (flops, source) in chosen.items():
        print(f"#   {precision}: {tflops(flops)} ({source})")
    print("# bf16: torch.autocast over forward and loss, backward outside; fp32: PyTorch's default (no TF32 matmuls)")
    print(table_line(COLUMNS))
    print(table_line(["---"] * len(COLUMNS)), flush=True)


def dry_run(args: argparse.Namespace, reason: str) -> None:
    """The table's layout, after one real step of the tiny preset on the CPU in each precision."""
    started = time.perf_counter()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = network(DRY_PRESET, cpu)
    fpf = flops_per_frame(model, cpu)
    losses = []
    for precision in ("fp32", "bf16"):
        batch = inputs(model, 2, 1, cpu)  # two videos of a frame: the per-video loss of a batch
        losses.append(make_step(model, model, optimizer_for(model, cpu), batch, precision)())
    # the real run's rows too: loader-fed inputs, and stage two's network with its prior
    fed = row_batch(model, Row("bf16", 2, loader_fed=True), 1, cpu)
    losses.append(make_step(model, model, optimizer_for(model, cpu), fed, "bf16")())
    two = network(DRY_PRESET, cpu, STAGE_TWO_TASK)
    batch = row_batch(two, Row("bf16", 2, stage_two=True), 1, cpu)
    losses.append(make_step(two, two, optimizer_for(two, cpu), batch, "bf16")())
    chosen = peaks(DRY_GPU, args)
    device_line = (
        f"dry run ({reason}): the layout only, with the peaks of an {DRY_GPU} / H200; one training step of "
        f"the {DRY_PRESET} preset ran on the CPU, 2 videos of 1 frame, loss fp32 {losses[0]:.4f} / bf16 "
        f"{losses[1]:.4f} / loader-fed {losses[2]:.4f} / stage two {losses[3]:.4f}, in {time.perf_counter() - started:.1f} s; torch {torch.__version__}"
    )
    print_header(
        args, GPU_IMAGE_SIZE, device_line, f"- ({DRY_PRESET} preset on the CPU: {fpf / 1e9:.3f} GFLOP)", chosen
    )
    for row in rows(args):
        print(table_line(row_cells(row, args.frames_per_video, None, chosen[row.precision][0], None)))


def gpu_run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    chosen = peaks(name, args)
    torch.manual_seed(0)
    model = network(args.preset, device)
    fpf = flops_per_frame(model, device)
    import transformers

    device_line = f"{name}, torch {torch.__version__}, transformers {transformers.__version__}"
    print_header(
        args,
        int(model.config.image_size),
        device_line,
        f"{fpf / 1e9:.1f} GFLOP (FlopCounterMode, forward + loss + backward)",
        chosen,
    )
    # The compiled row's graph breaks (scipy's matcher, the loss's reads on the host) would interleave
    # their warnings with the table; their count follows it.
    torch._logging.set_logs(dynamo=logging.ERROR)
    warnings.filterwarnings("ignore", module=r"torch\._dynamo")
    notes = []
    for row in rows(args):
        if row.deepspeed:
            model = None  # the shared network's memory, for DeepSpeed's own
            gc.collect()
            torch.cuda.empty_cache()
            result = measure_deepspeed(row, args)
        else:
            result = measure(model, row, args, device)
        print(table_line(row_cells(row, args.frames_per_video, result, chosen[row.precision][0], fpf)), flush=True)
        if result.graph_breaks is not None:
            notes.append(f"# {row.name}: {result.graph_breaks} graph breaks (TORCH_LOGS=graph_breaks lists them)")
    for note in notes:
        print(note)
    print(f"# {time.perf_counter() - started:.0f} s in all, {args.seconds:g} s a row after {args.warmup} warm-up steps")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per row, after the warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row (the compiled row compiles)")
    parser.add_argument("--frames-per-video", type=int, default=5)
    parser.add_argument("--videos", type=int, nargs="+", default=[1, 4], help="videos per step, fp32 and bf16 rows")
    parser.add_argument("--preset", default="swin-base", help="the network's preset on the GPU (dry runs: tiny)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile row")
    parser.add_argument("--deepspeed", action="store_true", help="add the recipe's DeepSpeed ZeRO-2 row (needs it)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak TFLOP/s, instead of the GPU's")
    parser.add_argument("--peak-tflops-fp32", type=float, default=None, help="fp32 peak TFLOP/s, likewise")
    parser.add_argument("--dry-run", action="store_true", help="the table's layout after a tiny CPU step")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.dry_run or not torch.cuda.is_available():
        dry_run(args, "--dry-run" if args.dry_run else "no CUDA")
    else:
        gpu_run(args)


if __name__ == "__main__":
    main()
