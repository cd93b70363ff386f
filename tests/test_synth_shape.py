"""The AVSBench-shaped synthetic set (``aavs data synth --shape avsbench``): counts, sizes, audio, resume."""

from __future__ import annotations

import collections
import shutil

import soundfile
from PIL import Image

from aavs.datasets.check import check_data_root
from aavs.datasets.layout import AVSBENCH_CLASSES, read_label2idx, read_metadata
from aavs.datasets.synth_shape import write_shaped_avsbench


def test_shaped_set_at_a_small_scale_and_its_resume(tmp_path):
    root = write_shaped_avsbench(tmp_path / "data", seed=0, scale=0.0005, workers=1)

    # AVSBench's published videos per split (S4: 3,452 / 740 / 740; MS3: 296 / 64 / 64; AVSBench-semantic:
    # 8,498 / 1,304 / 1,554 over all three subsets, so v2 is the rest) times 0.0005, half up, at least 1.
    expected = {
        ("v1s", "train"): 2,  # 3452 * 0.0005 = 1.726
        ("v1s", "val"): 1,  # 740 * 0.0005 = 0.37
        ("v1s", "test"): 1,
        ("v1m", "train"): 1,  # 296 * 0.0005 = 0.148
        ("v1m", "val"): 1,  # 64 * 0.0005 = 0.032
        ("v1m", "test"): 1,
        ("v2", "train"): 2,  # (8498 - 3452 - 296) * 0.0005 = 2.375
        ("v2", "val"): 1,  # (1304 - 740 - 64) * 0.0005 = 0.25
        ("v2", "test"): 1,  # (1554 - 740 - 64) * 0.0005 = 0.375
    }
    records = read_metadata(root)
    assert collections.Counter((r.subset, r.split) for r in records) == expected
    assert list(read_label2idx(root)) == list(AVSBENCH_CLASSES) and len(AVSBENCH_CLASSES) == 71

    sizes = {  # the stated mix: AVSBench-object's 224 x 224, and YouTube's sizes for v2
        "v1s": {(224, 224)},
        "v1m": {(224, 224)},
        "v2": {(1280, 720), (640, 360), (480, 360), (854, 480), (1920, 1080)},
    }
    for r in records:
        with Image.open(r.frame_path(root, 0)) as first:
            size = first.size
        assert size in sizes[r.subset]
        for i in range(r.num_frames):
            with Image.open(r.frame_path(root, i)) as frame:
                assert frame.format == "JPEG" and frame.size == size
        assert sorted(p.name for p in (r.video_dir(root) / "labels_rgb").iterdir()) == [
            f"{i}.png" for i in r.annotated_frames
        ]
        for i in r.annotated_frames:
            with Image.open(r.mask_path(root, i)) as mask:
                assert mask.format == "PNG" and mask.mode == "RGB" and mask.size == size
        info = soundfile.info(str(r.audio_path(root)))
        assert (info.samplerate, info.channels, info.subtype, info.duration) == (16000, 2, "PCM_16", r.num_frames)
    assert check_data_root(root) == []

    # A killed run: one video's folder gone (its presence is the completion marker), a half-written copy
    # in the staging folder. The rerun writes that video again, the same bytes, and no other file.
    def files():
        return {
            p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for subset in ("v1s", "v1m", "v2")
            for p in sorted((root / subset).rglob("*"))
            if p.is_file()
        }

    before = files()
    lost = next(r for r in records if r.subset == "v2")
    shutil.rmtree(lost.video_dir(root))
    (root / ".staging" / lost.uid / "frames").mkdir(parents=True)
    (root / ".staging" / lost.uid / "frames" / "0.jpg").write_bytes(b"half")
    write_shaped_avsbench(root, seed=0, scale=0.0005, workers=1)
    after = files()
    assert after.keys() == before.keys() and not (root / ".staging").exists()
    rewritten = {k for k in after if after[k][0] != before[k][0]}
    assert rewritten == {k for k in after if k.startswith(f"v2/{lost.uid}/")}
    assert all(after[k][1] == before[k][1] for k in after)
