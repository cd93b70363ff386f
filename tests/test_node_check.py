"""Before any trial on Ray, every node that runs trials sees the data root and the results folder as the
driver does (aavs.orchestrator.experiment.node_check), on a real Ray cluster in this machine: a head
without CPUs (ray.cluster_utils.Cluster), a one-CPU node beside it, and a one-CPU node started with
``ray start --address`` in a mount namespace of its own (``unshare --mount``).

That node shares this machine's filesystem but for two paths: over the shared synthetic data root a
stale copy of it (one v2 video short) is bind-mounted, and over a results folder an empty folder, as on a
machine that mounts another copy of the data and lacks the shared results storage. Where mount
namespaces are not allowed, a plain node takes its place and the test of a node that differs is skipped."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from conftest import tiny_spec

from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment.node_check import check_nodes, trial_nodes
from aavs.orchestrator.experiment.spec import parse_spec

pytestmark = [pytest.mark.slow, pytest.mark.ray]


class Nodes(NamedTuple):
    plain: str  # the id of the node that sees what the driver sees
    odd: str | None  # the node in its own mount namespace (None where namespaces are not allowed)
    odd_results: Path  # a results folder the odd node sees empty


def _unshare(*args: str) -> list[str]:
    return ["unshare", "--mount", *([] if os.geteuid() == 0 else ["--map-root-user"]), *args]


def _stale_copy(root: Path, to: Path) -> Path:
    """``root`` copied without its last v2 video (its metadata row and its folder)."""
    shutil.copytree(root, to)
    with open(root / "metadata.csv", newline="") as f:
        rows = list(csv.reader(f))
    dropped = next(r for r in reversed(rows) if r[-1] == "v2")
    (to / "metadata.csv").write_text("".join(",".join(r) + "\n" for r in rows if r is not dropped))
    shutil.rmtree(to / "v2" / dropped[1])
    return to


@pytest.fixture(scope="module")
def nodes(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    import ray
    from ray.cluster_utils import Cluster

    folder = tmp_path_factory.mktemp("node-check")
    odd_results, empty = folder / "results", folder / "empty"
    odd_results.mkdir()
    empty.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    odd_process = None
    try:
        if shutil.which("unshare") and subprocess.run(_unshare("true"), capture_output=True).returncode == 0:
            stale = _stale_copy(synth_root, folder / "stale")
            script = (
                f"mount --bind {stale} {synth_root} && mount --bind {empty} {odd_results} && "
                f"exec {Path(sys.executable).parent / 'ray'} start --address={cluster.address} --num-cpus=1 --block"
            )
            odd_process = subprocess.Popen(
                _unshare("sh", "-c", script),
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        plain = cluster.add_node(num_cpus=1)  # while the namespaced node starts
        if odd_process is None:
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        deadline = time.time() + 120
        while len(alive := [n["NodeID"] for n in ray.nodes() if n["Alive"]]) < 3 and time.time() < deadline:
            assert odd_process is None or odd_process.poll() is None, "the namespaced `ray start` ended"
            time.sleep(0.2)
        others = set(alive) - {cluster.head_node.node_id, plain.node_id}
        yield Nodes(plain.node_id, others.pop() if odd_process else None, odd_results)
    finally:
        if odd_process is not None:
            os.killpg(odd_process.pid, signal.SIGTERM)
            odd_process.wait(timeout=60)
        ray.shutdown()
        cluster.shutdown()


def _spec(data_root: Path, **compute) -> dict:
    return tiny_spec(data={"root": str(data_root), "synthetic": None}, compute=compute, stages={"semantic": None})


def test_every_node_that_runs_trials_sees_the_same_data_and_results(nodes, synth_root, tmp_path):
    data_root = Path(shutil.copytree(synth_root, tmp_path / "data"))  # a path no node sees otherwise
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    spec = parse_spec(_spec(data_root), "test")
    checked = check_nodes(spec, data_root, results_dir)
    assert len(checked) == 2 and nodes.plain in checked  # the head, without CPUs, runs no trial
    assert list(results_dir.iterdir()) == []  # the marker and the nodes' probes are gone
    # A trial of several workers is driven from a controller that any node may host: the head too.
    assert len(trial_nodes(parse_spec(_spec(data_root, workers_per_trial=2, strategy="ddp"), "test"))) == 3


def test_a_node_that_sees_other_data_and_other_results_storage_is_named(nodes, synth_root, tmp_path, capsys):
    import ray

    if nodes.odd is None:
        pytest.skip("needs a mount namespace (unshare --mount) to show one node another folder at the same path")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(_spec(synth_root), sort_keys=False))
    status = main(["run", str(tmp_path / "spec.yaml"), "--results", str(nodes.odd_results)])
    message = capsys.readouterr().err
    assert status == 2, message
    assert nodes.plain not in message  # only the odd node is named, on each of its lines
    (address,) = [n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == nodes.odd]
    lines = [line for line in message.splitlines() if line.startswith("  ")]
    assert len(lines) == 3 and all(f"node {nodes.odd} ({address}, host {socket.gethostname()}): " in x for x in lines)
    data, results = [x for x in lines if f"data.root {synth_root}: " in x], [x for x in lines if "results folder" in x]
    assert "metadata.csv differs" in data[0] and "v2/ holds" in data[1]
    assert results[0].endswith(f"results folder {nodes.odd_results / 'tiny'}: missing on this node")
    assert not (nodes.odd_results / "tiny" / "localize").exists()  # stopped before any trial
