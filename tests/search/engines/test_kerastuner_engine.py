"""`--engine kerastuner`: the bounds translation, recording KerasTuner trials into a study, one tiny search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.engines.kerastuner.recorder import StudyRecorder, whole_curve
from cifar_hpo.search.engines.kerastuner.translate import kerastuner_hyperparameters, params_from_values
from cifar_hpo.search.engines.kerastuner.tuner import checked_project_dir, project_dir
from cifar_hpo.search.models.training import TrainResult
from cifar_hpo.spaces import build_space
from cifar_hpo.spaces.bounds import optuna_distributions, space_bounds, suggest_params
from cifar_hpo.spaces.cnn import BASELINE, suggest
from cifar_hpo.storage.names import safe_filename

optuna.logging.set_verbosity(optuna.logging.WARNING)


def optuna_engine_distributions(space: object) -> dict:
    """What the Optuna engine records: suggest every parameter through a real trial."""
    study = optuna.create_study()
    trial = study.ask()
    suggest_params(space, trial)
    return trial.distributions


@pytest.mark.parametrize("overrides", [{}, {"depth": {"value": 3}, "optimizer": {"choices": ["adam"]},
                                            "adam_learning_rate": {"low": 1e-3, "high": 5e-3}}])
def test_translation_matches_the_optuna_space(overrides: dict) -> None:
    space = build_space("cnn", overrides)
    assert optuna_distributions(space) == optuna_engine_distributions(space)
    hp = kerastuner_hyperparameters(space)
    by_name = {h.name: h for h in hp.space}
    assert list(by_name) == list(space_bounds(space))
    assert type(by_name["dense_units"]).__name__ == "Int"
    assert (by_name["dense_units"].min_value, by_name["dense_units"].max_value) == (64, 1024)
    assert by_name["dense_units"].sampling == "log" and by_name["adam_learning_rate"].sampling == "log"
    assert by_name["filter_growth"].step == 0.25
    assert list(by_name["batch_size"].values) == [32, 64, 128, 256]
    if overrides:
        assert type(by_name["depth"]).__name__ == "Fixed" and by_name["depth"].value == 3
        assert type(by_name["optimizer"]).__name__ == "Fixed" and by_name["optimizer"].value == "adam"
        assert (by_name["adam_learning_rate"].min_value, by_name["adam_learning_rate"].max_value) == (1e-3, 5e-3)


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
    # the distributions the Optuna engine records, for the parameters this point uses (conditional ones left out)
    assert first.distributions == {k: v for k, v in optuna_engine_distributions(space).items() if k in first.params}
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
    # every trial holds exactly the parameters the space's suggest asks for its point (conditional ones out)
    space = build_space("cnn")
    assert all(suggest(optuna.trial.FixedTrial(t.params), space) and set(t.params) <= set(space_bounds(space))
               for t in trials)
    assert all(f"{t.params['optimizer']}_learning_rate" in t.params and
               f"{'sgd' if t.params['optimizer'] == 'adam' else 'adam'}_learning_rate" not in t.params for t in trials)
    assert all(t.user_attrs["engine"] == "kerastuner" for t in trials)
    assert [t.state for t in trials[:3]] == [TrialState.PRUNED] * 3
    assert all(t.intermediate_values.keys() == {1} for t in trials[:3])
    last = trials[3]
    assert last.state == TrialState.COMPLETE and last.intermediate_values.keys() == {1, 2, 3}
    assert last.user_attrs["initial_epoch"] == 1 and last.user_attrs["epochs_trained"] == 2
    assert trials[last.user_attrs["continues_trial"]].params == last.params
    assert last.value == pytest.approx(max(last.intermediate_values.values()))
    assert (tmp_path / "kerastuner" / safe_filename("kt") / "oracle.json").exists()
    # The complete trial's model is kept as an Optuna artifact (beside k.db); Hyperband's pruned rounds keep none.
    from optuna.artifacts import get_all_artifact_meta

    assert [len(get_all_artifact_meta(t, storage=study._storage)) for t in trials] == [0, 0, 0, 1]
    assert [p.name for p in (tmp_path / "k-artifacts").iterdir()] == [last.user_attrs["model_artifact"]]
    # The report reads the recorded trials like any study's, and names the engine that chose them.
    assert main(["report", "--study", "kt", "--storage", url, "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "engine KerasTuner, tuner hyperband" in report and "sampler tpe" not in report
    # A resume must keep the tuner; optuna-only flags are refused before anything is written.
    assert main([*common, "--tuner", "random"]) == 2
    assert main([*common, "--sampler", "random"]) == 2
    assert len(optuna.load_study(study_name="kt", storage=url).get_trials()) == 4


UNSAFE_NAMES = ["..", ".", "a/b", "/abs", "../../escape", "été", "a b", "a_b"]


def test_project_dir_is_always_a_distinct_folder_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "kerastuner"
    dirs = [project_dir(name, resume=False, root=root) for name in ["normal", *UNSAFE_NAMES]]
    assert len(set(dirs)) == len(dirs)  # names that slug alike ("a b", "a_b", "a/b") stay apart
    for directory in dirs:
        assert directory.parent == root and directory.resolve().parent == root.resolve()
        assert not directory.name.startswith(".") and "/" not in directory.name
        assert checked_project_dir(directory, root) == directory


def test_unsafe_project_dirs_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "kerastuner"
    (root / "x").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    for bad in (root / "..", root / ".", root / "x" / "..", root / "link"):
        with pytest.raises(ConfigError, match="refusing"):
            checked_project_dir(bad, root)


def test_resumed_study_keeps_its_old_project_folder_only_when_unambiguous(tmp_path: Path) -> None:
    root = tmp_path / "kerastuner"
    for old in ("kt", "a_b", ".."):
        (root / old).mkdir(parents=True, exist_ok=True)
        (root / old / "oracle.json").write_text("{}")
    assert project_dir("kt", resume=True, root=root) == root / "kt"  # written by an earlier version
    assert project_dir("kt", resume=False, root=root) == root / safe_filename("kt")  # a new study never reuses it
    assert project_dir("a b", resume=True, root=root) == root / safe_filename("a b")  # "a_b" may be another's
    assert project_dir("..", resume=True, root=root) == root / safe_filename("..")
    (root / safe_filename("kt")).mkdir()
    assert project_dir("kt", resume=True, root=root) == root / safe_filename("kt")  # the new folder wins


def _sandboxed_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_npz: Path) -> tuple[Path, Any]:
    """A working directory with a sentinel file and hpo.db, inside tmp_path: on the old code, the deletion
    these tests catch stays inside tmp_path. Returns it and a function running a 1-trial search there."""
    from cifar_hpo.search.cli import main

    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    monkeypatch.chdir(sandbox)
    (sandbox / "tiny.toml").write_text(TINY_SPACE)
    (sandbox / "keep.txt").write_text("mine")

    def search(name: str) -> int:
        return main(["search", "--engine", "kerastuner", "--tuner", "random", "--study", name, "--storage",
                     f"sqlite:///{sandbox}/hpo.db", "--space", "cnn", "--data", str(tiny_npz), "--subset", "60",
                     "--val-size", "30", "--epochs", "1", "--n-trials", "1",
                     "--space-config", str(sandbox / "tiny.toml")])

    return sandbox, search


def test_study_dot_dot_never_deletes_the_working_directory(tiny_npz: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`--study ..` used to make KerasTuner's overwrite remove `kerastuner/..`: the working directory."""
    sandbox, search = _sandboxed_search(tmp_path, monkeypatch, tiny_npz)
    assert search("normal") == 0  # makes kerastuner/, as a user's earlier study would have
    try:
        rc = search("..")
    finally:  # checked even if it raised: the old code emptied the sandbox, then failed to remove `..` itself
        assert (sandbox / "keep.txt").read_text() == "mine" and (sandbox / "hpo.db").exists()
    assert rc == 0
    for name in ("normal", ".."):
        assert (sandbox / "kerastuner" / safe_filename(name) / "oracle.json").exists(), name
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{sandbox}/hpo.db")
        assert len(study.get_trials()) == 1


def test_unsafe_study_names_keep_to_their_own_project(tiny_npz: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`--study .` used to remove every study's KerasTuner project; `a/b` and `/abs` stay inside kerastuner/."""
    sandbox, search = _sandboxed_search(tmp_path, monkeypatch, tiny_npz)
    names = ["normal", ".", "a/b", "/abs"]
    for i, name in enumerate(names):
        assert search(name) == 0, name
        assert (sandbox / "keep.txt").read_text() == "mine" and (sandbox / "hpo.db").exists(), name
        # every study's project survives every later search, each in its own folder directly in kerastuner/
        assert len(list((sandbox / "kerastuner").glob("*/oracle.json"))) == i + 1, name
    projects = [p.name for p in (sandbox / "kerastuner").iterdir() if p.is_dir()]
    assert sorted(projects) == sorted(safe_filename(n) for n in names)
    made = sorted(p.name for p in sandbox.iterdir() if not p.name.startswith("hpo.db"))  # -wal, -shm
    # nothing written beside kerastuner/ but the kept trial models' store (hpo-artifacts/ beside hpo.db)
    assert made == ["hpo-artifacts", "keep.txt", "kerastuner", "tiny.toml"]
