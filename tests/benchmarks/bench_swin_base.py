"""experiments/avss.yaml on swin-base stand-ins, through both stages and `aavs predict` (issue 22):
seconds per training frame and peak RSS per stage, on the CPU.

    .venv/bin/python tests/benchmarks/bench_swin_base.py --work /tmp/swin-base      # ~20 min, ~18 GiB, 1.5 GB disk
    .venv/bin/python tests/benchmarks/bench_swin_base.py --work /tmp/x --reduced --out /tmp/x  # the plumbing, ~2 min

Steps (tests/README.md, "The swin-base path"):

1. stand-ins (tests/fixtures/make_standins.py) in WORK/weights: the Hugging Face folder of
   facebook/mask2former-swin-base-ade-semantic (150 ADE20k classes, random weights) and a VGGish state
   dict in the converted layout; reused when present;
2. data: `aavs data synth WORK/data --shape avsbench --scale 1e-5`: every subset and split rounds to
   one video (9 videos: 20 frames a split), AVSBench-semantic's 71 classes and frame sizes; then
   `aavs features` into WORK/cache (the probes read it: no probe's peak holds VGGish);
3. step probes, before anything large: a phase-B training step (forward, loss, backward, AdamW: what
   a training step does) on the first 1 and then 2 frames of the v2 training video, for each stage's
   network, each in a process of its own (its peak RSS from wait4). There is no per-step frame cap:
   a v2 video trains as one 10-frame step, so its peak is projected as ``p1 + 9 max(0, p2 - p1)``, and the
   run stops here, naming the projection, unless it fits in the memory available now (``--force``
   runs anyway);
4. `aavs run experiments/avss.yaml --local` with `--set`: the data root, the stand-ins, the CPU
   (gpus_per_worker 0, one process: loader_workers 0, torch threads = cores), ``--epochs`` per stage
   (default 2, stage two at adapter_warmup 0.5 like stage one: each stage's epoch 0 is phase A and
   epoch 1 phase B, reloading phase A's best; with 1 only phase B runs). Its RSS (process tree) is
   sampled every 0.25 s and attributed to the stage its output says runs (``stage NAME: N trials``);
   the whole run's peak is exact (wait4). Seconds per training frame: each epoch's
   ``train/frames_per_s`` from the trial's metrics.jsonl. Each stage's window includes its test
   evaluation, stage one's mask export and the report;
5. `aavs predict` on a clip (the v2 test video's 10 seconds as an mp4) with the experiment's best
   checkpoints, in a process of its own: wall time and peak RSS.

Writes OUT/swin-base.json and OUT/swin-base.txt (the rich table), ``-reduced`` in the names with
``--reduced`` (the suite's reduced stand-in at 128 px: a dry run of this script, not the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
import make_standins  # noqa: E402

EXPERIMENT = REPO / "experiments" / "avss.yaml"
RESULTS = REPO / "tests" / "benchmarks" / "results"
NAME = "avss-stepping-stones"  # the experiment file's name: its results folder
STAGES = (("localize", "avss-binary"), ("semantic", "avss"))
SCALE = 1e-5  # AVSBench's smallest count times this rounds to 0: one video per subset and split
GIB = 2**30
STAGE_LINE = re.compile(r"\bstage (\S+): \d+ trials? \(")
# The suite's reduced run (tests/test_swin_base_path.py): frames at 128 px, loss points of 32 x 32 logits.
REDUCED_OVERRIDES = {"model.overrides.image_size": 128, "model.overrides.train_num_points": 1024}


# ------------------------------------------------------------------------------------ step probe
def probe_step(task: str, frames: int, pretrained: str, data: str, vggish: str, overrides: dict[str, Any]) -> dict:
    """One phase-B training step of ``task``'s network on the first ``frames`` frames of the v2
    training video, as the training loop runs it; runs in the probe's own process."""
    import torch

    from aavs.datasets.avsbench import FRAME_KEYS, AVSBenchDataset, collate_videos
    from aavs.datasets.layout import class_names
    from aavs.datasets.tasks import get_task
    from aavs.models import build_model
    from aavs.orchestrator.recipe.evaluation import loss_targets, model_inputs, training_frames

    semantic = get_task(task).semantic
    model = build_model(task, pretrained=pretrained, classes=class_names(data) if semantic else None, **overrides)
    dataset = AVSBenchDataset(
        data,
        task,
        "train",
        image_size=model.config.image_size,
        prior="ground-truth" if semantic else None,
        vggish=vggish,
        training=True,
        compact=True,
    )
    index = next(i for i, r in enumerate(dataset.records) if r.subset == "v2")
    batch = collate_videos([dataset[index]])
    batch.update({k: batch[k][:frames] for k in FRAME_KEYS if k in batch}, frames_per_video=[frames])
    batch, loss_frames = training_frames(batch, task)
    model.set_phase("B")
    model.train()
    optimizer = torch.optim.AdamW(model.phase_parameter_groups("B", lr=1e-4, weight_decay=0.05))
    start = time.perf_counter()
    loss = model(**model_inputs(batch, "cpu", torch.float32), **loss_targets(batch, loss_frames, "cpu")).loss
    loss.backward()
    optimizer.step()
    return {"task": task, "frames": frames, "step_s": round(time.perf_counter() - start, 2), "loss": float(loss)}


