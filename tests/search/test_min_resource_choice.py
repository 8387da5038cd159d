"""How benchmarks/search_efficiency.py chooses Hyperband's first rung from its runs (the default it sets)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from hpo_testkit import ROOT

BUDGET = 120


def load_benchmark() -> ModuleType:
    """The benchmark script itself (benchmarks/ is not a package): the test runs exactly what it decides with."""
    spec = importlib.util.spec_from_file_location("search_efficiency", ROOT / "benchmarks" / "search_efficiency.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(key: str, seed: int, best: float, reached_at: int) -> dict:
    strategy = key.split("@")[0]
    curve = [[1, 0.3], [reached_at, best], [BUDGET, best]]
    return {"strategy": strategy, "key": key, "seed": seed, "best_val_accuracy": best, "curve": curve,
            "epochs_used": BUDGET, "wall_seconds": 1.0, "trials": 10}


def test_the_first_rung_that_meets_both_targets_is_chosen_over_a_higher_mean_that_misses_one() -> None:
    bench = load_benchmark()
    runs = []
    for seed, random_best in enumerate((0.80, 0.81, 0.79)):
        runs.append(run("b_random_nopruning", seed, random_best, 100))
        runs.append(run("a_tpe_hyperband@mr1", seed, random_best + 0.005, 90))  # ahead, but later than half
        runs.append(run("a_tpe_hyperband@mr2", seed, random_best + 0.03, 40))  # ahead by > 1 std, early
        runs.append(run("a_tpe_hyperband@mr3", seed, random_best + 0.04, 70 if seed == 1 else 30))  # one seed late
    summary = bench.summarize(runs, [], BUDGET)
    targets = summary["target"]
    assert [targets[k]["met"] for k in ("a_tpe_hyperband@mr1", "a_tpe_hyperband@mr2", "a_tpe_hyperband@mr3")] == \
        [False, True, False]
    assert targets["a_tpe_hyperband@mr1"]["a_ahead_of_b_by_more_than_one_std"] is False  # 0.5 points < 1 point std
    assert summary["min_resource_choice"] == {"key": "a_tpe_hyperband@mr2", "min_resource": 2, "met_targets": True,
                                              "why": "best mean among the runs that met both targets"}


def test_one_seed_cannot_meet_the_spread_target_and_the_choice_says_so() -> None:
    bench = load_benchmark()
    runs = [run("b_random_nopruning", 0, 0.80, 100), run("a_tpe_hyperband@mr1", 0, 0.85, 10),
            run("a_tpe_hyperband@mr2", 0, 0.86, 10)]
    summary = bench.summarize(runs, [], BUDGET)
    assert summary["target"]["a_tpe_hyperband@mr2"]["a_ahead_of_b_by_more_than_one_std"] is None
    assert summary["min_resource_choice"]["met_targets"] is False
    assert summary["min_resource_choice"]["min_resource"] == 2


def test_random_search_after_the_priors_is_compared_per_seed_but_is_not_the_target() -> None:
    bench = load_benchmark()
    runs = [run("b_random_nopruning", 0, 0.60, 100), run("b_random_priors", 0, 0.72, 16),
            run("a_tpe_hyperband@mr1", 0, 0.73, 7), run("a_tpe_hyperband@mr1", 1, 0.70, 7)]
    target = bench.summarize(runs, [], BUDGET)["target"]["a_tpe_hyperband@mr1"]
    assert target["vs_random_after_priors"] == [{"seed": 0, "margin": 0.01, "a_reaches_it_at_epoch": 7}]
    # Against (b), the bare random search, over the seeds both ran: seed 0 (seed 1's 0.70 has no (b) to meet yet)
    assert target["margin_over_b"] == 0.13 and target["seeds_compared"] == [0]
    assert [r["b_final_best"] for r in target["a_reaches_b_final_within_half_budget"]] == [0.60]


def test_hyperband_strategies_run_once_per_first_rung_and_the_others_once() -> None:
    bench = load_benchmark()
    assert bench.variants(["a_tpe_hyperband", "b_random_nopruning"], [1, 3]) == [
        ("a_tpe_hyperband", 1), ("a_tpe_hyperband", 3), ("b_random_nopruning", None)]


def test_random_search_is_bare_and_its_priors_diagnostic_starts_from_the_services_recipes(tmp_path,
                                                                                           tiny_npz) -> None:
    """(b) is what a practitioner's own RandomSampler script runs: no trial enqueued. The diagnostic
    b_random_priors gets the service's priors (not the baseline) first, as (a) does."""
    import argparse

    from cifar_hpo.search.study_setup import open_hpo_study

    bench = load_benchmark()
    args = argparse.Namespace(max_epochs=2, train=None, val=100, data=str(tiny_npz))
    queued = {}
    for strategy in ("b_random_nopruning", "b_random_priors", "a_tpe_hyperband"):
        opened = open_hpo_study(f"sqlite:///{tmp_path / 'b.db'}", strategy, bench.given_for(strategy, args, 0, 1))
        queued[strategy] = [t.user_attrs for t in opened.study.get_trials()]
    assert queued["b_random_nopruning"] == []
    assert queued["b_random_priors"] == [{"prior": "vgg_bn"}, {"prior": "resnet"}]
    assert queued["a_tpe_hyperband"] == [{"baseline": True}, {"prior": "vgg_bn"}, {"prior": "resnet"}]
    assert "b_random_priors" not in bench.DEFAULT_STRATEGIES


