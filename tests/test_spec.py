"""Experiment files: validation errors name file, key path and expectation; trial sampling; --set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from aavs.datasets.errors import InputError
from aavs.orchestrator.cli import main
from aavs.orchestrator.experiment.search import drive_locally, make_searcher
from aavs.orchestrator.experiment.search_space import fixed, planned_trials
from aavs.orchestrator.experiment.spec import apply_overrides, load_spec, parse_spec, spec_hash

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "x",
    "data": {"synthetic": {"videos_per_split": 2}},
    "model": {"preset": "tiny"},
    "stages": [
        {
            "name": "localize",
            "task": "avss-binary",
            "epochs": 2,
            "params": {
                "lr": {"loguniform": [1e-4, 1e-2]},
                "weight_decay": {"grid": [0.0, 0.05]},
                "batch_size": {"choice": [1, 2]},
            },
            "tune": {"num_samples": 3, "scheduler": {"asha": {"grace_period": 1}}},
        },
        {"name": "semantic", "task": "avss", "prior": "localize", "init_from": "localize"},
    ],
}


def test_every_shipped_experiment_parses():
    files = sorted((REPO / "experiments").glob("*.yaml"))
    assert {f.name for f in files} >= {
        *("demo.yaml", "s4.yaml", "ms3.yaml", "avss.yaml", "avss-end-to-end.yaml"),
        *("demo-avsbench.yaml", "avsbench-stepping-stones.yaml", "avsbench-end-to-end.yaml"),
    }
    for f in files:
        spec, _ = load_spec(f)
        assert spec.name and spec.stages
    demo, _ = load_spec(REPO / "experiments" / "demo.yaml")
    trials = [planned_trials(s) for s in demo.stages]
    assert trials[0] >= 4 and trials[1] >= 2  # the minimum for the demo
    assert demo.stages[1].prior == "localize"


def test_parsed_values_and_defaults():
    spec = parse_spec(BASE, "x.yaml")
    one, two = spec.stages
    assert one.tune.asha.grace_period == 1 and one.tune.asha.reduction_factor == 2 and one.tune.mode == "max"
    assert two.epochs == 60 and two.tune.scheduler == "fifo" and two.tune.asha is None and two.prior == "localize"
    assert spec.compute.workers_per_trial == 1 and spec.compute.strategy == "plain"
    # The method's defaults for each task are in the spec (docs/method.md §4), after the keys as written.
    assert list(one.params)[:3] == ["lr", "weight_decay", "batch_size"]
    assert (one.params["adapter_warmup"], one.params["grad_clip"], one.shuffle) == (0.5, 0.01, True)
    assert (
        two.params
        == {
            "lr": 1e-3,
            "lr_b": None,
            "weight_decay": 0.05,
            "adapter_warmup": 1 / 3,
            "grad_clip": None,
            "batch_size": 1,
            "grad_accum": 1,
            "seed": 3407,
            "prior_train": "ground-truth",  # a stage with a prior: the paper's training prior
        }
        and two.shuffle is False
    )


def test_the_resolved_spec_parses_back_to_itself():
    """spec.yaml holds the resolved spec; `aavs resume` parses it again."""
    spec = parse_spec(BASE, "x.yaml")
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec.to_dict())), "spec.yaml")
    assert again == spec and spec_hash(again.to_dict()) == spec_hash(spec.to_dict())
    explicit = apply_overrides(
        BASE, ["stages.localize.params.grad_clip=null", "stages.semantic.shuffle=true"], "x.yaml"
    )
    one, two = parse_spec(explicit, "x.yaml").stages
    assert one.params["grad_clip"] is None and two.shuffle is True  # a value written is kept, even None


def test_schema_is_printed_and_names_every_key(capsys):
    assert main(["schema"]) == 0
    schema = yaml.safe_load(capsys.readouterr().out)
    assert set(schema["properties"]) == {"name", "data", "model", "compute", "stages", "loggers", "tracking"}
    assert schema["additionalProperties"] is False
    stage = schema["$defs"]["StageSpec"]["properties"]
    assert {"params", "tune", "prior", "shuffle"} <= set(stage)


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.0.tsk=s4", "x.yaml: stages.0.tsk: expected one of the keys ['name', 'task', 'epochs', "),
        ("stages.0.task=s5", "x.yaml: stages.0.task: expected one of 's4', 'ms3', 'avss-binary' or 'avss', got 's5'"),
        (
            "stages.semantic.prior=nope",
            "x.yaml: stages.1.prior: expected the name of an earlier stage (['localize']), got 'nope'",
        ),
        (
            "stages.0.params.lr={loguniform: [0, 1]}",
            "x.yaml: stages.0.params.lr.loguniform: expected [low, high] with low < high and low > 0",
        ),
        ("stages.0.params.momentum=0.9", "x.yaml: stages.0.params.momentum: expected one of the keys"),
        ("stages.0.epochs=0", "x.yaml: stages.0.epochs: expected a number >= 1, got 0"),
        ("stages.0.epochs=2.5", "x.yaml: stages.0.epochs: expected an integer, got 2.5"),
        (
            "stages.0.params.lr={normal: [0, 1]}",
            "x.yaml: stages.0.params.lr: expected a value or one of {choice, grid, loguniform, uniform: ...}",
        ),
        (
            "stages.0.params.batch_size={uniform: [1, 4]}",
            "x.yaml: stages.0.params.batch_size: expected a value or one of {choice, grid: ...}",
        ),
        (
            "stages.0.params.batch_size={choice: [1, 0]}",
            "x.yaml: stages.0.params.batch_size.choice.1: expected a number >= 1, got 0",
        ),
        ("stages.0.params.adapter_warmup=1", "x.yaml: stages.0.params.adapter_warmup: expected a number < 1, got 1"),
        (
            "stages.0.tune.scheduler={asha: {grace: 1}}",
            "x.yaml: stages.0.tune.scheduler.asha.grace: expected one of the keys ['grace_period', 'reduction_factor']",
        ),
        (
            "stages.0.tune.scheduler=median",
            "x.yaml: stages.0.tune.scheduler: expected fifo, asha, pbt or pb2, or one of {asha: {...}}",
        ),
        ("compute.deepspeed.zero_stage=3", "x.yaml: compute.deepspeed.zero_stage: expected one of 1 or 2, got 3"),
        (
            "compute.mixed_precision=no",
            "x.yaml: compute.mixed_precision: expected one of 'no', 'fp16' or 'bf16', got False",
        ),
        ("stages=[]", "x.yaml: stages: expected at least 1 item(s), got []"),
        ("data={}", "x.yaml: data: expected exactly one of 'root' or 'synthetic', got {}"),
        ("stages.0.tune.metric=loss", "x.yaml: stages.0.tune.metric: expected a validation metric"),
        (
            "compute.strategy=fsdp",
            "x.yaml: compute.strategy: expected one of 'plain', 'ddp' or 'deepspeed', got 'fsdp'",
        ),
        (
            "compute.workers_per_trial=2",
            "x.yaml: compute.strategy: expected 'ddp' or 'deepspeed' when workers_per_trial > 1, got 'plain'",
        ),
        ("model={}", "x.yaml: model: expected 'preset', 'pretrained' or both"),
        (
            "model={pretrained: /somewhere, pretrain: {steps: 3}}",
            "x.yaml: model: expected 'pretrain' with a 'preset' and no 'pretrained'",
        ),
        ("model.pretrain={steps: 0}", "x.yaml: model.pretrain.steps: expected"),
        ("name=../escape", "x.yaml: name: expected a plain name"),
        (
            "stages.0.prior=localize",
            "x.yaml: stages.0.prior: expected a prior only on a stage whose task takes one (['avss'])",
        ),
        ("stages.0.init_from=localize", "x.yaml: stages.0.init_from: expected the name of an earlier stage (none yet)"),
        (
            "stages.1.name=localize",
            "x.yaml: stages.1.name: expected a name not used by an earlier stage, got 'localize'",
        ),
    ],
)
def test_errors_name_file_key_and_expectation(override, message):
    with pytest.raises(InputError) as err:
        parse_spec(apply_overrides(BASE, [override], "x.yaml"), "x.yaml")
    assert message in str(err.value)


def test_set_overrides_by_index_and_by_stage_name():
    raw = apply_overrides(
        BASE, ["stages.localize.epochs=7", "stages.1.epochs=3", "compute.deepspeed.zero_stage=1"], "x.yaml"
    )
    spec = parse_spec(raw, "x.yaml")
    assert [s.epochs for s in spec.stages] == [7, 3] and spec.compute.deepspeed.zero_stage == 1
    assert BASE["stages"][0]["epochs"] == 2  # the original is untouched
    with pytest.raises(InputError, match="has no stage named 'missing'"):
        apply_overrides(BASE, ["stages.missing.epochs=1"], "x.yaml")
    with pytest.raises(InputError, match="expected KEY.PATH=VALUE"):
        apply_overrides(BASE, ["stages.0.epochs"], "x.yaml")


def sampled(stage) -> list[dict]:
    """The stage's trials as its searcher proposes them (each "scoring" 0.5)."""
    out = []
    list(drive_locally(make_searcher(stage), lambda name, config: out.append(config) or {"best/val/miou": 0.5}))
    return out


