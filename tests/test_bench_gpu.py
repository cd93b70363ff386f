"""The GPU path without a GPU: tests/gpu/bench_gpu.py's dry run (its table's layout, after one real step of
the tiny preset on the CPU) where Ray, DeepSpeed, pydantic and PyAV cannot be imported, as on a lent GPU
machine with aavs installed ``--no-deps``; and the recipe's switches for the GPU: ``compute.compile`` and
the fused AdamW, chosen on CUDA only."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from aavs.orchestrator.recipe.accelerator import adamw_kwargs, make_accelerator, release
from aavs.orchestrator.recipe.config import ComputeConfig

BENCH = Path(__file__).parent / "gpu" / "bench_gpu.py"
ABSENT = ("ray", "deepspeed", "pydantic", "av")  # not on the lent GPU machine
# The bench run as ``python tests/gpu/bench_gpu.py``, with those modules unimportable.
POISONED = (
    "import sys, runpy; [sys.modules.__setitem__(m, None) for m in {absent!r}]; "
    "sys.argv[0] = {bench!r}; runpy.run_path({bench!r}, run_name='__main__')"
)


@pytest.mark.subprocess  # one training step of the tiny preset, in a child process
def test_bench_gpu_dry_run_prints_the_table_without_ray_deepspeed_pydantic_av() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    code = POISONED.format(absent=ABSENT, bench=str(BENCH))
    # --deepspeed: its row says skipped instead of importing what is absent
    done = subprocess.run(
        [sys.executable, "-c", code, "--deepspeed"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "dry run (no CUDA)" in out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == [
        "configuration",
        "videos",
        "frames/step",
        "steps",
        "frames/s",
        "peak GPU memory",
        "MFU",
        "peak FLOP/s",
    ]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("fp32", "1", "5"),
        ("fp32", "4", "20"),
        ("bf16", "1", "5"),
        ("bf16", "4", "20"),
        ("bf16 torch.compile", "1", "5"),
        ("bf16 loader-fed (uint8 from pinned memory)", "1", "5"),
        ("bf16 stage two (avss, prior)", "1", "5"),
        ("bf16 DeepSpeed ZeRO-2", "4", "20"),
    ]
    assert all(r[3:7] == ["-"] * 4 for r in rows)  # a dry run measures nothing
    assert [r[7] for r in rows] == ["67 TFLOP/s"] * 2 + ["790 TFLOP/s"] * 6
    # it names the peaks it divides by and where they come from
    assert re.search(r"bf16: 790 TFLOP/s \(the bf16 matrix-product rate measured", out)
    assert re.search(r"fp32: 67 TFLOP/s \(NVIDIA H100 SXM / H200 datasheet", out)
    # the tiny step really ran, in both precisions, and its FLOPs were counted
    assert re.search(r"loss fp32 \d+\.\d+ / bf16 \d+\.\d+ / loader-fed \d+\.\d+ / stage two \d+\.\d+", out)
    assert re.search(r"tiny preset on the CPU: \d+\.\d+ GFLOP", out)


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_gpu", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_peaks_by_gpu_name_or_flag() -> None:
    bench = _bench_module()
    args = bench.parse([])
    assert bench.peaks("NVIDIA H100 80GB HBM3", args)["bf16"][0] == 790e12
    assert bench.peaks("NVIDIA H200", args)["fp32"][0] == 67e12
    assert bench.peaks("NVIDIA A100-SXM4-80GB", args)["bf16"][0] == 312e12
    unknown = bench.peaks("NVIDIA L4", args)
    assert unknown["bf16"][0] is None and "--peak-tflops" in unknown["bf16"][1]
    given = bench.peaks("NVIDIA L4", bench.parse(["--peak-tflops", "121", "--peak-tflops-fp32", "30"]))
    assert given == {"bf16": (121e12, "--peak-tflops"), "fp32": (30e12, "--peak-tflops-fp32")}
    assert [row.name for row in bench.rows(bench.parse(["--no-compile", "--videos", "2"]))] == [
        "fp32",
        "bf16",
        "bf16 loader-fed (uint8 from pinned memory)",
        "bf16 stage two (avss, prior)",
    ]


@pytest.mark.parametrize("compile_", [False, True])
def test_make_accelerator_compiles_only_when_asked(compile_: bool) -> None:
    accelerator = make_accelerator(ComputeConfig(compile=compile_), grad_accum=1, grad_clip=None, micro_batch=1)
    try:
        assert accelerator.state.dynamo_plugin.backend.value.lower() == ("inductor" if compile_ else "no")
    finally:
        release(accelerator)


def test_adamw_is_fused_on_cuda_only() -> None:
    assert adamw_kwargs(torch.device("cpu")) == {}
    assert adamw_kwargs(torch.device("cuda")) == {"fused": True}
    assert adamw_kwargs(torch.device("cuda", 0)) == {"fused": True}
    # the flag is accepted where the parameters still are when the recipe builds it (before prepare)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], **adamw_kwargs(torch.device("cuda")))
    assert optimizer.param_groups[0]["fused"] is True
