"""`aavs predict --ray`: the Ray Data pipeline writes what the in-process run writes, byte for byte.

A module of its own, apart from test_predict.py whose fixtures it shares: the modules that start Ray run
in one of `make test`'s two processes (tests/README.md), and the other predict tests need not wait for it.
"""

from __future__ import annotations

import json

import pytest
from test_predict import _png_tree, _run, two_stage_out, work  # noqa: F401  (work, two_stage_out: fixtures)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_pipeline_writes_what_the_local_run_writes(work, two_stage_out, ray_cluster, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "ray"
    code, stdout, _ = _run(
        [
            "predict",
            str(work["videos"]),
            "--out",
            str(out),
            "--checkpoint",
            str(work["s2"]),
            "--prior-checkpoint",
            str(work["s1"]),
            "--ray",
            "--json",
        ],
        capsys,
    )
    assert code == 0 and json.loads(stdout)["done"] == len(work["records"])
    for record in work["records"]:
        assert _png_tree(out / record.uid) == _png_tree(two_stage_out / record.uid), record.uid
        for name in ("timeline.json", "overlay.mp4"):
            assert (out / record.uid / name).read_bytes() == (two_stage_out / record.uid / name).read_bytes(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