def test_finished_runs_are_taken_from_the_committed_json_when_the_state_folder_is_gone(tmp_path) -> None:
    """A long run spread over fresh machines: the JSON written after each finished run is its memory, but only
    for the same configuration; --fresh ignores it."""
    import json

    bench = load_benchmark()
    config = {"space": "cnn", "train": 10_000, "budget_epochs": BUDGET, "seeds": [0, 1, 2]}
    out = tmp_path / "search_efficiency.json"
    out.write_text(json.dumps({"benchmark": "search_efficiency", "config": config, "started": "then",
                               "runs": [run("a_tpe_hyperband@mr2", 0, 0.8, 60)], "baselines": [{"seed": 0}]}))
    resumed = bench.RunState(tmp_path / "state", config, fresh=False, earlier_result=out)
    assert [r["key"] for r in resumed.data["runs"]] == ["a_tpe_hyperband@mr2"] and resumed.data["started"] == "then"
    other = bench.RunState(tmp_path / "other", {**config, "train": 2_000}, fresh=False, earlier_result=out)
    assert other.data["runs"] == [] and other.data["baselines"] == []
    fresh = bench.RunState(tmp_path / "fresh", config, fresh=True, earlier_result=out)
    assert fresh.data["runs"] == []


def test_max_runs_stops_at_a_run_boundary_and_the_same_command_goes_on(tmp_path, monkeypatch) -> None:
    """--max-runs fits the benchmark into sessions: each process finishes that many runs, saves them, and the
    next one with the same command starts with the first run not yet finished (training stubbed out)."""
    import json

    bench = load_benchmark()
    started: list[str] = []

    def fake_run(strategy, args, seed, workdir, min_resource=None, storage_url=""):
        key = bench.run_key(strategy, min_resource)
        started.append(f"{key}-s{seed}")
        return {**run(key, seed, 0.5, 10), "strategy": strategy, "min_resource": min_resource}

    monkeypatch.setattr(bench, "run_strategy", fake_run)
    monkeypatch.setattr(bench, "run_baseline", lambda args, seed: {"seed": seed, "best_val_accuracy": 0.4,
                                                                  "final_val_accuracy": 0.4})
    monkeypatch.setattr(bench, "plot", lambda result, path: None)
    command = ["--strategies", "a_tpe_hyperband,b_random_nopruning", "--min-resources", "1", "2", "--seeds", "2",
               "--state", str(tmp_path / "state"), "--out", str(tmp_path / "out.json"), "--max-runs", "4"]
    assert bench.main(command) == 0
    assert started == ["a_tpe_hyperband@mr1-s0", "a_tpe_hyperband@mr2-s0", "b_random_nopruning-s0",
                       "a_tpe_hyperband@mr1-s1"]
    saved = json.loads((tmp_path / "out.json").read_text())
    assert len(saved["runs"]) == 4 and "finished" not in saved
    assert bench.main(command) == 0
    assert started[4:] == ["a_tpe_hyperband@mr2-s1", "b_random_nopruning-s1"]
    saved = json.loads((tmp_path / "out.json").read_text())
    assert len(saved["runs"]) == 6 and "finished" in saved
