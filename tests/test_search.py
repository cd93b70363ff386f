"""The stage searchers (aavs.orchestrator.experiment.search) driven in this process, as ``--local``
drives them: seeded proposals, names, grids, repeats, and Optuna adapting to results. No training
runs here; tests/test_search_ray.py runs the same searchers under Ray Tune."""

from __future__ import annotations

import math

import pytest

from aavs.datasets.errors import InputError
from aavs.orchestrator.experiment.search import drive_locally, make_searcher
from aavs.orchestrator.experiment.search_space import planned_trials
from aavs.orchestrator.experiment.spec import StageSpec, parse_spec


def stage(params: dict, **tune) -> StageSpec:
    return StageSpec.model_validate({"name": "s", "task": "avss-binary", "epochs": 2, "params": params, "tune": tune})


def proposals(stage_: StageSpec, objective=None) -> list[dict]:
    """Every proposal of the stage's searcher, each trial "scoring" ``objective(config)``."""
    seen = []

    def run(name, config):
        seen.append(config)
        return {"best/val/miou": objective(config)} if objective else {"best/val/miou": 0.5}

    list(drive_locally(make_searcher(stage_), run))
    return seen


LR = {"lr": {"loguniform": [1e-4, 1e-2]}}


def test_random_search_is_the_same_for_a_seed_and_names_trials_in_order():
    first = proposals(stage(LR, num_samples=4, seed=7))
    assert [c["trial"] for c in first] == ["t000", "t001", "t002", "t003"]
    assert first == proposals(stage(LR, num_samples=4, seed=7))
    assert [c["lr"] for c in first] != [c["lr"] for c in proposals(stage(LR, num_samples=4, seed=8))]
    assert all(1e-4 <= c["lr"] <= 1e-2 for c in first)
    assert len({c["lr"] for c in first}) == 4


def test_random_search_enumerates_grid_entries_num_samples_times():
    params = {**LR, "weight_decay": {"grid": [0.0, 0.05]}}
    got = proposals(stage(params, num_samples=2, seed=0))
    assert len(got) == planned_trials(stage(params, num_samples=2)) == 4
    assert sorted(c["weight_decay"] for c in got) == [0.0, 0.0, 0.05, 0.05]


def test_grid_search_takes_every_combination_of_choices():
    params = {"lr": {"choice": [1e-3, 3e-3]}, "weight_decay": {"grid": [0.0, 0.05, 0.1]}}
    got = proposals(stage(params, search="grid"))
    combos = {(c["lr"], c["weight_decay"]) for c in got}
    assert len(got) == len(combos) == 6 == planned_trials(stage(params, search="grid"))


@pytest.mark.parametrize(
    "search, params, expected",
    [
        ("grid", LR, "search: grid enumerates values; ['lr'] are continuous"),
        ("optuna", {"lr": {"grid": [1e-3, 3e-3]}}, "search: optuna proposes values itself; ['lr'] use grid"),
        ("hyperopt", {"lr": 1e-3}, "search: hyperopt needs at least one distribution in params"),
    ],
)
def test_a_search_space_a_searcher_cannot_search_is_refused_naming_the_key(search, params, expected):
    raw = {
        "name": "x",
        "data": {"synthetic": None},
        "model": {"preset": "tiny"},
        "stages": [{"name": "a", "task": "avss-binary", "params": params, "tune": {"search": search}}],
    }
    with pytest.raises(InputError) as err:
        parse_spec(raw, "x.yaml")
    assert "x.yaml" in str(err.value) and "stages.0.tune.search" in str(err.value)
    assert expected in str(err.value)


def peak_at(log10_lr: float):
    return lambda config: -abs(math.log10(config["lr"]) - log10_lr)


@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_model_based_search_adapts_to_the_results_after_its_startup_trials(search):
    s = stage(LR, search=search, num_samples=8, startup_trials=3, seed=1)
    low, high = proposals(s, peak_at(-4)), proposals(s, peak_at(-2))
    # Same seed: the startup trials are the same random draws whatever the results ...
    assert [c["lr"] for c in low[:3]] == [c["lr"] for c in high[:3]]
    # ... then each follows its own results: proposals move towards each objective's peak.
    later_low = [math.log10(c["lr"]) for c in low[3:]]
    later_high = [math.log10(c["lr"]) for c in high[3:]]
    assert [c["lr"] for c in low[3:]] != [c["lr"] for c in high[3:]]
    assert sum(later_low) / len(later_low) < sum(later_high) / len(later_high)


def test_replaying_the_same_results_proposes_the_same_trials():
    """What --local resume relies on: the same searcher fed the same results proposes the same trials."""
    s = stage(LR, search="optuna", num_samples=5, startup_trials=2, seed=3)
    assert proposals(s, peak_at(-3)) == proposals(s, peak_at(-3))


