"""A node lost mid-trial, on a real two-node Ray cluster in this machine (ray.cluster_utils.Cluster:
a head without CPUs and two one-CPU nodes sharing this filesystem, as a cluster shares its results
storage). The node running the trial is removed after the trial's first epoch; Tune retries the
trial on the other node (compute.max_failures), which resumes from the trial's last epoch. A trial's
process killed on a node that lives on (the out-of-memory killer) takes the same way: Tune sees the
trial's actor die and retries it (compute.max_failures), train_func resumes from checkpoints/last."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from conftest import tiny_spec

from aavs.orchestrator.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SPEC = tiny_spec(
    name="node-loss",
    compute={"max_failures": 1},
    stages={"localize": {"epochs": 4, "max_videos": 2, "params": {"lr": 1.0e-3}}, "semantic": None},
)


def test_a_trial_on_a_lost_node_finishes_on_the_other_from_its_last_epoch(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    assert main(["run", str(tmp_path / "spec.yaml"), "--local", "--results", str(tmp_path / "reference")]) == 0

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    trial = tmp_path / "results" / "node-loss" / "localize" / "trials" / "t000"
    lost = []

    def remove_the_trials_node() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not (trial / "metrics.jsonl").is_file():
            time.sleep(0.02)
        node_id = json.loads((trial / "node.json").read_text())["node_id"]
        (node,) = [n for n in nodes if n.node_id == node_id]
        cluster.remove_node(node, allow_graceful=False)
        lost.append(node_id)

    remover = threading.Thread(target=remove_the_trials_node)
    remover.start()
    try:
        assert main(["run", str(tmp_path / "spec.yaml"), "--results", str(tmp_path / "results")]) == 0
    finally:
        remover.join()
        ray.shutdown()
        cluster.shutdown()
    assert lost
    assert json.loads((trial / "node.json").read_text())["node_id"] != lost[0]  # finished elsewhere
    rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert f"resumed {trial} at epoch " in (trial / "log.txt").read_text()
    reference_trial = tmp_path / "reference" / "node-loss" / "localize" / "trials" / "t000"
    assert [r["val/miou"] for r in rows] == [  # every epoch's numbers, not only the best's
        json.loads(line)["val/miou"] for line in (reference_trial / "metrics.jsonl").read_text().splitlines()
    ]
    best, reference = (
        json.loads((root / "node-loss" / "localize" / "best.json").read_text())
        for root in (tmp_path / "results", tmp_path / "reference")
    )
    assert (best["value"], best["checkpoint_sha256"]) == (reference["value"], reference["checkpoint_sha256"])