def run_measured(args: list[str], env: dict[str, str], log: Path) -> tuple[int, float, int]:
    """Run ``args`` with its output (both streams) into ``log``: (exit status, wall seconds, peak RSS
    in bytes: wait4's ru_maxrss, the largest process of its tree)."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss * 1024


class RssSampler:
    """The RSS of a process and its descendants every ``interval`` s, the maximum kept per phase."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.phase = interval, "prepare"
        self.peaks: dict[str, int] = {}
        self.windows: dict[str, list[float]] = {}
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, pid: int) -> None:
        self._pid = pid
        self.enter("prepare")
        self._thread.start()

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        if self.phase in self.windows:
            self.windows[self.phase][1] = now
        self.phase = phase
        self.windows[phase] = [now, now]

    def stop(self) -> None:
        self.enter("end")
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        root = psutil.Process(self._pid)
        while not self._stop.wait(self.interval):
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:  # the process (or a child) ended between the listing and the read
                continue
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)


def run_experiment(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """``aavs run`` in a child, its RSS sampled per stage; exit status, wall time and peaks."""
    sampler = RssSampler()
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        sampler.start(child.pid)
        assert child.stdout is not None
        for line in child.stdout:
            out.write(line)
            out.flush()
            match = STAGE_LINE.search(line)
            if match:
                sampler.enter(match[1])
        _, status, usage = os.wait4(child.pid, 0)
    sampler.stop()
    return {
        "exit": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2),
        "phases": {
            phase: {
                "wall_s": round(end - begin, 1),
                "peak_rss_gib_sampled": round(sampler.peaks.get(phase, 0) / GIB, 2),
            }
            for phase, (begin, end) in sampler.windows.items()
            if phase != "end"
        },
    }


def stage_epochs(results: Path, stage: str) -> list[dict[str, Any]]:
    rows = [
        json.loads(line) for line in (results / stage / "trials" / "t000" / "metrics.jsonl").read_text().splitlines()
    ]
    return [
        {
            "epoch": r["epoch"],
            "phase": r["phase"],
            "train_frames_per_s": round(r["train/frames_per_s"], 4),
            "s_per_training_frame": round(1 / r["train/frames_per_s"], 2),
            "val_miou": round(r["val/miou"], 4),
        }
        for r in rows
    ]


def write_clip(data: Path, out: Path) -> Path:
    """The v2 test video (10 s) as an mp4 with its sound: one frame a second, shown for 5 frames."""
    import soundfile
    from PIL import Image

    from aavs.datasets.layout import select_videos
    from aavs.datasets.video import write_video

    record = next(r for r in select_videos(data, "avss", "test") if r.subset == "v2")
    frames = [np.asarray(Image.open(record.frame_path(data, i)).convert("RGB")) for i in range(record.num_frames)]
    samples, rate = soundfile.read(record.audio_path(data), dtype="int16", always_2d=True)
    audio = (samples.mean(axis=1).astype(np.int16), rate)
    write_video(out, (f for f in frames for _ in range(5)), 5, options={"preset": "ultrafast"}, audio=audio)
    return out


