"""train_func on the tiny preset and the synthetic set: learning, stage two with a prior, exact resume
after SIGKILL (the trial layer of kill and resume), evaluate/score agreement, and the bad-input paths.
(DeepSpeed: test_experiment.py's two-worker ZeRO-2 trial.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aavs.datasets.errors import InputError
from aavs.orchestrator.cli import main
from aavs.orchestrator.recipe.evaluation import export_masks
from aavs.orchestrator.recipe.train import TrainingDiverged, train_func
from aavs.orchestrator.results import read_metrics

REPO = Path(__file__).resolve().parents[1]


def config(root: Path, trial_dir: Path, **extra) -> dict:
    base = {
        "task": "avss-binary",
        "data_root": str(root),
        "trial_dir": str(trial_dir),
        "epochs": 2,
        "lr": 3e-3,
        "compute": {"loader_workers": 0},
    }
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def stage_one(synth_root: Path, tmp_path_factory) -> Path:
    """A finished two-epoch stage-one trial (phase A then phase B)."""
    trial = tmp_path_factory.mktemp("stage-one") / "t000"
    train_func(config(synth_root, trial))
    return trial


def test_trial_folder_layout_and_phases(stage_one: Path):
    rows = read_metrics(stage_one)
    assert [r["epoch"] for r in rows] == [0, 1] and [r["phase"] for r in rows] == ["A", "B"]
    status = json.loads((stage_one / "status.json").read_text())
    assert status["status"] == "done" and status["epoch"] == 2
    best = json.loads((stage_one / "best" / "metrics.json").read_text())
    assert best["val/miou"] == max(r["val/miou"] for r in rows)
    assert best["epoch"] == max(rows, key=lambda r: r["val/miou"])["epoch"]
    for key in ("train/loss", "val/miou", "val/fscore", "train/data_wait_frac"):
        assert all(isinstance(r[key], float) for r in rows)
    assert (stage_one / "checkpoints" / "last" / "accelerate" / "optimizer.bin").exists()


def test_evaluate_reproduces_the_reported_val_metric_and_score_agrees(stage_one, synth_root, tmp_path, capsys):
    best = json.loads((stage_one / "best" / "metrics.json").read_text())
    masks = tmp_path / "masks"
    code = main(
        [
            "evaluate",
            str(stage_one / "best"),
            "--data",
            str(synth_root),
            "--split",
            "val",
            "--save-masks",
            str(masks),
            "--json",
        ]
    )
    assert code == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["miou"] == pytest.approx(best["val/miou"], abs=1e-6)
    assert evaluated["fscore"] == pytest.approx(best["val/fscore"], abs=1e-6)
    # Hard masks on disk: the same mIoU (the F-score differs: its probability is now the mask itself).
    assert (
        main(["score", str(masks), "--data", str(synth_root), "--task", "avss-binary", "--split", "val", "--json"]) == 0
    )
    scored = json.loads(capsys.readouterr().out)
    assert scored["miou"] == pytest.approx(evaluated["miou"], abs=1e-6)


@pytest.mark.slow  # a 71-class stage-two epoch: 9 s on 2 idle cores, 45 s on busy ones
def test_stage_two_runs_with_stage_one_masks_as_prior(stage_one, synth_root, tmp_path):
    masks = tmp_path / "prior"
    export_masks(stage_one / "best", synth_root, masks)
    pngs = sorted(masks.rglob("*.png"))
    assert len(pngs) == sum(5 if p in ("v1s", "v1m") else 10 for p in ("v1s", "v1m", "v2")) * 2 * 3
    trial = tmp_path / "semantic"
    best = train_func(
        config(
            synth_root,
            trial,
            task="avss",
            epochs=1,
            adapter_warmup=0.0,
            prior=str(masks),
            init_from=str(stage_one / "best"),
            max_videos=3,
        )
    )
    assert set(best) >= {"val/miou", "val/fscore", "val/miou_no_bg", "val/fscore_no_bg"}
    assert 0.0 <= best["val/miou"] <= 1.0
    # a prior folder missing a video is refused up front, naming the missing file
    victim = next((masks / "v2").iterdir())
    for png in victim.iterdir():
        png.unlink()
    with pytest.raises(InputError, match=str(victim)):
        train_func(config(synth_root, tmp_path / "again", task="avss", epochs=1, prior=str(masks)))


def test_checkpoint_that_does_not_match_the_model_is_refused(stage_one, synth_root, tmp_path):
    # A binary (stage-one) checkpoint cannot be evaluated as the 71-class network ...
    with pytest.raises(InputError, match="binary"):
        from aavs.orchestrator.recipe.evaluation import evaluate_checkpoint

        evaluate_checkpoint(stage_one / "best", synth_root, task="avss", split="val")
    # ... and a resume state of another architecture fails naming the mismatching weights.
    trial = tmp_path / "other"
    (trial / "checkpoints").mkdir(parents=True)
    os.symlink(stage_one / "checkpoints" / "last", trial / "checkpoints" / "last")
    with pytest.raises(InputError):
        train_func(
            config(
                synth_root,
                trial,
                task="avss-binary",
                epochs=3,
                model={"preset": "tiny", "overrides": {"num_queries": 7}},
            )
        )


def test_nan_loss_stops_the_trial_and_keeps_the_last_good_checkpoint(synth_root, tmp_path):
    trial = tmp_path / "nan"
    # Phase A at a sane rate, then phase B at an absurd one: the weights overflow and the loss is NaN.
    with pytest.raises(TrainingDiverged, match="not finite at epoch 1"):
        train_func(config(synth_root, trial, epochs=2, lr_b=1e30, max_videos=2))
    status = json.loads((trial / "status.json").read_text())
    assert status["status"] == "failed" and "not finite" in status["error"]
    state = json.loads((trial / "checkpoints" / "last" / "trainer.json").read_text())["state"]
    assert state["epoch"] == 0 and (trial / "best" / "model.safetensors").exists()
    weights = load_file(str(trial / "best" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def _run_in_subprocess(cfg: dict) -> subprocess.Popen:
    """train_func(cfg) in a child process (one intra-op thread); its stderr in a pipe, read at the end."""
    code = f"import json; from aavs.orchestrator.recipe.train import train_func; train_func(json.loads({json.dumps(json.dumps(cfg))}))"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _checkpointed_epoch(trial_dir: Path) -> int:
    try:
        return json.loads((trial_dir / "checkpoints" / "last" / "trainer.json").read_text())["state"]["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return -1


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]


def _kill_into_the_epoch_after(victim: subprocess.Popen, trial_dir: Path, epoch: int) -> None:
    deadline = time.time() + 600
    while _checkpointed_epoch(trial_dir) < epoch and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # into the next epoch
    victim.send_signal(signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.subprocess
def test_exact_resume_after_sigkill(synth_root, tmp_path):
    """Killed mid-epoch inside phase B, and mid-epoch right after phase A ended (the restart must then
    enter phase B exactly as the uninterrupted run did): both end with the uninterrupted weights. The
    uninterrupted run and the two killed ones go side by side, then the two restarts: each is one
    thread, and so a machine's second core does the work of another run."""
    import threading

    common = dict(epochs=3, adapter_warmup=0.34, max_videos=6)  # phase A = epoch 0
    straight = _run_in_subprocess(config(synth_root, tmp_path / "straight", **common))
    killed = {kill_after: tmp_path / f"killed-after-{kill_after}" for kill_after in (0, 1)}
    victims = {kill_after: _run_in_subprocess(config(synth_root, d, **common)) for kill_after, d in killed.items()}
    killers = [threading.Thread(target=_kill_into_the_epoch_after, args=(victims[k], killed[k], k)) for k in killed]
    for killer in killers:
        killer.start()
    for killer in killers:
        killer.join()
    for kill_after, victim in victims.items():
        victim.wait(timeout=60)
        assert victim.returncode == -signal.SIGKILL
        assert _checkpointed_epoch(killed[kill_after]) == kill_after, "killed too late; lengthen the epochs"
    resumed = {kill_after: _run_in_subprocess(config(synth_root, d, **common)) for kill_after, d in killed.items()}
    _finish(straight)
    final_a = load_file(str(tmp_path / "straight" / "checkpoints" / "last" / "model" / "model.safetensors"))

    for kill_after, killed_dir in killed.items():
        _finish(resumed[kill_after])
        final_b = load_file(str(killed_dir / "checkpoints" / "last" / "model" / "model.safetensors"))
        assert final_a.keys() == final_b.keys()
        for key in final_a:
            assert torch.equal(final_a[key], final_b[key]), (kill_after, key)
        assert [r["epoch"] for r in read_metrics(killed_dir)] == [0, 1, 2]
        assert [r["val/miou"] for r in read_metrics(killed_dir)] == [
            r["val/miou"] for r in read_metrics(tmp_path / "straight")
        ]


