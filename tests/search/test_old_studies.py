"""A study written by the release before the cnn space's new ingredients (and before precision, test-time
augmentation, priors and kept models) still opens, reports, exports and resumes, keeping its meaning."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from cifar_hpo.search.cli import main
from cifar_hpo.search.models.data import load_cifar10
from cifar_hpo.search.settings import StudySettings
from cifar_hpo.spaces.cnn import config_from_params

# The cnn distributions as the old release recorded them (one learning_rate for both optimizers).
OLD_DISTRIBUTIONS = {
    "depth": IntDistribution(2, 4), "convs_per_block": IntDistribution(1, 3),
    "base_filters": CategoricalDistribution((16, 32, 48, 64)), "filter_growth": FloatDistribution(1.0, 2.0, step=0.25),
    "kernel_size": CategoricalDistribution((3, 5)), "padding": CategoricalDistribution(("same", "valid")),
    "batch_norm": CategoricalDistribution((True, False)), "conv_dropout": FloatDistribution(0.0, 0.4),
    "head": CategoricalDistribution(("flatten", "global_avg")), "dense_units": IntDistribution(64, 1024, log=True),
    "dense_dropout": FloatDistribution(0.0, 0.6), "optimizer": CategoricalDistribution(("adam", "sgd")),
    "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
    "lr_schedule": CategoricalDistribution(("cosine", "constant")),
    "weight_decay": FloatDistribution(1e-6, 1e-2, log=True), "batch_size": CategoricalDistribution((32, 64, 128, 256)),
    "augment_strength": FloatDistribution(0.0, 1.0),
}
OLD_PARAMS = {"depth": 2, "convs_per_block": 1, "base_filters": 16, "filter_growth": 1.0, "kernel_size": 3,
              "padding": "same", "batch_norm": True, "conv_dropout": 0.1, "head": "global_avg", "dense_units": 64,
              "dense_dropout": 0.0, "optimizer": "adam", "learning_rate": 3e-3, "lr_schedule": "cosine",
              "weight_decay": 1e-4, "batch_size": 64, "augment_strength": 0.25}


def old_study(url: str, tiny_npz: Path) -> None:
    settings = {"space": "cnn", "space_overrides": {}, "data": str(tiny_npz),
                "data_fingerprint": load_cifar10(tiny_npz).fingerprint(), "val_size": 100, "subset": None,
                "epochs": 1, "seed": 0, "sampler": "tpe", "pruner": "hyperband", "baseline": False,
                "weights": "imagenet", "engine": "optuna", "n_trials": 2, "timeout": None}
    study = optuna.create_study(study_name="old", storage=url, direction="maximize")
    study.set_user_attr("hpo_settings", settings)
    study.set_user_attr("hpo_format", 1)
    for value in (0.31, 0.42):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params=OLD_PARAMS,
                                     distributions=OLD_DISTRIBUTIONS, intermediate_values={1: value},
                                     user_attrs={"best_epoch": 1, "epochs_run": 1, "history": {"val_accuracy": [value]}}))


def test_an_old_study_reports_exports_and_resumes_with_its_old_meaning(tmp_path, tiny_npz, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old_study(url, tiny_npz)
    settings = StudySettings.from_study(optuna.load_study(study_name="old", storage=url))
    assert (settings.precision, settings.tta, settings.priors) == ("float32", "none", False)

    assert main(["report", "--study", "old", "--storage", url, "--out", str(tmp_path / "rep")]) == 0
    assert "| 1 |" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["export", "--study", "old", "--storage", url, "--best", "-o", str(tmp_path / "best.json")]) == 0
    exported = json.loads((tmp_path / "best.json").read_text())
    config = config_from_params(exported["params"])
    assert config.learning_rate == 3e-3 and config.augment_policy == "legacy" and exported["tta"] == "none"

    assert main(["search", "--study", "old", "--storage", url, "--n-trials", "3", "--recycle-after", "0"]) == 0
    study = optuna.load_study(study_name="old", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [study.trials[2].state]
    assert study.trials[2].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert study.trials[2].user_attrs.get("precision") == "float32"  # the old study keeps training in float32
