"""From one machine to a cluster: stage placement by custom resources on a two-node Ray cluster that
shares one results folder, and the cluster configs in cluster/ (they parse, bind the dashboard to
127.0.0.1 or say why not, and name an entrypoint that exists)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import keep_ray_address_file, tiny_spec

from aavs.datasets.errors import InputError
from aavs.orchestrator.cli import build_parser, main
from aavs.orchestrator.cli.experiment import cmd_run
from aavs.orchestrator.experiment.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def _two_stage_spec(one: dict, two: dict) -> dict:
    """One trial a stage, one epoch; stage two reads stage one's masks (but starts from its own weights)."""
    stage = {"epochs": 1, "params": {"lr": 1.0e-3}}
    return tiny_spec(
        name="two-nodes",
        stages={"localize": {**stage, "resources": one}, "semantic": {**stage, "init_from": None, "resources": two}},
    )


# ---------------------------------------------------------------------------------- placement
@pytest.fixture(scope="module")
def two_nodes():
    """A head advertising ``node_a`` and a worker advertising ``node_b``, one CPU each, on this
    machine; yields {resource name: node id}. The address file that a bare ``ray.init()`` on this
    machine reads is put back as it was: other Ray users here never connect to this cluster."""
    import ray
    from ray.cluster_utils import Cluster

    restore_address_file = keep_ray_address_file()
    temp_dir = tempfile.mkdtemp(prefix="aavs-cl-", dir="/tmp")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"node_a": 1}, "temp_dir": temp_dir, "include_dashboard": False},
    )
    try:
        restore_address_file()
        cluster.add_node(num_cpus=1, resources={"node_b": 1}, temp_dir=temp_dir)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        nodes = {
            name: n["NodeID"]
            for n in ray.nodes()
            if n["Alive"]
            for name in ("node_a", "node_b")
            if name in n["Resources"]
        }
        assert set(nodes) == {"node_a", "node_b"} and nodes["node_a"] != nodes["node_b"]
        yield nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        restore_address_file()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.ray
def test_stage_two_on_another_node_reads_stage_one_masks_from_shared_storage(two_nodes, tmp_path, caplog):
    spec_file = tmp_path / "two-nodes.yaml"
    spec_file.write_text(yaml.safe_dump(_two_stage_spec({"node_a": 0.01}, {"node_b": 0.01})))
    shared = tmp_path / "shared"  # one folder both nodes see, as an NFS mount would be
    assert main(["run", str(spec_file), "--results", f"file://{shared}"]) == 0
    results = shared / "two-nodes"

    def node_of(stage: str) -> str:
        return json.loads((results / stage / "trials" / "t000" / "node.json").read_text())["node_id"]

    assert node_of("localize") == two_nodes["node_a"] and node_of("semantic") == two_nodes["node_b"]
    one = json.loads((results / "localize" / "best.json").read_text())
    success = json.loads((Path(one["masks"]) / "_SUCCESS.json").read_text())
    assert success["node_id"] == two_nodes["node_a"]  # the masks were exported on node A ...
    config = json.loads((results / "semantic" / "trials" / "t000" / "config.json").read_text())
    assert config["prior"] == one["masks"] and Path(one["masks"]).is_relative_to(shared)
    rows = (results / "semantic" / "trials" / "t000" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0]  # ... and read by stage two's trial on node B
    assert set(json.loads((results / "semantic" / "best.json").read_text())["test"]) >= {"miou", "fscore"}

    # Placement is not an input: moving the stages to other nodes does not run them again.
    spec_file.write_text(yaml.safe_dump(_two_stage_spec({"node_b": 0.01}, {"node_a": 0.01})))
    caplog.set_level("INFO")
    assert main(["run", str(spec_file), "--results", str(shared)]) == 0
    assert "stage localize: unchanged since it completed; skipping" in caplog.text
    assert "stage semantic: unchanged since it completed; skipping" in caplog.text


@pytest.mark.parametrize(
    "resources, message",
    [
        ({"node_a": 0}, "stages.0.resources.node_a: expected a number > 0, got 0"),
        ({"node_a": -1}, "stages.0.resources.node_a: expected a number > 0, got -1"),
        ({"node_a": "x"}, "stages.0.resources.node_a: expected a number, got 'x'"),
        ({"node_a": True}, "stages.0.resources.node_a: expected a number, got True"),
        ({"GPU": 1}, "stages.0.resources.GPU: expected a custom resource name (CPUs and GPUs are set under compute)"),
        (["node_a"], "stages.0.resources: expected a mapping of custom Ray resource names to amounts"),
    ],
)
def test_stage_resources_are_validated(resources, message):
    with pytest.raises(InputError) as err:
        parse_spec(_two_stage_spec(resources, {}), "exp.yaml")
    assert str(err.value).startswith(f"exp.yaml: {message}")


def test_results_storage_uris():
    from aavs.orchestrator.results import results_path

    assert results_path("file:///mnt/shared/my%20results") == Path("/mnt/shared/my results")
    for uri in ("s3://bucket/results", "gs://bucket/results", "file://host/results"):
        with pytest.raises(InputError, match=re.escape(repr(uri))):
            results_path(uri)


# ------------------------------------------------------------------------------------ configs
def test_cluster_configs_parse():
    files = sorted(CLUSTER.glob("*.yaml"))
    assert {f.name for f in files} == {"cluster.yaml", "rayjob.yaml", "runtime_env.yaml"}
    for f in files:
        assert isinstance(yaml.safe_load(f.read_text()), dict), f


def test_rayjob_entrypoint_exists():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] == "aavs" and scripts["aavs"] == "aavs.orchestrator.cli:main"
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_run and args.results.startswith("/mnt/shared/")
    assert (REPO / args.experiment).is_file()
    spec, _ = load_spec(REPO / args.experiment, args.set)  # the overrides fit the experiment's schema
    assert spec.data.root == "/mnt/shared/avsbench"
    # The working_dir is where the image holds the repository.
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert f"COPY --chown=ray:users . {runtime_env['working_dir']}" in (CLUSTER / "Dockerfile").read_text()


def test_runtime_env_pip_is_pyproject_dependencies_less_ray():
    from aavs.orchestrator.experiment.submit import EXCLUDES

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert env["pip"] == [d for d in deps if not d.startswith("ray")]
    assert env["working_dir"] == "." and env["excludes"] == EXCLUDES


def test_every_ray_head_we_start_binds_the_dashboard_to_localhost_or_says_why():
    launcher = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    for command in launcher["head_start_ray_commands"]:
        if "ray start" in command:
            assert "--dashboard-host=127.0.0.1" in command and "RAY_AUTH_MODE=token" in command
    docs = [REPO / "README.md", CLUSTER / "README.md"]
    heads = [line for doc in docs for line in doc.read_text().splitlines() if re.search(r"ray start .*--head", line)]
    assert heads and all(re.search(r"--dashboard-host[ =]127\.0\.0\.1", line) for line in heads), heads
    # KubeRay: the operator and the submitter reach the job API from other pods; token auth is then required.
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())["spec"]["rayClusterSpec"]
    if job["headGroupSpec"]["rayStartParams"].get("dashboard-host") != "127.0.0.1":
        assert job["authOptions"] == {"mode": "token"}