@pytest.mark.slow
def test_stage_one_learns_beyond_the_all_background_baseline(tmp_path_factory):
    """A short stage-one run on a slightly larger synthetic set beats predicting "silent" everywhere."""
    import numpy as np
    from PIL import Image

    from aavs.datasets.layout import select_videos
    from aavs.datasets.palette import decode_colour_mask
    from aavs.datasets.synth import write_synthetic_avsbench

    root = write_synthetic_avsbench(tmp_path_factory.mktemp("learn") / "data", videos_per_split=4, seed=1)

    # All-background prediction, computed independently: a frame scores 1 when its true mask is empty
    # (IoU of the two background masks) and 0 otherwise; a video scores the mean over its frames.
    def empty(path) -> float:
        return float(not decode_colour_mask(np.asarray(Image.open(path).convert("RGB"))).any())

    per_video = [
        np.mean([empty(r.mask_path(root, i)) for i in range(r.num_frames)])
        for r in select_videos(root, "avss-binary", "val")
    ]
    baseline = float(np.mean(per_video))
    # Against a baseline of 0.16, 8 epochs at 3e-3 reached 0.50, 0.44 and 0.37 for seeds 3407, 1 and 2
    # (2026-12-07); at 1.5e-3 seed 1 stayed at the baseline for 10 epochs, and 6 at 3e-3 reached only
    # 0.28 for seed 3407.
    best = train_func(config(root, tmp_path_factory.mktemp("learn-trial") / "t", epochs=8, lr=3e-3))
    assert best["val/miou"] > baseline + 0.1, (best, baseline)


