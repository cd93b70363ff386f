"""`aavs data check` on a synthetic set broken in each way it must report."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile
from PIL import Image

from aavs.datasets.check import check_data_root
from aavs.datasets.palette import palette
from aavs.orchestrator.cli import main

V1S = "v1s/syn-v1s-test-0000"
V2 = "v2/syn-v2-val-0001"


def _only(problems, fragment):
    hits = [p for p in problems if fragment in p.path]
    assert hits, f"no problem names {fragment}: {problems}"
    return hits


def _append_row(root, row):
    with open(root / "metadata.csv", "a") as f:
        f.write(row + "\n")


def test_missing_root_and_top_level_files(tmp_path, synth_copy):
    (problem,) = check_data_root(tmp_path / "nothing")
    assert problem.path.endswith("nothing") and "data root missing" in problem.message
    (synth_copy / "metadata.csv").unlink()
    (synth_copy / "label2idx.json").unlink()
    problems = check_data_root(synth_copy)
    assert {p.path.rsplit("/", 1)[-1] for p in problems} == {"metadata.csv", "label2idx.json"}
    assert all("missing" in p.message for p in problems)


@pytest.mark.parametrize(
    "row, message",
    [
        ("x1,x1,0,0,,dev,v1s", "column split: unknown split 'dev'"),
        ("x2,x2,0,0,,test,v9", "column label: unknown label 'v9'"),
        (
            "syn-v1s-test-0000,syn-v1s-test-0000,0,0,,test,v1s",
            "column uid: duplicate uid 'syn-v1s-test-0000' (first on line",
        ),
        ("x3,..,0,0,,test,v1s", "column uid: '..' is not a plain folder name"),
        ("x4,a/b,0,0,,test,v1s", "column uid: 'a/b' is not a plain folder name"),
        ("x5,/etc,0,0,,test,v1s", "column uid: '/etc' is not a plain folder name"),
    ],
)
def test_bad_metadata_rows(synth_copy, row, message):
    _append_row(synth_copy, row)
    problems = check_data_root(synth_copy)
    (problem,) = problems
    assert problem.path == f"{synth_copy / 'metadata.csv'}:20" and message in problem.message


def test_bad_label2idx(synth_copy):
    path = synth_copy / "label2idx.json"
    mapping = json.loads(path.read_text())
    del mapping["violin"]
    path.write_text(json.dumps(mapping))
    problems = check_data_root(synth_copy)
    assert {p.path for p in problems} == {str(path)}
    assert [p.message for p in problems] == ["indices are not 0..7, each once"]
    path.write_text(json.dumps({"background": 0}))
    (problem,) = check_data_root(synth_copy)
    assert problem.message == "has 1 classes, expected 2..256 (background + at least one source)"
    path.write_text(json.dumps({**{"dog": 0}, **{f"c{i}": i for i in range(1, 9)}}))
    (problem,) = check_data_root(synth_copy)
    assert "first class must be 'background'" in problem.message


def test_any_class_count_is_accepted(synth_copy):
    path = synth_copy / "label2idx.json"
    path.write_text(json.dumps({"background": 0, **{f"c{i}": i for i in range(1, 71)}}))  # AVSBench's count
    assert check_data_root(synth_copy) == []


def test_mask_colour_of_a_class_the_data_lacks(synth_copy):
    path = synth_copy / V1S / "labels_rgb" / "0.png"
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[:4, :5] = palette()[9]  # a palette colour, but the synthetic data has classes 0..8 only
    Image.fromarray(rgb).save(path)
    (problem,) = check_data_root(synth_copy)
    assert problem.path == str(path)
    assert problem.message == (
        "not an AVSBench palette colour of the 9 classes of label2idx.json: "
        f"colour {tuple(int(v) for v in palette()[9])} in 20 pixels"
    )
    (synth_copy / "label2idx.json").write_text(json.dumps({"background": 0, **{f"c{i}": i for i in range(1, 10)}}))
    assert check_data_root(synth_copy) == []  # a tenth class makes it valid


@pytest.mark.parametrize("per_worker", [10_000, 1], ids=["one-process", "a-process-per-core"])
def test_missing_and_unreadable_files(synth_copy, monkeypatch, per_worker):
    """The same problems whether one process decodes or one per core."""
    monkeypatch.setattr("aavs.datasets.check.PER_WORKER", per_worker)
    video = synth_copy / V1S
    (video / "frames" / "3.jpg").unlink()
    (video / "frames" / "1.jpg").write_bytes((video / "frames" / "1.jpg").read_bytes()[:300])  # truncated
    (video / "labels_rgb" / "2.png").unlink()
    (video / "labels_rgb" / "4.png").write_bytes(b"not a png")
    (synth_copy / V2 / "audio.wav").unlink()
    problems = check_data_root(synth_copy)
    assert "frame missing" in _only(problems, "frames/3.jpg")[0].message
    assert "frame not readable" in _only(problems, "frames/1.jpg")[0].message
    assert "mask missing" in _only(problems, "labels_rgb/2.png")[0].message
    assert "mask not readable" in _only(problems, "labels_rgb/4.png")[0].message
    assert "audio missing" in _only(problems, f"{V2}/audio.wav")[0].message
    assert len(problems) == 5


def test_missing_video_folder(synth_copy):
    import shutil

    shutil.rmtree(synth_copy / V2)
    (problem,) = check_data_root(synth_copy)
    assert problem.path.endswith(V2) and "video folder missing" in problem.message


def test_mask_colour_not_in_palette(synth_copy):
    path = synth_copy / V1S / "labels_rgb" / "0.png"
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[:10, :20] = (255, 255, 255)
    rgb[50, :7] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    (problem,) = check_data_root(synth_copy)
    assert problem.path == str(path)
    assert (
        "colour (255, 255, 255) in 200 pixels" in problem.message and "colour (1, 2, 3) in 7 pixels" in problem.message
    )


def test_frame_and_mask_counts(synth_copy):
    video = synth_copy / V1S
    (video / "frames" / "5.jpg").write_bytes((video / "frames" / "0.jpg").read_bytes())
    (video / "labels_rgb" / "7.png").write_bytes((video / "labels_rgb" / "0.png").read_bytes())
    train = synth_copy / "v1s/syn-v1s-train-0000"
    (train / "labels_rgb" / "0.png").unlink()
    problems = check_data_root(synth_copy)
    assert "unexpected frame: a v1s video has 5 frames (0..4)" in _only(problems, "frames/5.jpg")[0].message
    assert "unexpected mask" in _only(problems, "labels_rgb/7.png")[0].message
    (missing,) = _only(problems, "syn-v1s-train-0000/labels_rgb/0.png")
    assert "v1s train needs masks 0)" in missing.message
    assert len(problems) == 3


def test_bad_audio(synth_copy):
    short = synth_copy / V2 / "audio.wav"
    soundfile.write(short, np.zeros(int(2.5 * 16000)), 16000)
    broken = synth_copy / V1S / "audio.wav"
    broken.write_bytes(b"RIFF" + b"\0" * 40)
    problems = check_data_root(synth_copy)
    assert "audio lasts 2.50 s, far shorter than the 10 s clip" in _only(problems, f"{V2}/audio.wav")[0].message
    assert "audio not decodable" in _only(problems, f"{V1S}/audio.wav")[0].message
    assert len(problems) == 2


def _digest(root):
    return hashlib.sha256(
        b"".join(p.as_posix().encode() + p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())
    ).hexdigest()


def test_every_problem_is_reported_and_nothing_is_modified(synth_copy, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # the title holds the temp folder's path: keep it on one line
    _append_row(synth_copy, "x,x,0,0,,nope,v1s")
    (synth_copy / V1S / "frames" / "0.jpg").unlink()
    (synth_copy / V2 / "labels_rgb" / "9.png").unlink()
    before = _digest(synth_copy)
    problems = check_data_root(synth_copy)
    assert len(problems) == 3 and _digest(synth_copy) == before

    assert main(["data", "check", str(synth_copy), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["data"] == str(synth_copy) and report["problems"] == [p.as_dict() for p in problems]

    assert main(["data", "check", str(synth_copy)]) == 2
    table = capsys.readouterr().out
    assert "3 problem(s)" in table and "9.png" in table


def test_cli_clean(synth_root, capsys):
    assert main(["data", "check", str(synth_root)]) == 0
    assert "clean, no problems found" in capsys.readouterr().out
    assert main(["data", "check", str(synth_root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"data": str(synth_root), "problems": []}
