"""A simulated GPU cluster: a Ray cluster in this machine (ray.cluster_utils.Cluster) whose head has no
resources and whose two nodes each declare 2 GPUs they do not have. Trials ask for
``gpus_per_worker: 1``: Ray places them by those GPUs, sets ``CUDA_VISIBLE_DEVICES`` to the ids it
assigned, and the network trains on the CPU (CUDA is absent). Every rank records where it ran
(node.json, node.rankN.json); a two-worker DDP trial takes the gloo backend, since Ray Train's default
for workers with GPUs, NCCL, fails without CUDA, and ``compute.placement: spread`` puts its ranks on two
nodes. The GPUs are the only thing simulated: they cannot exist on this machine."""

from __future__ import annotations

import shutil
import tempfile
from itertools import combinations
from pathlib import Path

import pytest
import yaml
from conftest import keep_ray_address_file, tiny_spec

from aavs.datasets.errors import InputError
from aavs.orchestrator import results
from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment.spec import parse_spec

GPU = {"gpus_per_worker": 1, "cpus_per_worker": 1}
# Stage one: an optuna search under ASHA, 8 one-epoch trials, 4 at a time (as many as there are GPUs);
# stage two from its best trial (the tiny spec's prior and init_from), one trial.
SEARCH = tiny_spec(
    name="gpu-search",
    compute=GPU,
    stages={
        "localize": {
            "epochs": 1,
            "params": {"lr": {"loguniform": [1.0e-4, 3.0e-3]}},
            "tune": {"num_samples": 8, "max_concurrent": 4, "search": "optuna", "scheduler": "asha"},
        },
        "semantic": {"epochs": 1},
    },
)
# One two-worker DDP trial, its workers spread over the nodes.
DDP = tiny_spec(
    name="gpu-ddp",
    compute={**GPU, "workers_per_trial": 2, "strategy": "ddp", "placement": "spread"},
    stages={"localize": {"epochs": 1, "params": {"lr": 1.0e-3}}, "semantic": None},
)


