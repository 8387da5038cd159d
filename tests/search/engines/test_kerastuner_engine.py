"""`--engine kerastuner`: the bounds translation, recording KerasTuner trials into a study, one tiny search."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.engines.kerastuner.engine import (
    StudyRecorder, kerastuner_hyperparameters, optuna_distributions, params_from_values, whole_curve,
)
from cifar_hpo.search.models.training import TrainResult
from cifar_hpo.spaces import build_space
from cifar_hpo.spaces.bounds import space_bounds, suggest_params
from cifar_hpo.spaces.cnn import BASELINE

optuna.logging.set_verbosity(optuna.logging.WARNING)


def optuna_engine_distributions(space: object) -> dict:
    """What the Optuna engine records: suggest every parameter through a real trial."""
    study = optuna.create_study()
    trial = study.ask()
    suggest_params(space, trial)
    return trial.distributions


@pytest.mark.parametrize("overrides", [{}, {"depth": {"value": 3}, "optimizer": {"choices": ["adam"]},
                                            "learning_rate": {"low": 1e-3, "high": 5e-3}}])
def test_translation_matches_the_optuna_space(overrides: dict) -> None:
    space = build_space("cnn", overrides)
    assert optuna_distributions(space) == optuna_engine_distributions(space)
    hp = kerastuner_hyperparameters(space)
    by_name = {h.name: h for h in hp.space}
    assert list(by_name) == list(space_bounds(space))
    assert type(by_name["dense_units"]).__name__ == "Int"
    assert (by_name["dense_units"].min_value, by_name["dense_units"].max_value) == (64, 1024)
    assert by_name["dense_units"].sampling == "log" and by_name["learning_rate"].sampling == "log"
    assert by_name["filter_growth"].step == 0.25
    assert list(by_name["batch_size"].values) == [32, 64, 128, 256]
    if overrides:
        assert type(by_name["depth"]).__name__ == "Fixed" and by_name["depth"].value == 3
        assert type(by_name["optimizer"]).__name__ == "Fixed" and by_name["optimizer"].value == "adam"
        assert (by_name["learning_rate"].min_value, by_name["learning_rate"].max_value) == (1e-3, 5e-3)


def test_kerastuner_draws_are_valid_optuna_params() -> None:
    space = build_space("cnn")
    hp, distributions = kerastuner_hyperparameters(space), optuna_distributions(space)
    for seed in range(30):
        values = {h.name: h.random_sample(seed * 100 + i) for i, h in enumerate(hp.space)}
        params = params_from_values(space, {**values, "tuner/epochs": 3})
        assert set(params) == set(distributions)
        assert isinstance(params["batch_norm"], bool)  # KerasTuner itself stores booleans as 1/0
        for name, value in params.items():
            assert distributions[name]._contains(distributions[name].to_internal_repr(value)), (name, value)


def test_mixed_type_choices_are_a_config_error() -> None:
    space = build_space("cnn", {"base_filters": {"choices": [16, "wide"]}})
    with pytest.raises(ConfigError, match="base_filters"):
        kerastuner_hyperparameters(space)


def scripted(curve: list[float]) -> TrainResult:
    return TrainResult(history={"val_accuracy": curve, "accuracy": [v + 0.1 for v in curve],
                                "loss": [1.0] * len(curve), "val_loss": [1.1] * len(curve)},
                       params=1234, fit_seconds=2.0, train_seconds=1.5, train_images=300)


def test_recording_finished_pruned_infeasible_and_continued_trials() -> None:
    space = build_space("cnn")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(BASELINE.to_params(), user_attrs={"baseline": True})
    recorder = StudyRecorder(study, optuna_distributions(space), "hyperband")

    # The enqueued baseline is taken when KerasTuner's first draw is its configuration.
    base = recorder.begin(BASELINE.to_params(), {"kerastuner_trial_id": "00", "initial_epoch": 0})
    for step, value in enumerate([0.3, 0.5, 0.4], start=1):
        base.report(value, step)
    recorder.finish(base, scripted([0.3, 0.5, 0.4]), complete=True, epochs_trained=3, wall_seconds=4.0)

    other = {**BASELINE.to_params(), "dense_units": 256, "padding": "same"}
    early = recorder.begin(other, {"kerastuner_trial_id": "01", "initial_epoch": 0})
    early.report(0.2, 1)
    recorder.finish(early, scripted([0.2]), complete=False, epochs_trained=1, wall_seconds=1.0)
    bad = recorder.begin({**other, "dense_units": 64}, {"kerastuner_trial_id": "02", "initial_epoch": 0})
    recorder.infeasible(bad, "feature map shrinks below 1x1")

    # A Hyperband round resuming trial "01" after epoch 1 carries its curve.
    cont = recorder.begin(other, {"kerastuner_trial_id": "03", "initial_epoch": 1})
    predecessor = recorder.predecessor("01")
    recorder.carry_curve(cont, predecessor, 1)
    cont.report(0.35, 2)
    cont.report(0.45, 3)
    recorder.finish(cont, whole_curve(scripted([0.35, 0.45]), predecessor, 1), complete=True, epochs_trained=2,
                    wall_seconds=3.0)

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED, TrialState.COMPLETE]
    first = trials[0]
    assert first.user_attrs["baseline"] is True and first.params == BASELINE.to_params()
    assert first.value == pytest.approx(0.5) and first.intermediate_values == {1: 0.3, 2: 0.5, 3: 0.4}
    assert first.distributions == optuna_engine_distributions(space)
    for key in ("best_epoch", "epochs_run", "params", "fit_seconds", "train_images_per_s", "history", "wall_seconds"):
        assert key in first.user_attrs
    assert first.user_attrs["engine"] == "kerastuner" and first.user_attrs["kerastuner_tuner"] == "hyperband"
    assert first.user_attrs["best_epoch"] == 2 and first.user_attrs["epochs_run"] == 3
    assert trials[1].intermediate_values == {1: 0.2} and trials[1].params["dense_units"] == 256
    assert "infeasible" in trials[2].user_attrs
    last = trials[3]
    assert last.user_attrs["continues_trial"] == 1 and last.user_attrs["epochs_trained"] == 2
    assert last.intermediate_values == {1: 0.2, 2: 0.35, 3: 0.45}
    assert last.user_attrs["history"]["val_accuracy"] == [0.2, 0.35, 0.45] and last.user_attrs["best_epoch"] == 3
    assert last.value == pytest.approx(0.45)


TINY_SPACE = """
[cnn]
depth = {value = 2}
convs_per_block = {value = 1}
base_filters = {choices = [16]}
filter_growth = {value = 1.0}
padding = {choices = ["same"]}
dense_units = {low = 16, high = 32}
batch_size = {choices = [64]}
augment_strength = {value = 0.0}
"""


def test_tiny_hyperband_search_end_to_end(tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cifar_hpo.search.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY_SPACE)
    url = f"sqlite:///{tmp_path}/k.db"
    common = ["search", "--engine", "kerastuner", "--study", "kt", "--storage", url]
    # epochs 3, factor 3: three 1-epoch trials, then the best continues for 2 more epochs.
    rc = main([*common, "--tuner", "hyperband", "--space", "cnn", "--data", str(tiny_npz), "--subset", "100",
               "--val-size", "50", "--epochs", "3", "--n-trials", "4", "--space-config", str(tmp_path / "tiny.toml")])
    assert rc == 0
    study = optuna.load_study(study_name="kt", storage=url)
    trials = study.get_trials()
    assert len(trials) == 4
    assert all(set(t.params) == set(space_bounds(build_space("cnn"))) for t in trials)
    assert all(t.user_attrs["engine"] == "kerastuner" for t in trials)
    assert [t.state for t in trials[:3]] == [TrialState.PRUNED] * 3
    assert all(t.intermediate_values.keys() == {1} for t in trials[:3])
    last = trials[3]
    assert last.state == TrialState.COMPLETE and last.intermediate_values.keys() == {1, 2, 3}
    assert last.user_attrs["initial_epoch"] == 1 and last.user_attrs["epochs_trained"] == 2
    assert trials[last.user_attrs["continues_trial"]].params == last.params
    assert last.value == pytest.approx(max(last.intermediate_values.values()))
    assert (tmp_path / "kerastuner" / "kt" / "oracle.json").exists()
    # The report reads the recorded trials like any study's, and names the engine that chose them.
    assert main(["report", "--study", "kt", "--storage", url, "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "engine KerasTuner, tuner hyperband" in report and "sampler tpe" not in report
    # A resume must keep the tuner; optuna-only flags are refused before anything is written.
    assert main([*common, "--tuner", "random"]) == 2
    assert main([*common, "--sampler", "random"]) == 2
    assert len(optuna.load_study(study_name="kt", storage=url).get_trials()) == 4
