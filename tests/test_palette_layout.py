"""Palette, layout and metadata parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aavs.datasets.errors import InputError
from aavs.datasets.layout import (
    AVSBENCH_CLASSES,
    FRAMES_PER_SUBSET,
    MAX_CLASSES,
    VideoRecord,
    class_list_mismatch,
    class_names,
    read_label2idx,
    read_metadata,
    select_videos,
)
from aavs.datasets.palette import decode_colour_mask, encode_class_map, palette, unknown_colours
from aavs.datasets.tasks import get_task


def _voc_colour(j: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour map (bitget formulation), which the AVSBench palette is."""
    bit = lambda value, k: (value >> k) & 1  # noqa: E731
    r = g = b = 0
    c = j
    for k in range(8):
        r |= bit(c, 0) << (7 - k)
        g |= bit(c, 1) << (7 - k)
        b |= bit(c, 2) << (7 - k)
        c >>= 3
    return r, g, b


def test_palette_matches_voc_colour_map_and_known_entries():
    p = palette()
    assert MAX_CLASSES == 256 and p.shape == (256, 3) and p.dtype == np.uint8
    assert [tuple(c) for c in p] == [_voc_colour(j) for j in range(256)]
    assert tuple(p[0]) == (0, 0, 0) and tuple(p[1]) == (128, 0, 0) and tuple(p[8]) == (64, 0, 0)
    assert tuple(p[15]) == (192, 128, 128) and tuple(p[70]) == (32, 128, 128) and tuple(p[255]) == (224, 224, 192)
    assert len({tuple(c) for c in p}) == 256
    # A data set of N classes uses the first N colours, whatever N.
    for n in (2, 9, 71):
        np.testing.assert_array_equal(palette(n), p[:n])
    for n in (0, 257):
        with pytest.raises(ValueError, match="1..256 classes"):
            palette(n)


def test_decode_encode_round_trip_and_unknown_colours():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 256, size=(17, 23))
    rgb = encode_class_map(classes)
    assert rgb.dtype == np.uint8 and rgb.shape == (17, 23, 3)
    np.testing.assert_array_equal(decode_colour_mask(rgb), classes)
    rgb[0, 0] = (255, 255, 255)
    rgb[1, :3] = (1, 2, 3)
    decoded = decode_colour_mask(rgb)
    assert decoded.dtype == np.int64 and decoded[0, 0] == -1 and (decoded[1, :3] == -1).all()
    assert unknown_colours(rgb) == [((1, 2, 3), 3), ((255, 255, 255), 1)]
    with pytest.raises(ValueError, match="0..255"):
        encode_class_map(np.array([[256]]))


def test_decoding_knows_only_the_data_classes():
    rgb = encode_class_map(np.array([[0, 1, 8, 9, 70]]))
    np.testing.assert_array_equal(decode_colour_mask(rgb, 71), [[0, 1, 8, 9, 70]])
    np.testing.assert_array_equal(decode_colour_mask(rgb, 9), [[0, 1, 8, -1, -1]])  # a 9-class data set
    assert unknown_colours(rgb, 9) == [((32, 128, 128), 1), ((192, 0, 0), 1)]  # classes 70 and 9 (ties by colour)
    assert [tuple(palette()[c]) for c in (70, 9)] == [(32, 128, 128), (192, 0, 0)]


def test_video_record_paths_and_annotated_frames(tmp_path):
    r = VideoRecord("abc", "v1s", "train")
    assert r.num_frames == 5 and r.annotated_frames == (0,)
    assert r.frame_path(tmp_path, 3) == tmp_path / "v1s" / "abc" / "frames" / "3.jpg"
    assert r.mask_path(tmp_path, 0) == tmp_path / "v1s" / "abc" / "labels_rgb" / "0.png"
    assert r.audio_path(tmp_path) == tmp_path / "v1s" / "abc" / "audio.wav"
    assert VideoRecord("x", "v1s", "val").annotated_frames == tuple(range(5))
    assert VideoRecord("x", "v2", "train").annotated_frames == tuple(range(10))
    assert VideoRecord("x", "v1m", "train").num_frames == FRAMES_PER_SUBSET["v1m"] == 5


