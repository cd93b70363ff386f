"""A node lost mid-search, on a real two-node Ray cluster in this machine (ray.cluster_utils.Cluster:
a head without CPUs and two one-CPU nodes sharing this filesystem, as a cluster shares its results
storage). A random search of three trials runs two at a time, one on each node; the node running t000
is removed after t000's first epoch. Tune retries the trial on the other node (compute.max_failures),
which resumes from the trial's last epoch, and the search goes on there: it ends as the uninterrupted
run did, and stage two follows. A trial's process killed on a node that lives on (the out-of-memory
killer) takes the same way: Tune sees the trial's actor die and retries it (compute.max_failures),
train_func resumes from checkpoints/last.

Both tests read one run (the module's fixture): the reference, uninterrupted, runs stage one in this
process (``--local`` drives the same seeded searcher: the same trials in the same order), before the
cluster starts. They are ``faults`` tests (about a minute alone on 2 cores, 1.5 to 2 in `make test`'s
company): `make test-faults` runs them, as it runs the other kills of the fault matrix."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from conftest import tiny_spec

from aavs.models.registry import checkpoint_digest
from aavs.orchestrator.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.faults]

NAME = "node-loss"
SPEC = tiny_spec(
    name=NAME,
    data={"synthetic": {"videos_per_split": 1}},
    compute={"max_failures": 1},
    stages={
        "localize": {
            "epochs": 2,
            "params": {"lr": {"loguniform": [3.0e-4, 3.0e-3]}},
            "tune": {"search": "random", "scheduler": "fifo", "seed": 7, "num_samples": 3, "max_concurrent": 2},
        },
        "semantic": {"epochs": 1},
    },
)


class LostNodeRun(NamedTuple):
    results: Path  # the run on the cluster
    reference: Path  # stage one, uninterrupted (--local)
    lost: str  # the id of the node removed


def _run(spec: dict, folder: Path, *options: str) -> Path:
    folder.mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["run", str(folder / "spec.yaml"), *options, "--results", str(folder / "results")]) == 0
    return folder / "results" / NAME


@pytest.fixture(scope="module")
def lost_node_run(tmp_path_factory: pytest.TempPathFactory) -> LostNodeRun:
    import ray
    from ray.cluster_utils import Cluster

    folder = tmp_path_factory.mktemp("node-loss")
    reference = _run({**SPEC, "stages": SPEC["stages"][:1]}, folder / "reference", "--local")
    # A node is found dead after 3 failed health checks a second apart (Ray's default: 5, 3 s apart): a
    # removed node's raylet refuses them at once, so the retry starts sooner; a slow live one has each
    # check's own timeout.
    checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": checks}
    )
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    trial = folder / "run" / "results" / NAME / "localize" / "trials" / "t000"
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
        results = _run(SPEC, folder / "run")
    finally:
        remover.join()
        ray.shutdown()
        cluster.shutdown()
    assert lost
    return LostNodeRun(results, reference, lost[0])


def _metrics(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]


def test_a_trial_on_a_lost_node_finishes_on_the_other_from_its_last_epoch(lost_node_run):
    trial = lost_node_run.results / "localize" / "trials" / "t000"
    assert json.loads((trial / "node.json").read_text())["node_id"] != lost_node_run.lost  # finished elsewhere
    rows = _metrics(trial)
    assert [r["epoch"] for r in rows] == [0, 1]
    log = (trial / "log.txt").read_text()  # each epoch trained once: resumed at its last epoch, not from 0
    assert [log.count(f"reporter: epoch {e} (") for e in (1, 2)] == [1, 1]
    reference_trial = lost_node_run.reference / "localize" / "trials" / "t000"
    assert [r["val/miou"] for r in rows] == [r["val/miou"] for r in _metrics(reference_trial)]  # every epoch's
    assert checkpoint_digest(trial / "best") == checkpoint_digest(reference_trial / "best")


def test_a_search_that_loses_a_node_ends_with_the_uninterrupted_runs_best_trial_and_stage_two_follows(
    lost_node_run,
):
    stage, reference_stage = (root / "localize" for root in (lost_node_run.results, lost_node_run.reference))
    finals = {t.name: _metrics(t) for t in sorted((stage / "trials").iterdir())}
    reference_finals = {t.name: _metrics(t) for t in sorted((reference_stage / "trials").iterdir())}
    assert list(finals) == list(reference_finals) == ["t000", "t001", "t002"]
    for name, rows in finals.items():
        assert [r["epoch"] for r in rows] == [0, 1]
        assert rows[-1]["val/miou"] == pytest.approx(reference_finals[name][-1]["val/miou"], abs=1e-6)
    best, reference = (json.loads((s / "best.json").read_text()) for s in (stage, reference_stage))
    assert (best["trial_id"], best["params"]) == (reference["trial_id"], reference["params"])
    assert best["value"] == pytest.approx(reference["value"], abs=1e-6)
    semantic = lost_node_run.results / "semantic"
    assert json.loads((semantic / "best.json").read_text())["trial_id"] == "t000"
    assert [r["epoch"] for r in _metrics(semantic / "trials" / "t000")] == [0]
    assert json.loads((semantic / "trials" / "t000" / "config.json").read_text())["init_from"] == best["checkpoint"]