def test_trial_sampling_is_deterministic_and_covers_the_grid():
    stage = parse_spec(BASE, "x.yaml").stages[0]
    trials = sampled(stage)
    assert len(trials) == planned_trials(stage) == 6  # grid of 2 x num_samples 3
    assert sorted(t["weight_decay"] for t in trials) == [0.0] * 3 + [0.05] * 3
    assert all(1e-4 <= t["lr"] <= 1e-2 and t["batch_size"] in (1, 2) for t in trials)
    assert trials == sampled(stage)
    other = parse_spec(apply_overrides(BASE, ["stages.0.tune.seed=1"], "x.yaml"), "x.yaml").stages[0]
    assert [t["lr"] for t in trials] != [t["lr"] for t in sampled(other)]
    # log-uniform: the log-lrs of many samples spread over the whole interval
    wide = parse_spec(
        apply_overrides(
            BASE, ["stages.0.params={lr: {loguniform: [1.0e-4, 1.0e-2]}}", "stages.0.tune.num_samples=400"], "x.yaml"
        ),
        "x.yaml",
    ).stages[0]
    logs = [math.log10(t["lr"]) for t in sampled(wide)]
    assert min(logs) < -3.8 and max(logs) > -2.2 and abs(sum(logs) / len(logs) + 3) < 0.15


