"""Trial models kept as Optuna artifacts: the objective uploads complete trials' models only, keeps the top K,
and `hpo report --evaluate` scores the kept models without retraining (`--retrain` still retrains)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from cifar_hpo.search.cli import main
from cifar_hpo.search.models.training import TrainResult
from cifar_hpo.search.runtime.objective import Objective
from cifar_hpo.search.runtime.worker import run_worker
from cifar_hpo.search.settings import StudySettings
from cifar_hpo.search.study_setup import open_hpo_study
from cifar_hpo.storage.artifacts import ModelStore, removed_models
from cifar_hpo.storage.attrs import MODEL_ARTIFACT_ATTR
from hpo_testkit import create_tiny_study, sqlite_url

optuna.logging.set_verbosity(optuna.logging.WARNING)

PRUNED = None


def tiny_model() -> Any:
    """Pixels -> 10 class probabilities, built in milliseconds."""
    import keras

    return keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")])


def scripted_trainer(values: list[float | None]):
    """A trainer whose trial N reaches values[N] (None: pruned after epoch 1) with a tiny real model."""

    def train(config: Any, split: Any, *, epochs: int, trial: Any, seed: int, settings: Any) -> Any:
        value = values[trial.number]
        result = TrainResult(history={"val_accuracy": [0.05 if value is None else value]}, params=650,
                             fit_seconds=0.5, pruned_at=1 if value is None else None)
        return tiny_model(), result

    return train


def run_scripted(url: str, npz: Path, values: list[float | None], **given: Any) -> tuple[optuna.Study, ModelStore]:
    create_tiny_study(url, "s", npz, priors=False, **given)
    # 10 s, not 2: on a loaded CPU a trial's heartbeat thread once got no turn for 3.2 s (past the 3 s grace of a
    # 2 s interval) and the reaper failed a trial that was still running; this test is about kept models.
    opened = open_hpo_study(url, "s", None, heartbeat_interval=10)
    objective = Objective(opened.settings, opened.split)
    objective.trainer = scripted_trainer(values)
    run_worker(opened.study, objective, n_trials=len(values))
    return opened.study, ModelStore(Path(url.removeprefix("sqlite:///")).with_name("studies-artifacts"))


def test_complete_trials_upload_and_only_the_top_k_stay(tmp_path: Path, tiny_npz: Path) -> None:
    import keras

    study, store = run_scripted(sqlite_url(tmp_path), tiny_npz, [0.3, PRUNED, 0.5, 0.4, 0.6, PRUNED], keep_models=2)
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 4
    with_model = {t.number: t.user_attrs[MODEL_ARTIFACT_ATTR] for t in trials if MODEL_ARTIFACT_ATTR in t.user_attrs}
    assert sorted(with_model) == [0, 2, 3, 4]  # every complete trial that ranked in the top 2 when it finished
    for t in trials:  # pruned trials upload nothing and link nothing
        if t.state == TrialState.PRUNED:
            assert get_all_artifact_meta(t, storage=study._storage) == []
    assert sorted(p.name for p in store.path.iterdir()) == sorted([with_model[2], with_model[4]])  # 0.5 and 0.6
    assert removed_models(study.user_attrs) == {with_model[0], with_model[3]}  # marked removed
    reader = optuna.load_study(study_name=study.study_name, storage=sqlite_url(tmp_path))  # as the dashboard reads
    fresh = {t.number: t for t in reader.trials}
    linked = {n: [m.artifact_id for m in get_all_artifact_meta(fresh[n], storage=reader._storage)] for n in with_model}
    assert linked == {0: [], 2: [with_model[2]], 3: [], 4: [with_model[4]]}  # and their links are gone
    model = keras.models.load_model(_copy_as_keras(store.file(with_model[4]), tmp_path))
    assert model.output_shape == (None, 10)


def _copy_as_keras(path: Path, folder: Path) -> Path:
    target = folder / "copy.keras"
    target.write_bytes(path.read_bytes())
    return target


def test_keep_models_zero_uploads_nothing(tmp_path: Path, tiny_npz: Path) -> None:
    study, store = run_scripted(sqlite_url(tmp_path), tiny_npz, [0.3, 0.5], keep_models=0)
    assert not any(MODEL_ARTIFACT_ATTR in t.user_attrs for t in study.get_trials()) and not store.path.exists()
    assert StudySettings.from_study(study).keep_models == 0


def test_artifacts_folder_is_stored_and_a_worker_may_name_its_own(tmp_path: Path, tiny_npz: Path) -> None:
    elsewhere = tmp_path / "models"
    study, _ = run_scripted(sqlite_url(tmp_path), tiny_npz, [0.3], keep_models=1, artifacts=str(elsewhere))
    assert StudySettings.from_study(study).artifacts == str(elsewhere.resolve())
    assert [p.name for p in elsewhere.iterdir()] == [study.trials[0].user_attrs[MODEL_ARTIFACT_ATTR]]


def raise_if_called(*_: Any, **__: Any) -> Any:
    raise AssertionError("retrained, although the trial's model was kept")


def test_report_evaluate_scores_the_kept_models_without_retraining(tmp_path: Path, tiny_npz: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import cifar_hpo.search.evaluate as evaluate

    url = sqlite_url(tmp_path)
    # Trial 0 is the seed baseline and the best: the two candidates (top 2, baseline among them) are both kept.
    study, _ = run_scripted(url, tiny_npz, [0.7, PRUNED, 0.5, 0.4, 0.6], keep_models=2)
    monkeypatch.setattr(evaluate, "retrain", raise_if_called)
    monkeypatch.setattr(evaluate, "train_and_evaluate", raise_if_called)
    args = ["report", "--study", "s", "--storage", url, "--top", "2", "--evaluate", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    attrs = optuna.load_study(study_name="s", storage=url).user_attrs
    runs = {k: v for k, v in attrs.items() if k.startswith("hpo_eval:")}
    assert sorted(runs) == ["hpo_eval:t0@model:e1:s0", "hpo_eval:t4@model:e1:s4"]
    assert all(r["source"] == "model" and r["artifact"] and 0 <= r["accuracy"] <= 1 for r in runs.values())
    md = (tmp_path / "r" / "report.md").read_text()
    assert "own model" in md and "the trial's own model" in md
    ranking = json.loads((tmp_path / "r" / "ranking.json").read_text())
    assert {row["source"] for row in ranking["studies"][0]["test_ranking"]} == {"model"}

    monkeypatch.setattr(evaluate, "evaluate_kept_model", raise_if_called)  # a second report reuses the runs
    assert main(args + ["--out", str(tmp_path / "r2")]) == 0

    retrained: list[str] = []

    def fake_retraining(settings: Any, candidate: Any, split: Any, data: Any, seed: int) -> Any:
        retrained.append(f"{candidate.key}:s{seed}")
        run = evaluate.EvalRun(key=candidate.key, trial=candidate.trial, baseline=candidate.baseline,
                               epochs=candidate.epochs, seed=seed, **{k: runs["hpo_eval:t0@model:e1:s0"][k] for k in
                                                                      ("accuracy", "report", "confusion")})
        return None, run

    monkeypatch.setattr(evaluate, "train_and_evaluate", fake_retraining)  # --retrain: today's multi-seed path
    assert main(args[:-3] + ["--retrain", "--seeds", "2", "--out", str(tmp_path / "r3")]) == 0
    assert sorted(retrained) == ["t0:s0", "t0:s1", "t4:s0", "t4:s1"]
    assert "own model" not in (tmp_path / "r3" / "report.md").read_text()


def test_a_real_cnn_trial_model_is_kept_and_evaluated(tmp_path: Path, tiny_npz: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI with the real trainer: the saved model (custom layers, TTA) loads back and scores."""
    import cifar_hpo.search.evaluate as evaluate

    url = sqlite_url(tmp_path)
    assert main(["search", "--study", "real", "--storage", url, "--data", str(tiny_npz), "--epochs", "1",
                 "--val-size", "100", "--n-trials", "1", "--no-priors", "--keep-models", "1",
                 "--recycle-after", "0"]) == 0
    study = optuna.load_study(study_name="real", storage=url)
    [trial] = study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs.get("baseline")
    [meta] = get_all_artifact_meta(trial, storage=study._storage)
    assert meta.artifact_id == trial.user_attrs[MODEL_ARTIFACT_ATTR] and meta.filename == "trial-0.keras"
    assert (tmp_path / "studies-artifacts" / meta.artifact_id).is_file()
    monkeypatch.setattr(evaluate, "retrain", raise_if_called)
    assert main(["report", "--study", "real", "--storage", url, "--top", "1", "--evaluate",
                 "--out", str(tmp_path / "r")]) == 0
    run = optuna.load_study(study_name="real", storage=url).user_attrs["hpo_eval:t0@model:e1:s0"]
    assert run["source"] == "model" and sum(map(sum, run["confusion"])) == 200  # the tiny test split