def test_repeats_train_each_configuration_with_consecutive_seeds_indices():
    got = proposals(stage(LR, num_samples=2, repeats=3, seed=0))
    assert [c["trial"] for c in got] == [f"t00{i}" for i in range(6)]
    assert [c["__trial_index__"] for c in got] == [0, 1, 2, 0, 1, 2]
    assert got[0]["lr"] == got[1]["lr"] == got[2]["lr"] != got[3]["lr"] == got[5]["lr"]


@pytest.mark.slow
def test_repeats_rank_configurations_by_their_mean_and_keep_the_best_seed(tmp_path):
    """Two configurations, two seeds each (--local): best.json is the best seed of the configuration
    with the best mean, and says so; the leaderboard shows each configuration's mean ± std."""
    import json
    import statistics

    import yaml

    from aavs.orchestrator.cli import main

    raw = {
        "name": "repeats",
        "data": {"synthetic": {"videos_per_split": 2, "seed": 0}},
        "model": {"preset": "tiny"},
        "compute": {"workers_per_trial": 1, "gpus_per_worker": 0, "cpus_per_worker": 1, "strategy": "plain"},
        "stages": [
            {
                "name": "localize",
                "task": "avss-binary",
                "epochs": 1,
                "max_videos": 1,
                "params": {"lr": {"grid": [3.0e-4, 3.0e-3]}},
                "tune": {"repeats": 2},
            }
        ],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "r.yaml"), "--local", "--results", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / "repeats"
    trials = sorted((folder / "localize" / "trials").iterdir())
    params = {t.name: json.loads((t / "params.json").read_text()) for t in trials}
    assert [(p["lr"], p["seed"]) for p in params.values()] == [(3e-4, 3407), (3e-4, 3408), (3e-3, 3407), (3e-3, 3408)]
    value = {t.name: json.loads((t / "best" / "metrics.json").read_text())["val/miou"] for t in trials}
    means = {lr: statistics.fmean(v for n, v in value.items() if params[n]["lr"] == lr) for lr in (3e-4, 3e-3)}
    best_lr = max(means, key=means.get)
    best = json.loads((folder / "localize" / "best.json").read_text())
    assert best["repeats"] == 2 and best["params"]["lr"] == best_lr
    assert best["configuration_mean"] == pytest.approx(means[best_lr])
    assert best["value"] == max(v for n, v in value.items() if params[n]["lr"] == best_lr)
    rows = json.loads((folder / "leaderboard.json").read_text())["stages"][0]["trials"]
    for row in rows:
        assert row["mean"] == pytest.approx(means[params[row["trial_id"]]["lr"]])
    assert rows[0]["trial_id"] == best["trial_id"]


def spec_file(tmp_path, stage_tune: dict, **top) -> str:
    import yaml

    raw = {
        "name": "refused",
        "data": {"synthetic": {"videos_per_split": 2}},
        "model": {"preset": "tiny"},
        "stages": [{"name": "a", "task": "avss-binary", "params": LR, "tune": stage_tune}],
        **top,
    }
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize(
    "tune, top, local, message",
    [
        ({"scheduler": "asha"}, {}, True, "stages.0.tune.scheduler (a): asha stops or mutates trials while others run"),
        ({"scheduler": "pbt"}, {}, True, "stages.0.tune.scheduler (a): pbt stops or mutates trials"),
        ({"scheduler": "pbt", "search": "optuna"}, {}, False, "Tune runs it with random or grid search only"),
        ({"scheduler": "pbt", "repeats": 2}, {}, False, "repeats do not apply"),
        (
            {"scheduler": "pbt"},
            {"compute": {"workers_per_trial": 2, "strategy": "ddp"}},
            False,
            "stages.0.tune.scheduler: expected scheduler fifo or asha when compute.workers_per_trial > 1",
        ),
    ],
)
def test_schedulers_a_stage_cannot_use_are_refused_before_anything_runs(tmp_path, capsys, tune, top, local, message):
    from aavs.orchestrator.cli import main

    args = ["run", spec_file(tmp_path, tune, **top), "--results", str(tmp_path / "out")] + (
        ["--local"] if local else []
    )
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("wandb") is not None, reason="needs an environment without wandb"
)
def test_a_tracker_that_is_not_installed_is_an_error_before_any_trial(tmp_path, capsys):
    from aavs.orchestrator.cli import main

    path = spec_file(tmp_path, {}, loggers=["tensorboard", "wandb"])
    assert main(["run", path, "--local", "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "loggers: wandb needs the Python package 'wandb', which is not installed; pip install 'aavs[wandb]'" in err
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("GPy") is not None, reason="needs an environment without GPy"
)
def test_pb2_without_its_gaussian_process_package_is_an_error_before_any_trial(tmp_path, capsys):
    from aavs.orchestrator.cli import main

    assert main(["run", spec_file(tmp_path, {"scheduler": "pb2"}), "--results", str(tmp_path / "out")]) == 2
    assert "stages.0.tune.scheduler (a): pb2 needs ['GPy'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
