"""``aavs estimate``, checked against hand counts written as literals (each derived in a comment from the
experiment below and the tiny preset's architecture), never through the estimate's own helpers; its
refusals; ``aavs run --dry-run``'s sheet; ASHA's expected epochs against a simulation of Ray's rule.

No Ray and no GPU: the networks are the tiny preset's, their FLOPs counted once per session into the
session's $AAVS_CACHE_DIR. The FLOPs per frame are the one figure taken from the estimate's output;
everything derived from them is recomputed here from literals.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from aavs.orchestrator.cli import main

# Two stages on the synthetic set (3 training videos per subset, 2 in val and test), the tiny preset
# with a pre-trained (hence frozen) base, priced on A100s in bf16: peak 312 TFLOP/s x MFU 0.4.
SPEC: dict[str, Any] = {
    "name": "est",
    "data": {"synthetic": {"videos_per_split": 3, "eval_videos_per_split": 2}},
    "model": {"preset": "tiny", "pretrain": {"steps": 10, "images_per_step": 2}},
    "compute": {"gpus_per_worker": 1, "cpus_per_worker": 1, "loader_workers": 2, "mixed_precision": "bf16"},
    "stages": [
        {
            "name": "localize",
            "task": "avss-binary",
            "epochs": 8,
            "params": {"lr": {"loguniform": [1.0e-4, 1.0e-3]}},
            "tune": {
                "num_samples": 4,
                "max_concurrent": 2,
                "scheduler": {"asha": {"grace_period": 2, "reduction_factor": 2}},
            },
        },
        {"name": "semantic", "task": "avss", "prior": "localize", "epochs": 3, "params": {"lr": 1.0e-3}},
    ],
}
RATE = 312e12 * 0.4  # a100, bf16, the default MFU: FLOP/s of one GPU

# The tiny preset (aavs.models.presets): Swin depths 1-1-2-1 at widths 32, 64, 128, 256, hidden 64,
# 2 pixel-decoder encoder layers, decoder_layers 4 (3 masked-attention layers), 10 queries binary and
# 20 semantic; adapters d -> d/4 -> d (d*d/4 + d/4 + d/4*d + d weights, 4 tensors).
# Trainable with a frozen base, binary network, phase B:
#   audio projection 128*512 + 512 + 512*64 + 64                        =  98,880 (4 tensors)
#   query embeddings 10*64 and query features 10*64                     =   1,280 (2)
#   class predictor 64*3 + 3 (background, sounding, no-object)          =     195 (2)
#   Swin adapters, 2 per block: 2*(32*32/2 + 5*32/4) + 2*(64*64/2 + 5*64/4)
#     + 2*2*(128*128/2 + 5*128/4) + 2*(256*256/2 + 5*256/4)             = 104,944 (40)
#   pixel-decoder adapters 2 * (64*64/2 + 5*64/4)                       =   4,256 (8)
#   decoder self-attention adapters 3 * 2,128                           =   6,384 (12)
#   phase B: 215,939 parameters in 68 tensors; phase A (no Swin adapters): 110,995 in 28.
# A checkpoint folder keeps the 215,939 float32 weights: 863,756 bytes. AdamW keeps two float32 moments
# per parameter and a float32 step per tensor: phase B 215,939*8 + 68*4 = 1,727,784; A 110,995*8 + 28*4
# = 888,072. A trial keeps two folders (last/model, best) and the optimizer of the phase it ended in:
BINARY_TRIAL_B = 2 * 863_756 + 1_727_784  # 3,455,296
BINARY_TRIAL_A = 2 * 863_756 + 888_072  # 2,615,584
# The semantic network (the synthetic set's 9 classes) trains no query features (its base keeps them)
# and has 20 queries and the prior: 98,880 + 20*64 + (64*10 + 10) + 3*64 + 115,584 adapters = 216,586
# parameters in 4 + 1 + 2 + 1 + 60 = 68 tensors: 2 * 866,344 + (216,586*8 + 68*4) bytes.
SEMANTIC_TRIAL_B = 2 * 866_344 + 1_732_960  # 3,465,648


def _estimate(tmp_path: Path, spec: dict[str, Any], *args: str) -> dict[str, Any]:
    """``aavs estimate --json`` of ``spec``: its one JSON object."""
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(spec))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["estimate", str(path), "--results", str(tmp_path / "results"), "--json", *args])
    assert code == 0
    return json.loads(buffer.getvalue())


@pytest.fixture(scope="module")
def sheet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _estimate(tmp_path_factory.mktemp("estimate"), SPEC, "--gpu", "a100", "--gpus", "4")


def test_frames_trials_and_epochs_are_the_hand_counts(sheet: dict[str, Any]) -> None:
    localize, semantic = sheet["stages"]
    # Training: 3 videos of each subset; v1s shows frame 0 five times, v1m 5 frames, v2 10:
    # 3*5 + 3*5 + 3*10 = 60 a trial-epoch. Validation and test (2 a subset): 2*5 + 2*5 + 2*10 = 40.
    # localize's masks are semantic's prior: every frame of every split, 60 + 40 + 40 = 140.
    assert localize["frames"] == {"train_per_epoch": 60, "eval_per_epoch": 40, "test": 40, "mask_export": 140}
    assert semantic["frames"] == {"train_per_epoch": 60, "eval_per_epoch": 40, "test": 40, "mask_export": 0}
    # ASHA, 4 trials, max_t 8, grace 2, rf 2: rungs at 2 and 4 (8 is max_t). With rf 2 every arrival
    # after the first continues with probability (m - (m-1)/2)/(m+1) = 1/2, so 4 trials -> 1 + 3/2 =
    # 2.5 expected at epochs 3-4 -> 1 + 1.5/2 = 1.75 at epochs 5-8: 2*4 + 2*2.5 + 4*1.75 = 20 of 32.
    assert (localize["trials"], localize["epochs"]) == (4, 8)
    assert localize["trial_epochs"] == pytest.approx(20)
    assert localize["epoch_share"] == pytest.approx(20 / 32)
    assert (semantic["trials"], semantic["trial_epochs"]) == (1, 3)
    # Phase A: floor(8 * 1/2) = 4 epochs of stage one, floor(3 * 1/3) = 1 of stage two.
    assert (localize["phase_a_epochs"], semantic["phase_a_epochs"]) == (4, 1)
    # 4 GPUs, one a trial, at most 2 at once (max_concurrent); one trial in stage two.
    assert (localize["concurrent_trials"], semantic["concurrent_trials"]) == (2, 1)
    assert sheet["total"]["trials"] == 5


def test_checkpoint_bytes_are_the_hand_counts(sheet: dict[str, Any]) -> None:
    localize, semantic = sheet["stages"]
    assert localize["checkpoints"]["per_trial_tensor_bytes"] == BINARY_TRIAL_B
    # Trials end at epoch 2 (4 - 2.5 = 1.5 of them) or 4 (2.5 - 1.75 = 0.75), in phase A; 1.75 at 8.
    assert localize["checkpoints"]["search_tensor_bytes"] == pytest.approx(
        2.25 * BINARY_TRIAL_A + 1.75 * BINARY_TRIAL_B
    )
    assert semantic["checkpoints"]["per_trial_tensor_bytes"] == SEMANTIC_TRIAL_B
    assert semantic["checkpoints"]["search_tensor_bytes"] == SEMANTIC_TRIAL_B
    assert sheet["total"]["checkpoint_tensor_bytes"] == pytest.approx(
        2.25 * BINARY_TRIAL_A + 1.75 * BINARY_TRIAL_B + SEMANTIC_TRIAL_B
    )


def test_gpu_hours_and_loader_workers_follow_from_the_flops(sheet: dict[str, Any]) -> None:
    localize, semantic = sheet["stages"]
    train, evaluation = localize["flops_per_frame"]["train"], localize["flops_per_frame"]["eval"]
    assert train["B"] > train["A"] > evaluation["A"] > 0  # phase B back-propagates through Swin too
    # Trial-epochs by phase: A (epochs 1-4) 2*4 + 2*2.5 = 13, B (5-8) 4*1.75 = 7.
    flops = (
        60 * (13 * train["A"] + 7 * train["B"])
        + 40 * (13 * evaluation["A"] + 7 * evaluation["B"])
        + (40 + 140) * evaluation["B"]
    )
    assert localize["flops"]["total"] == pytest.approx(flops)
    assert localize["device_hours"] == pytest.approx(flops / RATE / 3600)
    s_train, s_eval = semantic["flops_per_frame"]["train"], semantic["flops_per_frame"]["eval"]
    s_flops = 60 * (s_train["A"] + 2 * s_train["B"]) + 40 * (s_eval["A"] + 2 * s_eval["B"]) + 40 * s_eval["B"]
    assert semantic["device_hours"] == pytest.approx(s_flops / RATE / 3600)
    # A GPU trains RATE / (FLOPs of a frame in the cheaper phase) frames/s; a worker delivers 720 (devices.py).
    frames_per_s = RATE / train["A"]
    assert localize["loader"]["frames_per_s_per_device"] == pytest.approx(frames_per_s)
    assert localize["loader"]["workers_needed_per_device"] == math.ceil(frames_per_s / 720)
    assert sheet["device"]["peak_flops_per_s"] == 312e12 and "A100 datasheet" in sheet["device"]["peak_source"]


def test_the_counts_are_cached(sheet: dict[str, Any]) -> None:
    cached = list((Path(os.environ["AAVS_CACHE_DIR"]) / "flops").glob("network-*.json"))
    assert len(cached) >= 2  # the binary and the semantic network


def test_avsbench_shape_counts(tmp_path: Path) -> None:
    sheet = _estimate(tmp_path, SPEC, "--shape", "avsbench", "--gpu", "h100")
    localize, semantic = sheet["stages"]
    # AVSBench: v1s 3,452/740/740 videos of 5 frames, v1m 296/64/64 of 5, v2 4,750/500/750 of 10.
    # Training: 3452*5 + 296*5 + 4750*10 = 66,240; val 740*5 + 64*5 + 500*10 = 9,020;
    # test 740*5 + 64*5 + 750*10 = 11,520; stage one's masks, every split: 86,780.
    assert localize["frames"] == {"train_per_epoch": 66240, "eval_per_epoch": 9020, "test": 11520, "mask_export": 86780}
    assert semantic["frames"]["train_per_epoch"] == 66240
    # bf16 on an H100: the 790 TFLOP/s measured matrix-product rate (issue 21).
    assert sheet["device"]["peak_flops_per_s"] == 790e12


def test_frames_of_a_data_root_as_two_workers_read_it(tmp_path: Path, synth_root: Path) -> None:
    spec = {
        **SPEC,
        "data": {"root": str(synth_root)},
        "compute": {**SPEC["compute"], "workers_per_trial": 2, "strategy": "ddp"},
        "stages": [{"name": "a", "task": "avss-binary", "epochs": 2, "max_videos": 3, "shuffle": False}],
    }
    sheet = _estimate(tmp_path, spec, "--gpu", "h100", "--gpus", "2")
    (stage,) = sheet["stages"]
    # Training videos in file order: v1s-0, v1s-1, v1m-0, v1m-1, v2-0, v2-1. Two workers take every
    # other one (0, 2, 4 and 1, 3, 5), each capped at ceil(3 / 2) = 2: v1s-0, v1m-0 and v1s-1,
    # v1m-1, 5 items each: 20 frames an epoch. Validation: 2*5 + 2*5 + 2*10 = 40.
    assert stage["frames"]["train_per_epoch"] == 20
    assert stage["frames"]["eval_per_epoch"] == 40
    assert (stage["devices_per_trial"], stage["concurrent_trials"]) == (2, 1)


def test_asha_expectation_matches_a_simulation_of_rays_rule(tmp_path: Path) -> None:
    sets = [
        "stages.localize.epochs=9",
        "stages.localize.tune.num_samples=5",
        "stages.localize.tune.max_concurrent=0",
        "stages.localize.tune.scheduler={asha: {grace_period: 1, reduction_factor: 3}}",
    ]
    sheet = _estimate(tmp_path, SPEC, "--gpu", "h100", *(arg for s in sets for arg in ("--set", s)))
    # Ray's _Bracket: rungs at 1 and 3 epochs (9 = max_t); at a rung a trial stops when its result is
    # below the 2/3 quantile (numpy's linear interpolation) of the results recorded there before it.
    rng = np.random.default_rng(0)
    reps, n, q = 20_000, 5, 1 - 1 / 3
    alive, epochs = np.ones((reps, n), bool), np.full((reps, n), 9.0)
    for milestone in (1, 3):
        values = np.where(alive, rng.random((reps, n)), np.nan)
        for i in range(1, n):
            earlier = np.sort(values[:, :i], axis=1)  # NaN (no result) last
            k = (~np.isnan(earlier)).sum(axis=1)
            position = np.maximum(k - 1, 0) * q
            low = np.take_along_axis(earlier, np.floor(position).astype(int)[:, None], 1)[:, 0]
            high = np.take_along_axis(earlier, np.ceil(position).astype(int)[:, None], 1)[:, 0]
            cutoff = np.where(k > 0, low + (high - low) * (position - np.floor(position)), -np.inf)
            stop = alive[:, i] & (values[:, i] < cutoff)
            epochs[stop, i], alive[stop, i] = milestone, False
    assert sheet["stages"][0]["trial_epochs"] == pytest.approx(epochs.sum(axis=1).mean(), rel=0.02)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gpu", "h300"], "--gpu h300: expected one of h100, h200, a100"),
        (["--device", "tpu"], "--device tpu: expected cpu"),
        (["--mfu", "1.5"], "--mfu 1.5: expected a fraction"),
        (["--gpus", "0"], "--gpus 0: expected a positive number"),
        (["--shape", "kinetics"], "--shape kinetics: expected one of avsbench"),
        (["--loader-fps", "0"], "--loader-fps 0: expected a positive number"),
        (["--set", "data={root: NOWHERE}"], "give --shape avsbench"),
        (["--set", "compute.workers_per_trial=2", "--set", "compute.strategy=ddp"], "--gpus 1: a trial of stage"),
        (["--local"], "--local: stages.0.tune.scheduler (localize) is asha, which needs Ray"),
        (["--set", "stages.0.epochs=2000000"], "stages.0.epochs 2000000: too large to estimate"),
    ],
)
def test_bad_input_names_the_flag(tmp_path: Path, capsys, args: list[str], expected: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    assert main(["estimate", str(path), "--results", str(tmp_path / "results"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aavs: error: ") and expected in err, err


def test_dry_run_prints_the_sheet_on_request(tmp_path: Path, capsys) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    args = ["run", str(path), "--results", str(tmp_path / "results"), "--dry-run"]
    assert main(args) == 0
    assert capsys.readouterr().out == f"{path}: valid\n"  # not a terminal: the one line, as before
    assert main([*args, "--estimate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: valid\n") and "per stage" in out and "GPU-hours" in out
    assert not (tmp_path / "results").exists()