@pytest.fixture(scope="module")
def gpu_nodes():
    """A head without resources and two nodes of 2 (declared) GPUs and 4 CPUs each, on this machine;
    yields their node ids. The address file that a bare ``ray.init()`` on this machine reads is put
    back as it was: other Ray users here never connect to this cluster."""
    import ray
    from ray.cluster_utils import Cluster

    restore_address_file = keep_ray_address_file()
    temp_dir = tempfile.mkdtemp(prefix="aavs-gpu-", dir="/tmp")
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False}
    )
    try:
        restore_address_file()
        nodes = [cluster.add_node(num_cpus=4, num_gpus=2, temp_dir=temp_dir) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield {node.node_id for node in nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()
        restore_address_file()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic AVSBench of one video per subset and split, for both runs: half the validation, test,
    mask export and embedding work of the tiny spec's two (9 trials validate, on 2 cores)."""
    from aavs.datasets.synth import write_synthetic_avsbench

    return write_synthetic_avsbench(tmp_path_factory.mktemp("gpu-data") / "data", videos_per_split=1, seed=0)


def _run(spec: dict, data: Path, folder: Path) -> Path:
    """``aavs run`` of ``spec`` on the data root ``data``; its results folder."""
    (folder / "spec.yaml").write_text(yaml.safe_dump({**spec, "data": {"root": str(data)}}, sort_keys=False))
    assert main(["run", str(folder / "spec.yaml"), "--results", str(folder / "results")]) == 0
    return folder / "results" / spec["name"]


def _ranks(trial: Path) -> list[results.NodeRecord]:
    """The trial's node records, rank by rank, as long as they go on."""
    records = []
    while (record := results.read_node(trial, len(records))) is not None:
        records.append(record)
    return records


@pytest.mark.slow
@pytest.mark.ray
def test_a_search_on_gpu_nodes_places_each_trial_on_a_gpu_of_its_own_then_stage_two_runs_from_its_best(
    gpu_nodes, data_root, tmp_path
):
    root = _run(SEARCH, data_root, tmp_path)
    trials = results.trial_dirs(root / "localize") + results.trial_dirs(root / "semantic")
    assert len(trials) == 9
    used = []  # (node, GPU id, start, end) of each trial
    for trial in trials:
        (rank,) = _ranks(trial)
        assert rank.node_id in gpu_nodes, trial
        assert rank.gpu_ids is not None and len(rank.gpu_ids) == 1 and rank.gpu_ids[0] in ("0", "1"), trial
        assert rank.cuda_visible_devices == rank.gpu_ids[0], trial
        assert rank.backend is None, trial  # one process
        # A trial that Tune stopped (ASHA stops every trial at its last report) had no time to say where
        # accelerate computed; one that ended by itself did: the CPU (CUDA is absent) without a group.
        assert (rank.device, rank.distributed) in ((None, None), ("cpu", "NO")), trial
        assert rank.start is not None and rank.end is not None and rank.start < rank.end, trial
        # ASHA stops every trial on the report of its last epoch (max_t): that is a trial done, not stopped early.
        assert results.trial_status(trial) == results.TrialStatus.DONE, trial
        used.append((rank.node_id, rank.gpu_ids[0], rank.start, rank.end))
    for (node, gpu, start, end), (node_b, gpu_b, start_b, end_b) in combinations(used, 2):
        assert (node, gpu) != (node_b, gpu_b) or end <= start_b or end_b <= start  # never two at once
    assert len({(node, gpu) for node, gpu, _, _ in used}) > 1  # the trials were spread over the GPUs

    one = results.read_best(root / "localize")
    assert one is not None and one.masks is not None
    assert one.trial_id in {t.name for t in trials[:8]} and Path(one.checkpoint).parent.name == one.trial_id
    (two,) = trials[8:]
    config = results.read_trial_config(two)
    assert config is not None and config["prior"] == one.masks and config["init_from"] == one.checkpoint
    assert [row.epoch for row in results.read_metrics(two)] == [0]
    assert results.read_node(two).device == "cpu"  # stage two (FIFO) ended by itself
    assert set(results.read_best(root / "semantic").test) >= {"miou", "fscore"}


@pytest.mark.slow
@pytest.mark.ray
def test_a_two_worker_ddp_trial_spreads_its_ranks_over_two_gpu_nodes_and_trains_through_gloo(
    gpu_nodes, data_root, tmp_path, caplog
):
    caplog.set_level("INFO", logger="aavs")
    root = _run(DDP, data_root, tmp_path)
    assert "2-worker trials on the gloo backend (CUDA is not usable" in caplog.text
    trial = root / "localize" / "trials" / "t000"
    ranks = _ranks(trial)
    assert [r.rank for r in ranks] == [0, 1]
    assert {r.node_id for r in ranks} <= gpu_nodes and ranks[0].node_id != ranks[1].node_id  # spread
    for rank in ranks:
        assert rank.gpu_ids is not None and len(rank.gpu_ids) == 1
        assert rank.cuda_visible_devices == rank.gpu_ids[0]  # one worker a node: its own GPU only
        # DDP on the CPU through the process group Ray Train made.
        assert (rank.backend, rank.device, rank.distributed) == ("gloo", "cpu:0", "MULTI_CPU")
        assert rank.start is not None and rank.end is not None and rank.start < rank.end
    rows = results.read_metrics(trial)
    assert [row.epoch for row in rows] == [0] and "val/miou" in rows[0]
    assert set(results.read_best(root / "localize").test) >= {"miou", "fscore"}


@pytest.mark.parametrize("value", ["diagonal", "PACK", 1])
def test_compute_placement_is_validated(value):
    with pytest.raises(InputError) as err:
        parse_spec(tiny_spec(compute={"placement": value}), "exp.yaml")
    assert str(err.value).startswith("exp.yaml: compute.placement: expected one of 'pack' or 'spread', got ")


def test_a_bad_placement_exits_2_naming_the_key(tmp_path, capsys):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(tiny_spec(compute={"placement": "diagonal"})))
    assert main(["run", str(tmp_path / "spec.yaml"), "--dry-run", "--results", str(tmp_path / "results")]) == 2
    assert "compute.placement: expected one of 'pack' or 'spread', got 'diagonal'" in capsys.readouterr().err
