"""`aavs predict`: videos in, the masks `aavs evaluate --save-masks` writes out.

The videos are built from the synthetic set with PyAV, losslessly (FFV1 in RGB, 16-bit PCM), so they
carry exactly the pixels and samples the data set reader sees; the masks must then match byte for byte.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from aavs.datasets.layout import class_names, select_videos
from aavs.datasets.video import iter_second_frames, write_video
from aavs.orchestrator.cli import main
from aavs.orchestrator.results import BestTrial, write_best

FPS = 5  # every second of a test video is its data frame, repeated
LOSSLESS = {"codec": "ffv1", "pix_fmt": "bgr0"}


# ------------------------------------------------------------------------------------- helpers
def _data_video(root: Path, record, out: Path) -> Path:
    """The record's frames (as PIL decodes the JPEGs) at FPS, with its audio.wav's samples."""
    frames = [np.asarray(Image.open(record.frame_path(root, i)).convert("RGB")) for i in range(record.num_frames)]
    samples, rate = soundfile.read(record.audio_path(root), dtype="int16")
    path = out / f"{record.uid}.mkv"
    write_video(path, (f for f in frames for _ in range(FPS)), FPS, audio=(samples, rate), **LOSSLESS)
    return path


def _moving_frames(seconds: int, fps: int, size: tuple[int, int] = (224, 224)):
    """Synthetic frames whose content changes every second (a gradient shifted per second)."""
    h, w = size
    base = (np.add.outer(np.arange(h), np.arange(w)) % 256).astype(np.uint8)
    for t in range(seconds):
        frame = np.stack([np.roll(base, 7 * t, axis=1), np.roll(base, 3 * t, axis=0), base[::-1]], axis=-1)
        for _ in range(fps):
            yield frame


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * (220 + 40 * np.floor(t)) * t)).astype(np.int16)


def _mixed_stage_one(frames: np.ndarray):
    """A tiny stage-one network whose random weights mark part of each frame as sounding (a random
    network marks whole frames or nothing): its mask embeddings are scaled up, so the masks vary across
    the frame, and the sounding class's bias is bisected until about 40% of the pixels sound."""
    from aavs.models import build_model

    torch.manual_seed(0)
    model = build_model("avss-binary", preset="tiny")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "mask_predictor.mask_embedder.2.0" in name:
                param.mul_(30)
    audio = np.zeros((len(frames), 128), np.float32)
    lo, hi = -20.0, 20.0
    bias = model.model.class_predictor.bias
    start = bias.detach().clone()
    for _ in range(30):
        mid = (lo + hi) / 2
        with torch.no_grad():
            bias.copy_(start)
            bias[1] += mid
        scores = model.predict(frames, audio)
        share = float((scores[:, 1] > scores[:, 0]).float().mean())
        if abs(share - 0.4) < 0.1:
            return model
        lo, hi = (mid, hi) if share < 0.4 else (lo, mid)
    raise AssertionError("could not calibrate the stage-one network")


def _png_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory, synth_root: Path, one_torch_thread) -> dict[str, Path]:
    """Test videos of the synthetic set, a stage-one and a stage-two checkpoint, and their
    `aavs evaluate --save-masks` masks."""
    from aavs.models import build_model, save_checkpoint

    base = tmp_path_factory.mktemp("predict")
    videos = base / "videos"
    videos.mkdir()
    records = select_videos(synth_root, "avss-binary", "test")
    for record in records:
        _data_video(synth_root, record, videos)
    first = records[-1]
    frames = np.stack([np.asarray(Image.open(first.frame_path(synth_root, i)).convert("RGB")) for i in range(3)])
    save_checkpoint(_mixed_stage_one(frames), base / "s1")
    torch.manual_seed(1)
    save_checkpoint(build_model("avss", preset="tiny", classes=class_names(synth_root)), base / "s2")
    for args in (
        [
            "evaluate",
            str(base / "s1"),
            "--data",
            str(synth_root),
            "--split",
            "test",
            "--save-masks",
            str(base / "ev1"),
            "--json",
        ],
        [
            "evaluate",
            str(base / "s2"),
            "--data",
            str(synth_root),
            "--split",
            "test",
            "--prior",
            str(base / "ev1"),
            "--save-masks",
            str(base / "ev2"),
            "--json",
        ],
    ):
        assert main(args) == 0
    return {
        "base": base,
        "videos": videos,
        "s1": base / "s1",
        "s2": base / "s2",
        "ev1": base / "ev1",
        "ev2": base / "ev2",
        "records": records,
    }


