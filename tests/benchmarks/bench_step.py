"""One swin-base training step, ours beside the reference recipe's, on the CPU (issue 26).

    .venv/bin/python tests/benchmarks/bench_step.py                 # phases A and B, 5 runs each, ~8 min
    .venv/bin/python tests/benchmarks/bench_step.py --phases B --runs 3 --out /tmp/step

The perf shape: the stage-one network on the swin-base preset (random weights, the ADE20k
architecture), one 384 x 384 frame, train mode (drop-path 0.3), forward + loss + backward + AdamW with
the phase's trainable set and learning rate, ``--threads`` torch threads (2).

- ``reference``: transformers' modules as they come, as the reference recipe trains them (the pixel
  decoder's deformable attention through transformers' PyTorch sampling);
- ``ours``: the network as aavs builds it (the fused C sampler, aavs.models.deformable_attention).

First one process checks that both variants compute the same step: the loss and every trainable
gradient, drop-path drawn alike, to the largest relative difference. Each run is a process of its own (one warm-up step, then the median of ``--steps`` steps); the two
variants alternate, ``--runs`` times per phase, and the table gives each one's median over its runs,
the runs' range and the ratio of the medians. Both variants run in this shell's environment: with the
kernel pins (``--pinned``, what `aavs run` does by default on a CPU, docs/reproducibility.md) or without
(the default here, as the reference runs). Then one profiled step of each (phase B) prints its top ops.

Writes OUT/step.json and OUT/step.txt (default OUT: tests/benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("reference", "ours")
LEARNING_RATES = {"A": 1e-3, "B": 1e-4}  # the recipe's (docs/method.md §4)


def _build(variant: str, phase: str, task: str, keep_model: bool = False):
    import torch

    from aavs.models import build_model, phase_parameter_groups, set_phase
    from aavs.models.deformable_attention import FusedMultiscaleDeformableAttention

    FusedMultiscaleDeformableAttention.fused = variant == "ours"
    torch.manual_seed(0)
    model = build_model(task, preset="swin-base")
    set_phase(model, phase)
    model.train()
    optimizer = torch.optim.AdamW(phase_parameter_groups(model, phase, lr=LEARNING_RATES[phase], weight_decay=0.05))
    frames, audio = torch.randn(1, 3, 384, 384), torch.randn(1, 128)
    labels = (torch.rand(1, 224, 224) > 0.7).long()

    def step(update: bool = True):
        output = model(frames, audio, labels=labels)
        output.loss.backward()
        if update:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return output.loss.detach()

    return (step, model) if keep_model else step


def check(phase: str, task: str, threads: int) -> None:
    """One step's loss and trainable gradients with each variant, the same seed (drop-path draws alike):
    the largest relative difference (``|ours - reference|`` max over ``|reference|`` max, per tensor)."""
    import torch

    torch.set_num_threads(threads)
    results = {}
    for variant in VARIANTS:
        step, model = _build(variant, phase, task, keep_model=True)  # weights and inputs from seed 0
        torch.manual_seed(1)
        loss = step(update=False)
        results[variant] = [loss] + [p.grad.clone() for p in model.parameters() if p.grad is not None]
    reference, ours = results["reference"], results["ours"]
    worst = max(((o - r).abs().max() / r.abs().max()).item() for o, r in zip(ours, reference) if r.abs().max() > 0)
    print(json.dumps({"max_relative_difference": worst, "tensors": len(reference)}))


def child(variant: str, phase: str, task: str, threads: int, steps: int, profile: bool) -> None:
    import torch

    torch.set_num_threads(threads)
    step = _build(variant, phase, task)
    step()  # warm-up: first-touch allocations, the C sampler's load
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU]) as prof:
            step()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in rows)
        top = [
            {
                "op": e.key,
                "self_ms": e.self_cpu_time_total / 1e3,
                "share": e.self_cpu_time_total / total,
                "calls": e.count,
            }
            for e in rows[:12]
        ]
        print(json.dumps({"profile": top, "total_ms": total / 1e3}))
        return
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"step_s": statistics.median(times), "steps": times}))


def _spawn(args: argparse.Namespace, variant: str, phase: str, profile: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--phases", phase, "--task", args.task]
    command += ["--threads", str(args.threads), "--steps", str(args.steps)] + (["--profile"] if profile else [])
    env = dict(os.environ)
    if args.pinned:
        from aavs.orchestrator.recipe.kernels import pin_kernels

        env.pop("AAVS_FAST_KERNELS", None)
        pin_kernels(env)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{variant} phase {phase} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="AB", help="A, B or AB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task", default="s4", help="the network: s4 (stage one's binary network) or avss")
    parser.add_argument("--pinned", action="store_true", help="both variants with aavs's kernel pins")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", choices=(*VARIANTS, "check"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "check":
        check(args.phases, args.task, args.threads)
        return
    if args.child:
        child(args.child, args.phases, args.task, args.threads, args.steps, args.profile)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(record=True)
    checked = _spawn(args, "check", args.phases[-1])["max_relative_difference"]
    console.print(
        f"phase {args.phases[-1]}, loss and every trainable gradient: ours against the reference to {checked:.1e}"
    )
    runs: dict[str, dict[str, list[float]]] = {}
    for phase in args.phases:
        runs[phase] = {variant: [] for variant in VARIANTS}
        for run in range(args.runs):
            order = VARIANTS if run % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                seconds = _spawn(args, variant, phase)["step_s"]
                runs[phase][variant].append(seconds)
                console.print(f"phase {phase} run {run + 1}/{args.runs} {variant}: {seconds:.3f} s")
    kernels = "pinned (aavs run's CPU default)" if args.pinned else "unpinned (AAVS_FAST_KERNELS=1)"
    table = Table(title=f"one training step, swin-base {args.task}, 1 frame at 384, {args.threads} threads, {kernels}")
    for column in ("phase", "reference s", "ours s", "ours / reference", "reference runs", "ours runs"):
        table.add_column(column, justify="right")
    summary = {}
    for phase, by_variant in runs.items():
        reference, ours = (statistics.median(by_variant[v]) for v in VARIANTS)
        summary[phase] = {"reference_s": reference, "ours_s": ours, "ratio": ours / reference, "runs": by_variant}
        table.add_row(
            phase,
            f"{reference:.3f}",
            f"{ours:.3f}",
            f"{ours / reference:.2f}",
            f"{min(by_variant['reference']):.2f}-{max(by_variant['reference']):.2f}",
            f"{min(by_variant['ours']):.2f}-{max(by_variant['ours']):.2f}",
        )
    console.print(table)
    profiles = {variant: _spawn(args, variant, args.phases[-1], profile=True) for variant in VARIANTS}
    for variant, found in profiles.items():
        top = Table(title=f"{variant}, phase {args.phases[-1]}: top ops by self CPU time ({found['total_ms']:.0f} ms)")
        for column in ("op", "self ms", "share", "calls"):
            top.add_column(column, justify="right" if column != "op" else "left")
        for row in found["profile"]:
            top.add_row(row["op"][:60], f"{row['self_ms']:.1f}", f"{100 * row['share']:.1f} %", str(row["calls"]))
        console.print(top)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "shape": {"task": args.task, "frames": 1, "size": 384, "threads": args.threads, "steps_per_run": args.steps},
        "kernels": kernels,
        "machine": {"cpus": os.cpu_count(), "processor": _processor()},
        "max_relative_difference": checked,
        "phases": summary,
        "profiles": profiles,
    }
    (args.out / "step.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "step.txt").write_text(console.export_text())


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    main()