def test_read_metadata_and_select_videos(synth_root):
    records = read_metadata(synth_root)
    assert len(records) == 3 * 3 * 2
    assert records[0] == VideoRecord("syn-v1s-train-0000", "v1s", "train")
    assert [r.uid for r in select_videos(synth_root, "s4", "test")] == ["syn-v1s-test-0000", "syn-v1s-test-0001"]
    assert {r.subset for r in select_videos(synth_root, "ms3", "val")} == {"v1m"}
    for task in ("avss", "avss-binary"):
        avss = select_videos(synth_root, task, "train")
        assert len(avss) == 6 and {r.subset for r in avss} == set(get_task(task).subsets) == {"v1s", "v1m", "v2"}
        assert {r.split for r in avss} == {"train"}
    with pytest.raises(InputError, match="unknown task 'seg'"):
        select_videos(synth_root, "seg", "test")
    with pytest.raises(InputError, match="unknown split 'dev'"):
        select_videos(synth_root, "s4", "dev")


def _write_csv(root: Path, text: str) -> None:
    root.mkdir(exist_ok=True)
    (root / "metadata.csv").write_text(text)


@pytest.mark.parametrize(
    "text, match",
    [
        ("uid,split,label\na,train,v1s\nb,dev,v1s\n", r"metadata.csv:3: column split: unknown split 'dev'"),
        ("uid,split,label\na,train,v3\n", r"metadata.csv:2: column label: unknown label 'v3'"),
        (
            "uid,split,label\na,train,v1s\na,test,v1m\n",
            r"metadata.csv:3: column uid: duplicate uid 'a' \(first on line 2\)",
        ),
        ("uid,split,label\n../x,train,v1s\n", r"metadata.csv:2: column uid: '../x' is not a plain folder name"),
        ("uid,split,label\n/abs,train,v1s\n", r"metadata.csv:2: column uid: '/abs' is not a plain folder name"),
        ("uid,split\na,train\n", r"metadata.csv: column\(s\) label missing from the header"),
    ],
)
def test_read_metadata_names_row_and_column(tmp_path, text, match):
    _write_csv(tmp_path, text)
    with pytest.raises(InputError, match=match):
        read_metadata(tmp_path)


def test_read_metadata_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"metadata.csv is missing"):
        read_metadata(tmp_path)


def test_read_label2idx(synth_root, tmp_path):
    mapping = read_label2idx(synth_root)
    assert len(mapping) == 9 and next(iter(mapping)) == "background" and mapping["background"] == 0
    assert sorted(mapping.values()) == list(range(9))
    # Any class count from 2 to MAX_CLASSES, background first and indices 0..N-1 (in any key order).
    for n in (2, 71, 256):
        mapping = {"background": 0, **{f"c{i}": i for i in range(n - 1, 0, -1)}}
        (tmp_path / "label2idx.json").write_text(json.dumps(mapping))
        assert read_label2idx(tmp_path) == mapping
        assert class_names(tmp_path) == ("background", *(f"c{i}" for i in range(1, n)))
    for mapping in ({"background": 0}, {"background": 0, **{f"c{i}": i for i in range(1, 257)}}):
        (tmp_path / "label2idx.json").write_text(json.dumps(mapping))
        with pytest.raises(InputError, match=rf"label2idx.json: has {len(mapping)} classes, expected 2..256"):
            read_label2idx(tmp_path)
    (tmp_path / "label2idx.json").write_text(json.dumps({"background": 0, "dog": 1, "cat": 3}))
    with pytest.raises(InputError, match=r"indices are not 0..2, each once"):
        read_label2idx(tmp_path)
    (tmp_path / "label2idx.json").write_text(json.dumps({f"c{i}": i for i in range(71)}))
    with pytest.raises(InputError, match=r"first class must be 'background' with index 0 \(found 'c0'\)"):
        read_label2idx(tmp_path)
    (tmp_path / "label2idx.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_label2idx(tmp_path)


def test_avsbench_class_list_and_mismatch_message():
    assert len(AVSBENCH_CLASSES) == len(set(AVSBENCH_CLASSES)) == 71
    assert AVSBENCH_CLASSES[:3] == ("background", "accordion", "airplane") and AVSBENCH_CLASSES[-1] == "woman"
    assert class_list_mismatch("a", AVSBENCH_CLASSES, "b", list(AVSBENCH_CLASSES)) is None
    message = class_list_mismatch("checkpoint X", ("background", "dog"), "data D", AVSBENCH_CLASSES)
    assert message == (
        "checkpoint X has 2 classes [background, dog] but data D has 71 classes [background, "
        "accordion, airplane, axe, baby, bassoon, bell, bird, ... (63 more)] (class 1 is 'dog' in "
        "one, 'accordion' in the other)"
    )