@pytest.fixture(scope="module")
def stage_one_out(work) -> Path:
    out = work["base"] / "out1"
    assert main(["predict", str(work["videos"]), "--out", str(out), "--checkpoint", str(work["s1"]), "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def two_stage_out(work) -> Path:
    out = work["base"] / "out2"
    assert (
        main(
            [
                "predict",
                str(work["videos"]),
                "--out",
                str(out),
                "--checkpoint",
                str(work["s2"]),
                "--prior-checkpoint",
                str(work["s1"]),
            ]
        )
        == 0
    )
    return out


def _assert_same_masks(out: Path, evaluated: Path, records) -> None:
    for record in records:
        predicted = _png_tree(out / record.uid / "masks")
        expected = _png_tree(evaluated / record.subset / record.uid)
        assert len(predicted) == record.num_frames
        assert predicted == expected, record.uid


# --------------------------------------------------------------------------------------- tests
def test_stage_one_masks_are_evaluate_masks_byte_for_byte(work, stage_one_out):
    _assert_same_masks(stage_one_out, work["ev1"], work["records"])
    shares = [
        c["share"]
        for r in work["records"]
        for s in json.loads((stage_one_out / r.uid / "timeline.json").read_text())["timeline"]
        for c in s["sounding"]
    ]
    assert shares and 0.05 < np.mean(shares) < 0.95  # the masks are neither empty nor whole frames


def test_two_stage_masks_are_evaluate_masks_byte_for_byte(work, two_stage_out):
    _assert_same_masks(two_stage_out, work["ev2"], work["records"])


def test_experiment_runs_stage_one_into_stage_two(work, two_stage_out, capsys):
    results = work["base"] / "results" / "demo"
    spec = {
        "stages": [
            {"name": "localize", "task": "avss-binary", "prior": None},
            {"name": "semantic", "task": "avss", "prior": "localize"},
            {"name": "plain", "task": "avss-binary", "prior": None},
        ],
        "model": {"preset": "tiny", "vggish": None, "vggish_pca": None},
    }
    results.mkdir(parents=True)
    (results / "spec.json").write_text(json.dumps({"hash": "x", "spec": spec}))
    for stage, checkpoint in (("localize", work["s1"]), ("semantic", work["s2"]), ("plain", work["s1"])):
        (results / stage).mkdir()
        write_best(
            results / stage,
            BestTrial(
                stage=stage,
                trial_id="t000",
                metric="val/miou",
                mode="max",
                value=0.5,
                checkpoint=str(checkpoint),
                checkpoint_sha256="0" * 64,
                params={},
                data_root=str(work["base"] / "data"),
            ),
        )
    video = work["videos"] / f"{work['records'][0].uid}.mkv"
    out = work["base"] / "out-exp"
    code, stdout, _ = _run(["predict", str(video), "--out", str(out), "--experiment", str(results), "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["done"] == 1 and summary["videos"][0]["status"] == "done"
    name = work["records"][0].uid
    assert _png_tree(out / name / "masks") == _png_tree(two_stage_out / name / "masks")
    models = json.loads((out / name / "timeline.json").read_text())["models"]
    assert models["prior_checkpoint"] == str(work["s1"]) and models["task"] == "avss"
    code, _, _ = _run(
        [
            "predict",
            str(video),
            "--out",
            str(work["base"] / "out-plain"),
            "--experiment",
            str(results),
            "--stage",
            "plain",
        ],
        capsys,
    )
    assert code == 0
    assert _png_tree(work["base"] / "out-plain" / name / "masks") == _png_tree(
        work["ev1"] / work["records"][0].subset / name
    )


def test_outputs_overlay_and_timeline(work, two_stage_out, synth_root):
    import av

    record = work["records"][-1]  # a v2 video: 10 seconds
    folder = two_stage_out / record.uid
    doc = json.loads((folder / "timeline.json").read_text())
    assert doc["seconds"] == 10 and doc["audio"] == "present" and len(doc["timeline"]) == 10
    names = class_names(synth_root)
    for t, second in enumerate(doc["timeline"]):
        assert second["second"] == t and sum(c["share"] for c in second["sounding"]) <= 1 + 1e-5
        for item in second["sounding"]:
            assert item["name"] == names[item["index"]] and item["index"] != 0
            assert 0 < item["share"] <= 1 and item["score"] > 0  # a class's score map: sum over queries
    with av.open(str(folder / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == FPS
        assert sum(1 for _ in container.decode(stream)) == 10 * FPS
    assert not [p for p in two_stage_out.iterdir() if p.name.startswith(".")]  # no temporary folders left

    # The sound: PCM, which MP4 does not carry as it is, re-encoded to AAC, at >= 30 dB SNR once aligned.
    source, rate = soundfile.read(record.audio_path(synth_root), dtype="float32")
    heard, heard_rate = _decoded_audio(folder / "overlay.mp4")
    assert heard_rate == rate
    assert _aligned_snr_db(source, heard) >= 30


def _decoded_audio(path: Path) -> tuple[np.ndarray, int]:
    """The first audio stream of a file, decoded to float mono, and its sample rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.codec_context.sample_rate)
        chunks = [f.to_ndarray()[0] for frame in container.decode(stream) for f in resampler.resample(frame)]
        return np.concatenate(chunks), stream.codec_context.sample_rate


def _aligned_snr_db(reference: np.ndarray, signal: np.ndarray, max_lag: int = 4096) -> float:
    """SNR of ``signal`` against ``reference`` at the lag (within ``max_lag`` samples) that matches best."""
    n = min(len(reference), len(signal)) - 2 * max_lag
    core = reference[max_lag : max_lag + n]
    best = max(range(2 * max_lag + 1), key=lambda lag: float(np.dot(core, signal[lag : lag + n])))
    error = core - signal[best : best + n]
    return float(10 * np.log10(np.sum(core**2) / max(np.sum(error**2), 1e-20)))


def test_the_overlay_encoder_gives_the_same_bytes_every_time(tmp_path):
    """predict --ray and the in-process run promise the same overlay.mp4 bytes; x264 with two threads
    broke that about once in eight encodes here, and so did preset veryfast with one thread (its
    macroblock tree and look-ahead: 2 or 3 different encodes in 30, inside pytest), so the overlay's
    settings are encoded 20 times over, fed yuv420p frames as the overlay feeds them."""
    import av

    from aavs.orchestrator.predict.overlay import OVERLAY_X264

    rng = np.random.default_rng(0)
    stills = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(5)]
    rgb = [np.roll(f, 3 * k, axis=1) for f in stills for k in range(25)]
    frames = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p") for f in rgb]
    encodes = set()
    for _ in range(20):
        write_video(tmp_path / "o.mp4", frames, 25, options=OVERLAY_X264)
        encodes.add((tmp_path / "o.mp4").read_bytes())
    assert len(encodes) == 1


def test_overlay_blends_the_mask_at_half_alpha_over_the_input(tmp_path):
    """overlay.mp4, decoded, against its input decoded to RGB: where the mask sounds, (1 - alpha) x the
    frame + alpha x the class colour; elsewhere, and in a second where nothing sounds (no legend
    either), the frame; the legend's swatch in the class colour. Within H.264's error at crf 20, for an
    H.264 input (its yuv420p planes blended as decoded) and an RGB one of odd size (cropped to even)."""
    import av

    from aavs.datasets.palette import palette
    from aavs.orchestrator.predict.overlay import OVERLAY_ALPHA, write_overlay

    def decoded(path: Path) -> np.ndarray:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(float)

    def frames(h: int, w: int):  # smooth: H.264's error stays small
        y, x = np.mgrid[0:h, 0:w]
        for i in range(2 * FPS):
            yield np.stack([40 + x + 2 * i, 30 + y, np.full((h, w), 90 + 10 * i)], axis=-1).astype(np.uint8)

    masks = tmp_path / "masks"
    masks.mkdir()
    left = np.zeros((224, 224), np.uint8)
    left[:, :112] = 255  # second 0: the left half sounds
    Image.fromarray(left).save(masks / "0.png")
    Image.fromarray(np.zeros_like(left)).save(masks / "1.png")  # second 1: nothing
    timeline = [
        {"second": 0, "sounding": [{"index": 1, "name": "sounding", "score": 1.0, "share": 0.5}]},
        {"second": 1, "sounding": []},
    ]
    colour = palette(2)[1].astype(float)
    inputs = {"clip.mp4": ((120, 160), {"options": {"crf": "12"}}), "odd.mkv": ((121, 161), LOSSLESS)}
    for name, ((h, w), how) in inputs.items():
        write_video(tmp_path / name, frames(h, w), FPS, **how)
        write_overlay(tmp_path / name, masks, tmp_path / f"{name}.mp4", timeline, ("background", "sounding"), True)
        with av.open(str(tmp_path / f"{name}.mp4")) as container:
            assert container.streams.video[0].average_rate == FPS
        frame = decoded(tmp_path / name)[:, : h // 2 * 2, : w // 2 * 2]
        overlay = decoded(tmp_path / f"{name}.mp4")
        assert overlay.shape == frame.shape == (2 * FPS, h // 2 * 2, w // 2 * 2, 3), name
        edge = w // 2  # the mask's edge (nearest-resized from 224 columns): 4 pixels either side are left out
        regions = {
            "masked": (slice(0, FPS), slice(30, None), slice(0, edge - 4)),  # below the legend
            "unmasked": (slice(0, FPS), slice(None), slice(edge + 4, None)),
            "second 1": (slice(FPS, None),),
        }
        expected = frame.copy()
        expected[regions["masked"]] = (1 - OVERLAY_ALPHA) * frame[regions["masked"]] + OVERLAY_ALPHA * colour
        for region, where in regions.items():
            error = np.abs(overlay[where] - expected[where])
            assert error.mean() < 2.5 and np.percentile(error, 99) <= 8, (name, region, error.mean())
        swatch = overlay[0, 10:13, 10:13].reshape(-1, 3)  # the legend's first swatch: 8 x 8 at (8, 8)
        assert np.abs(swatch - colour).max() <= 6, (name, swatch.mean(axis=0))


def test_a_folder_tree_with_an_aac_clip_sized_overlays_and_none(work, tmp_path, capsys):
    """A folder is searched into its subfolders (OUT keeps their paths); an AAC sound is copied into the
    overlay packet for packet; --overlay-height sizes it; --no-recursive and --no-overlay leave them out."""
    import av

    rate = 44100
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(3 * rate) / rate)).astype(np.int16)
    clip = tmp_path / "in" / "sub" / "clip.mp4"
    clip.parent.mkdir(parents=True)
    write_video(clip, _moving_frames(3, FPS, (120, 160)), FPS, audio=(tone, rate), audio_codec="aac")
    top = shutil.copy(work["videos"] / f"{work['records'][0].uid}.mkv", tmp_path / "in")
    args = ["predict", str(tmp_path / "in"), "--checkpoint", str(work["s1"])]
    assert _run([*args, "--out", str(tmp_path / "out"), "--overlay-height", "60"], capsys)[0] == 0

    def packets(path: Path) -> list[bytes]:
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]

    overlay = tmp_path / "out" / "sub" / "clip" / "overlay.mp4"
    copied = packets(overlay)
    assert copied and copied == packets(clip)
    for path, size in ((overlay, (80, 60)), (tmp_path / "out" / Path(top).stem / "overlay.mp4", (60, 60))):
        with av.open(str(path)) as container:
            context = container.streams.video[0].codec_context
            assert (context.width, context.height) == size

    code, stdout, _ = _run([*args, "--out", str(tmp_path / "flat"), "--no-recursive", "--no-overlay", "--json"], capsys)
    assert code == 0 and [v["name"] for v in json.loads(stdout)["videos"]] == [Path(top).stem]
    folder = tmp_path / "flat" / Path(top).stem
    assert (folder / "timeline.json").is_file() and not (folder / "overlay.mp4").exists()
    assert len(list((folder / "masks").glob("*.png"))) == work["records"][0].num_frames


def test_frame_of_each_second_is_ffmpeg_fps_filter_choice(tmp_path):
    """Second t's frame is the one ffmpeg's fps=1 picks (AVSBench's 1 fps extraction)."""
    import av

    for fps, count in ((25, 138), (10, 56), (30, 150)):
        path = tmp_path / f"count{fps}.mkv"
        frames = (np.full((16, 16, 3), i % 250, np.uint8) for i in range(count))
        write_video(path, frames, fps, **LOSSLESS)
        ours = [int(f[0, 0, 0]) for f in iter_second_frames(path)]
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            graph = av.filter.Graph()
            source, sink = graph.add_buffer(template=stream), graph.add("buffersink")
            rate = graph.add("fps", "fps=1")
            source.link_to(rate)
            rate.link_to(sink)
            graph.configure()
            picked = []
            for frame in [*container.decode(stream), None]:
                graph.push(frame)
                while True:
                    try:
                        picked.append(int(graph.pull().to_ndarray(format="rgb24")[0, 0, 0]))
                    except (av.BlockingIOError, av.EOFError):
                        break
        assert ours == picked, fps


def test_long_clip_windows_do_not_drift(work, tmp_path, capsys):
    """Seconds 10-19 of a 23-second clip are predicted as the 10-second clip of those seconds."""
    frames = list(_moving_frames(23, 2))
    audio = _tone(23)
    write_video(tmp_path / "long.mkv", frames, 2, audio=(audio, 16000), **LOSSLESS)
    write_video(tmp_path / "cut.mkv", frames[20:40], 2, audio=(audio[160000:320000], 16000), **LOSSLESS)
    out = tmp_path / "out"
    code, _, _ = _run(
        [
            "predict",
            str(tmp_path / "long.mkv"),
            str(tmp_path / "cut.mkv"),
            "--out",
            str(out),
            "--checkpoint",
            str(work["s2"]),
            "--prior-checkpoint",
            str(work["s1"]),
        ],
        capsys,
    )
    assert code == 0
    assert len(list((out / "long" / "masks").iterdir())) == 23
    for t in range(10):
        assert (out / "long" / "masks" / f"{t + 10}.png").read_bytes() == (
            out / "cut" / "masks" / f"{t}.png"
        ).read_bytes()


def test_existing_results_are_skipped_unless_overwrite(work, stage_one_out, capsys):
    video = work["videos"] / f"{work['records'][0].uid}.mkv"
    target = stage_one_out / work["records"][0].uid / "timeline.json"
    before = target.stat().st_mtime_ns
    code, stdout, _ = _run(
        ["predict", str(video), "--out", str(stage_one_out), "--checkpoint", str(work["s1"]), "--json"], capsys
    )
    assert code == 0 and json.loads(stdout)["skipped"] == 1 and target.stat().st_mtime_ns == before
    code, stdout, _ = _run(
        ["predict", str(video), "--out", str(stage_one_out), "--checkpoint", str(work["s1"]), "--json", "--overwrite"],
        capsys,
    )
    assert code == 0 and json.loads(stdout)["done"] == 1 and target.stat().st_mtime_ns != before


def test_bad_inputs_are_named_and_the_others_finish(work, tmp_path, capsys):
    import av

    bad = tmp_path / "in"
    bad.mkdir()
    good = work["videos"] / f"{work['records'][0].uid}.mkv"
    shutil.copy(good, bad / "good.mkv")
    (bad / "text.mp4").write_text("not a video at all\n")
    data = good.read_bytes()
    corrupt = bytearray(data)
    corrupt[len(data) // 3 : len(data) // 3 + 4000] = (
        np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes()
    )
    (bad / "corrupt.mkv").write_bytes(bytes(corrupt))
    write_video(bad / "cut.mp4", _moving_frames(6, 5), 5, options={"preset": "ultrafast"})
    (bad / "truncated.mp4").write_bytes((bad / "cut.mp4").read_bytes()[: (bad / "cut.mp4").stat().st_size // 2])
    (bad / "cut.mp4").unlink()
    write_video(bad / "tail.mkv", _moving_frames(12, 5), 5, **LOSSLESS)
    (bad / "tail.mkv").write_bytes((bad / "tail.mkv").read_bytes()[: (bad / "tail.mkv").stat().st_size // 2])
    with av.open(str(bad / "sound-only.mkv"), "w") as container:  # no video stream
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(_tone(2)[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    write_video(bad / "blink.mkv", list(_moving_frames(1, 5))[:1], 5, **LOSSLESS)  # one frame: 0.2 s
    write_video(bad / "silent.mkv", _moving_frames(3, 5), 5, **LOSSLESS)  # no audio track: fine
    out = tmp_path / "out"
    code, stdout, err = _run(
        ["predict", str(bad), "--out", str(out), "--checkpoint", str(work["s1"]), "--json"], capsys
    )
    assert code == 2
    summary = json.loads(stdout)
    status = {v["name"]: v for v in summary["videos"]}
    assert {n for n, v in status.items() if v["status"] == "done"} == {"good", "silent"}
    expected = {
        "text": "not a readable video",
        "corrupt": "corrupt or truncated",
        "truncated": "not a readable video",
        "tail": "truncated video",
        "sound-only": "no video stream",
        "blink": "zero-length clip",
    }
    for name, words in expected.items():
        assert status[name]["status"] == "failed", name
        assert (
            words in status[name]["error"] and str(bad / status[name]["video"].split("/")[-1]) in status[name]["error"]
        )
        assert f"aavs: failed: {status[name]['error']}" in err
        assert not (out / name).exists()
    assert sorted(p.name for p in out.iterdir()) == ["good", "silent"]  # nothing partial, no temporary folders
    silent = json.loads((out / "silent" / "timeline.json").read_text())
    assert silent["audio"] == "no audio track: predicted as silence" and silent["seconds"] == 3


def test_predict_video_api_matches_the_files(work, stage_one_out):
    from aavs.orchestrator.predict import load_models, predict_video

    record = work["records"][0]
    prediction = predict_video(work["videos"] / f"{record.uid}.mkv", load_models(checkpoint=work["s1"]))
    assert prediction.masks.shape == (record.num_frames, 224, 224) and prediction.binary
    for t in range(record.num_frames):
        on_disk = np.asarray(Image.open(stage_one_out / record.uid / "masks" / f"{t}.png")) > 0
        assert np.array_equal(on_disk, prediction.masks[t] == 1)
    timeline = json.loads((stage_one_out / record.uid / "timeline.json").read_text())["timeline"]
    assert prediction.timeline == timeline
    assert prediction.colour_masks().shape == (record.num_frames, 224, 224, 3)


# ---------------------------------------------------------------------------------- slow tests
_PEAK = """
import resource, sys
from aavs.orchestrator.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_long_clip_memory_stays_flat(work, tmp_path):
    """Peak RSS (a fresh process each) of a 95-second clip stays within 200 MB of a 10-second one's,
    with frames large enough that holding the 95-second clip's decoded frames would take ~330 MB."""
    peaks = {}
    for seconds in (10, 95):
        video = tmp_path / f"clip{seconds}.mp4"
        write_video(
            video,
            _moving_frames(seconds, 15, (240, 320)),
            15,
            options={"preset": "ultrafast", "crf": "30"},
            audio=(_tone(seconds), 16000),
            audio_codec="aac",
        )
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _PEAK,
                "predict",
                str(video),
                "--out",
                str(tmp_path / "out"),
                "--checkpoint",
                str(work["s2"]),
                "--prior-checkpoint",
                str(work["s1"]),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        peaks[seconds] = int(result.stdout.split()[-1])
    assert json.loads((tmp_path / "out" / "clip95" / "timeline.json").read_text())["seconds"] == 95
    assert peaks[95] - peaks[10] <= 200, peaks