@pytest.mark.usefixtures("one_torch_thread")
def test_training_state_of_a_frozen_base_holds_none_of_its_weights(synth_root, tmp_path):
    """``checkpoints/last`` of a network on a frozen pre-trained base: its trainable weights, their
    optimizer moments and the RNG states; no copy of the base (megabytes, not swin-base's ~430 MB)."""
    from transformers import Mask2FormerForUniversalSegmentation

    from aavs.models import build_model, set_phase
    from aavs.models.presets import preset_config

    base_config, _ = preset_config("tiny", "avss-binary")
    base = tmp_path / "mask2former-tiny"
    Mask2FormerForUniversalSegmentation(base_config).save_pretrained(base)
    trial = tmp_path / "frozen"
    train_func(
        config(
            synth_root, trial, epochs=1, max_videos=1, model={"pretrained": str(base), "overrides": {"image_size": 128}}
        )
    )

    model = build_model("avss-binary", pretrained=str(base), image_size=128)
    trainable = model.trainable_state_dict()
    frozen = {k for k in model.state_dict() if k not in trainable}
    assert frozen and any("pixel_level_module.encoder" in k for k in frozen)
    state = trial / "checkpoints" / "last" / "accelerate"
    assert sorted(p.name for p in state.iterdir()) == ["optimizer.bin", "random_states_0.pkl", "rng_rank0.pt"]
    set_phase(model, json.loads((state.parent / "trainer.json").read_text())["state"]["phase"])
    optimizer = torch.load(state / "optimizer.bin", weights_only=True)["state"]
    moments = sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in optimizer.values())
    assert moments == 2 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert set(load_file(str(trial / "checkpoints" / "last" / "model" / "model.safetensors"))) <= set(trainable)
    base_bytes = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k in frozen)
    state_bytes = sum(p.stat().st_size for p in (trial / "checkpoints" / "last").rglob("*") if p.is_file())
    assert state_bytes < base_bytes


def test_progress_within_an_epoch_reaches_the_log_and_the_plain_lines(synth_root, tmp_path, monkeypatch):
    """A slow step (0.3 s, six steps) and a 0.5 s interval: lines in the trial's log and status.json
    progress records, at least an interval apart; each record a plain line of the live view."""
    from aavs.orchestrator import results
    from aavs.orchestrator.experiment.runners.base import logged_trial
    from aavs.orchestrator.recipe import train
    from aavs.orchestrator.views.live import event_lines

    slow_frames = train.training_frames

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return slow_frames(*args, **kwargs)

    written: list[results.StatusRecord] = []
    write_status = results.write_status

    def keep(trial_dir, record):
        written.append(record)
        write_status(trial_dir, record)

    monkeypatch.setattr(train, "training_frames", slow)
    monkeypatch.setattr(results, "write_status", keep)
    trial = tmp_path / "trials" / "t000"
    small = {"preset": "tiny", "overrides": {"image_size": 64}}
    logged_trial(
        str(trial), True, train_func, config(synth_root, trial, epochs=1, progress_interval_s=0.5, model=small)
    )
    shown = [r.progress for r in written if r.progress]
    assert 2 <= len(shown) <= 6  # steps 2..5 of 6 can be shown (the last step never: the epoch ends)
    assert all(b["time"] - a["time"] >= 0.5 for a, b in zip(shown, shown[1:]))
    assert [p["step"] for p in shown] == sorted({p["step"] for p in shown}) and shown[-1]["steps"] == 6
    logged = [line for line in (trial / "log.txt").read_text().splitlines() if " step " in line]
    assert [line.split(": ", 1)[1] for line in logged] == [results.progress_line(p) for p in shown]

    def board(progress):
        trial_row = {"trial_id": "t000", "status": "running", "epochs": 1, "history": {"epoch": []}}
        stage = {"name": "localize", "status": "running", "trials": [dict(trial_row, progress=progress)]}
        return {"progress": {"trials_done": 0, "trials": 1, "epochs_done": 0, "epochs": 1}, "stages": [stage]}

    (event,) = event_lines(board(shown[0]), board(shown[1]))
    assert event.text == f"[0/1 trials 0/1 epochs] localize t000 {results.progress_line(shown[1])}"
