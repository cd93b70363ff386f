"""tests/benchmarks/bench_loader.py at --scale 0.001, so that the benchmark cannot rot: it generates an
AVSBench-shaped set, builds the frame store, checks store items against decoded ones and times an
epoch of each loader. The figures themselves are measured at full size (docs/scale.md), not here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aavs.datasets.avsbench import source_frames
from aavs.datasets.layout import select_videos

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
import bench_loader  # noqa: E402


def test_bench_loader_smoke(tmp_path):
    out = tmp_path / "report.json"
    report = bench_loader.main(
        ["--scale", "0.001", "--work", str(tmp_path), "--size", "64", "--workers", "0", "--json", str(out)]
    )
    assert json.loads(out.read_text()) == report
    records = select_videos(Path(report["data"]), "avss", "train")
    frames = sum(r.num_frames for r in records)  # every item of the epoch, both loaders
    assert report["decode"]["frames"] == report["store"]["frames"] == frames
    assert report["items_compared"] >= 1
    rows = sum(len(set(source_frames(r, True))) for r in records)  # v1s training videos: frame 0 once
    assert report["store_bytes"] == rows * (64 * 64 * 3 + 224 * 224)  # frames at 64 px, class maps