def test_spec_hash_changes_with_content():
    a = parse_spec(BASE, "x.yaml").to_dict()
    b = parse_spec(apply_overrides(BASE, ["stages.0.epochs=3"], "x.yaml"), "x.yaml").to_dict()
    assert spec_hash(a) == spec_hash(parse_spec(BASE, "x.yaml").to_dict()) != spec_hash(b)


def test_cli_bad_experiment_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "stages": [{**BASE["stages"][0], "epochs": "many"}]}))
    assert main(["run", str(bad), "--local", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: stages.0.epochs: expected an integer, got 'many'" in err
    assert not (tmp_path / "r").exists()  # nothing written for an invalid spec
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["run", str(tmp_path / "broken.yaml"), "--local"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, stages", [("s4.yaml", ["s4"]), ("ms3.yaml", ["ms3"]), ("avss.yaml", ["localize", "semantic"])]
)
def test_reproducing_experiments_are_the_papers_recipe(name, stages):
    """One fp32 trial per stage, 60 epochs, fixed learning rates 1e-3 then 1e-4, no init_from."""
    spec, _ = load_spec(REPO / "experiments" / name)
    assert [s.name for s in spec.stages] == stages
    assert spec.compute.mixed_precision == "no" and spec.compute.strategy == "plain"
    assert spec.model.pretrained and spec.model.vggish and not spec.model.vggish_pca
    for stage in spec.stages:
        assert stage.epochs == 60 and stage.tune.num_samples == 1 and stage.init_from is None
        assert planned_trials(stage) == 1
        trial = fixed(stage.params)
        assert {k: trial[k] for k in ("lr", "lr_b", "weight_decay", "batch_size", "seed")} == {
            "lr": 1e-3,
            "lr_b": 1e-4,
            "weight_decay": 0.05,
            "batch_size": 1,
            "seed": 3407,
        }


def test_print_config_shows_the_methods_defaults_and_runs_nothing(tmp_path, capsys):
    assert main(["run", str(REPO / "experiments" / "avss.yaml"), "--print-config", "--results", str(tmp_path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    one, two = shown["stages"]["localize"], shown["stages"]["semantic"]
    assert (one["phase_b_from_epoch"], two["phase_b_from_epoch"]) == (30, 20)  # epochs // 2, epochs // 3
    assert (one["shuffle"], two["shuffle"]) == (True, False)
    assert (one["grad_clip"], two["grad_clip"]) == (0.01, None)
    assert one["lr"] == two["lr"] == 1e-3 and one["lr_b"] == two["lr_b"] == 1e-4 and one["seed"] == 3407
    assert two["prior"] == "<masks of localize's best trial>" and shown["notes"] == []
    assert shown["model"]["train_base"] is False
    assert list(tmp_path.iterdir()) == []

    assert main(["run", str(REPO / "experiments" / "demo.yaml"), "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["train_base"] is False and "pre-trained on synthetic still images" in shown["notes"][0]
    assert shown["stages"]["localize"]["lr"] == {"loguniform": [5.0e-4, 2.0e-3]}
    assert shown["stages"]["localize"]["lr_b"] == "lr / 10"


def test_a_saved_spec_with_a_data_root_reads_back(tmp_path):
    """spec.yaml writes the unused data source as null; `aavs resume` must read it back as it was
    (it once read `synthetic: null` as "the synthetic defaults" next to the root, and refused)."""
    (tmp_path / "data").mkdir()
    spec = parse_spec({**BASE, "data": {"root": str(tmp_path / "data")}}, "x.yaml")
    saved = yaml.safe_load(yaml.safe_dump(spec.to_dict()))
    assert saved["data"] == {"root": str(tmp_path / "data"), "synthetic": None}
    assert parse_spec(saved, "spec.yaml") == spec