def mem_available() -> int:
    return psutil.virtual_memory().available


def table(report: dict[str, Any]) -> Table:
    out = Table(title=f"aavs run experiments/avss.yaml on swin-base stand-ins ({report['variant']}), CPU")
    for column in ("step", "phase / frames", "wall s", "s / training frame", "peak RSS GiB"):
        out.add_column(column, justify="right")
    for probe in report["step_probes"]:
        out.add_row(
            f"probe {probe['task']}",
            f"B, {probe['frames']} frame(s)",
            str(probe["step_s"]),
            "",
            str(probe["peak_rss_gib"]),
        )
    for task, gib in report["projected_10_frame_step_gib"].items():
        out.add_row(f"projected {task}", "B, 10 frames", "", "", f"{gib} (available {report['mem_available_gib']})")
    run = report.get("run")
    if run:
        out.add_row(
            "prepare (embeddings)",
            "",
            str(run["phases"].get("prepare", {}).get("wall_s", "")),
            "",
            str(run["phases"].get("prepare", {}).get("peak_rss_gib_sampled", "")),
        )
        for stage, _ in STAGES:
            phase = run["phases"].get(stage, {})
            epochs = run["stages"].get(stage, [])
            per_frame = ", ".join(f"{e['phase']}: {e['s_per_training_frame']}" for e in epochs)
            out.add_row(
                f"stage {stage}",
                f"{len(epochs)} epoch(s)",
                str(phase.get("wall_s", "")),
                per_frame,
                f"{phase.get('peak_rss_gib_sampled', '')} (sampled)",
            )
        out.add_row("aavs run (whole)", "", str(run["wall_s"]), "", f"{run['peak_rss_gib']} (exact)")
    predict = report.get("predict")
    if predict:
        out.add_row(
            "aavs predict", f"{predict['seconds']} s clip", str(predict["wall_s"]), "", str(predict["peak_rss_gib"])
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="stand-ins, data, results, logs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and the table go")
    parser.add_argument("--epochs", type=int, default=2, help="per stage (2: phase A then B in each)")
    parser.add_argument("--reduced", action="store_true", help="the suite's reduced stand-in at 128 px (a dry run)")
    parser.add_argument("--force", action="store_true", help="run even if a projected 10-frame step does not fit")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    variant = "reduced" if args.reduced else "full"
    architecture = make_standins.REDUCED if args.reduced else {}
    overrides = REDUCED_OVERRIDES if args.reduced else {}
    env = {**os.environ, "AAVS_CACHE_DIR": str(work / "cache")}
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "variant": variant,
        "machine": {"cores": cores, "mem_total_gib": round(psutil.virtual_memory().total / GIB, 1)},
        "epochs_per_stage": args.epochs,
    }

    weights = work / f"weights-{variant}"
    base, vggish = weights / make_standins.MASK2FORMER_DIR, weights / make_standins.VGGISH_FILE
    if not (base / "model.safetensors").is_file() or not vggish.is_file():
        console.print(f"writing the {variant} stand-ins into {weights}")
        make_standins.write_standins(weights, **architecture)
    data = work / "data"
    if not (data / "metadata.csv").is_file():
        code = subprocess.run(
            [
                sys.executable,
                "-m",
                "aavs.orchestrator.cli",
                "data",
                "synth",
                str(data),
                "--shape",
                "avsbench",
                "--scale",
                str(SCALE),
            ],
            env=env,
        ).returncode
        if code != 0:
            raise SystemExit(f"aavs data synth failed ({code})")

    # The embeddings into the probes' cache first, so that no probe's peak holds VGGish.
    features = [sys.executable, "-m", "aavs.orchestrator.cli", "features", str(data), "--vggish", str(vggish)]
    if subprocess.run(features, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        raise SystemExit("aavs features failed")

    # 3. step probes: one frame, then two, in processes of their own
    model_overrides = {k.removeprefix("model.overrides."): v for k, v in overrides.items()}
    probes = []
    for _, task in STAGES:
        for frames in (1, 2):
            log = work / f"probe-{task}-{frames}.log"
            call = [
                sys.executable,
                __file__,
                "--probe",
                json.dumps([task, frames, str(base), str(data), str(vggish), model_overrides]),
            ]
            code, wall, peak = run_measured(call, env, log)
            if code != 0:
                raise SystemExit(f"step probe {task} x{frames} failed; see {log}")
            result = json.loads([line for line in log.read_text().splitlines() if line.startswith("{")][-1])
            probes.append({**result, "wall_s": round(wall, 1), "peak_rss_gib": round(peak / GIB, 2)})
            console.print(f"probe {task} x{frames}: step {result['step_s']} s, peak RSS {peak / GIB:.2f} GiB")
    report["step_probes"] = probes
    report["mem_available_gib"] = round(mem_available() / GIB, 2)
    report["projected_10_frame_step_gib"] = {
        task: round(one + 9 * max(0.0, two - one), 2)
        for _, task in STAGES
        for one, two in [[p["peak_rss_gib"] for p in probes if p["task"] == task]]
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = "swin-base" if variant == "full" else "swin-base-reduced"
    tight = {t: g for t, g in report["projected_10_frame_step_gib"].items() if g > report["mem_available_gib"]}
    if tight and not args.force:
        (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        raise SystemExit(
            f"a 10-frame step is projected at {tight} GiB, more than the {report['mem_available_gib']} GiB available; --force runs anyway"
        )

    # 4. the experiment
    sets = {
        "data.root": data,
        "model.pretrained": base,
        "model.vggish": vggish,
        "compute.gpus_per_worker": 0,
        "compute.cpus_per_worker": cores,
        "compute.loader_workers": 0,
        **{f"stages.{stage}.epochs": args.epochs for stage, _ in STAGES},
        "stages.semantic.params.adapter_warmup": 0.5,
        **overrides,
    }
    results = work / "results"
    cmd = [sys.executable, "-m", "aavs.orchestrator.cli", "run", str(EXPERIMENT), "--local", "--results", str(results)]
    cmd += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    report["command"] = " ".join(["aavs", *cmd[3:]])
    console.print(f"running: {report['command']}")
    run = run_experiment(cmd, env, work / "run.log")
    if run["exit"] != 0:
        (out / f"{stem}.json").write_text(json.dumps({**report, "run": run}, indent=2) + "\n")
        raise SystemExit(f"aavs run failed ({run['exit']}); see {work / 'run.log'}")
    run["stages"] = {stage: stage_epochs(results / NAME, stage) for stage, _ in STAGES}
    run["test"] = {stage: json.loads((results / NAME / stage / "best.json").read_text())["test"] for stage, _ in STAGES}
    report["run"] = run

    # 5. predict on one clip
    clip = write_clip(data, work / "clip.mp4")
    predicted = work / "predicted"
    call = [
        sys.executable,
        "-m",
        "aavs.orchestrator.cli",
        "predict",
        str(clip),
        "--experiment",
        str(results / NAME),
        "--out",
        str(predicted),
        "--overwrite",
        "--json",
    ]
    code, wall, peak = run_measured(call, env, work / "predict.log")
    if code != 0:
        raise SystemExit(f"aavs predict failed ({code}); see {work / 'predict.log'}")
    timeline = json.loads((predicted / "clip" / "timeline.json").read_text())
    report["predict"] = {
        "seconds": len(timeline["timeline"]),
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak / GIB, 2),
    }

    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    rendered = Console(record=True, width=140)
    rendered.print(table(report))
    (out / f"{stem}.txt").write_text(rendered.export_text())
    return report


if __name__ == "__main__":
    if "--probe" in sys.argv:
        task, frames, pretrained, data, vggish, overrides = json.loads(sys.argv[sys.argv.index("--probe") + 1])
        print(json.dumps(probe_step(task, frames, pretrained, data, vggish, overrides)))
    else:
        main()
