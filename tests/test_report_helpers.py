"""Helpers for the report tests (no tests here): studies built with optuna.trial.create_trial, no training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from reports.evaluation import EvalRun, eval_attr_key, evaluate_predictions
from search.data import CLASS_NAMES
from search.settings import StudySettings
from spaces.cnn import BASELINE

# A CNN small enough to train in a second on the tiny synthetic data.
SMALL_CNN = dict(BASELINE.to_params(), depth=2, base_filters=16, filter_growth=1.0, dense_units=64, batch_size=64,
                 padding="same", head="global_avg", learning_rate=3e-3)

DISTRIBUTIONS = {
    "depth": IntDistribution(2, 4), "convs_per_block": IntDistribution(1, 3),
    "base_filters": CategoricalDistribution((16, 32, 48, 64)), "filter_growth": FloatDistribution(1.0, 2.0, step=0.25),
    "kernel_size": CategoricalDistribution((3, 5)), "padding": CategoricalDistribution(("same", "valid")),
    "batch_norm": CategoricalDistribution((True, False)), "conv_dropout": FloatDistribution(0.0, 0.4),
    "head": CategoricalDistribution(("flatten", "global_avg")), "dense_units": IntDistribution(64, 1024, log=True),
    "dense_dropout": FloatDistribution(0.0, 0.6), "optimizer": CategoricalDistribution(("adam", "sgd")),
    "learning_rate": FloatDistribution(1e-4, 1e-2, log=True), "lr_schedule": CategoricalDistribution(("cosine", "constant")),
    "weight_decay": FloatDistribution(1e-6, 1e-2, log=True), "batch_size": CategoricalDistribution((32, 64, 128, 256)),
    "augment_strength": FloatDistribution(0.0, 1.0),
}


def make_trial(params: dict[str, Any], curve: list[float], state: TrialState = TrialState.COMPLETE,
               baseline: bool = False, **attrs: Any) -> optuna.trial.FrozenTrial:
    best = int(np.argmax(curve)) + 1 if curve else 0
    user_attrs = {"best_epoch": best, "epochs_run": len(curve), "params": 1000 + len(curve), "fit_seconds": 1.5,
                  "train_images_per_s": 900.0, "wall_seconds": 2.0,
                  "history": {"val_accuracy": curve}, **attrs}
    if baseline:
        user_attrs["baseline"] = True
    return create_trial(
        state=state, value=max(curve) if state == TrialState.COMPLETE else None, params=params,
        distributions={k: DISTRIBUTIONS[k] for k in params}, user_attrs=user_attrs,
        intermediate_values={i + 1: v for i, v in enumerate(curve)},
    )


def variant(rng: np.random.Generator) -> dict[str, Any]:
    return dict(SMALL_CNN, dense_units=int(rng.integers(64, 1024)), learning_rate=float(10 ** rng.uniform(-4, -2)),
                conv_dropout=float(rng.uniform(0, 0.4)), optimizer=str(rng.choice(["adam", "sgd"])))


def make_study(storage: str, name: str, settings: StudySettings, n_complete: int = 5, seed: int = 0) -> optuna.Study:
    """A study with a baseline, ``n_complete`` completed, one pruned and one failed trial, and hpo settings."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for key, value in settings.to_attrs().items():
        study.set_user_attr(key, value)
    study.add_trial(make_trial(dict(SMALL_CNN), [0.30, 0.40, 0.45], baseline=True))
    for _ in range(n_complete):
        curve = sorted(float(v) for v in rng.uniform(0.2, 0.7, size=3))
        study.add_trial(make_trial(variant(rng), curve))
    study.add_trial(make_trial(variant(rng), [0.12], state=TrialState.PRUNED))
    study.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    return study


def store_fake_evaluation(study: optuna.Study, key: str, trial: int | None, epochs: int, seed: int, accuracy: float,
                          baseline: bool = False, fingerprint: str | None = None) -> EvalRun:
    """An EvalRun from synthetic predictions with roughly ``accuracy``, stored as hpo report stores it."""
    rng = np.random.default_rng(seed + 17 * (trial or 0))
    y_true = np.arange(1000) % 10
    y_pred = np.where(rng.random(1000) < accuracy, y_true, rng.integers(0, 10, 1000))
    acc, report, confusion = evaluate_predictions(y_true, y_pred, CLASS_NAMES)
    run = EvalRun(key=key, trial=trial, baseline=baseline, epochs=epochs, seed=seed, accuracy=acc, report=report,
                  confusion=confusion, fit_seconds=3.0, n_params=1234, data_fingerprint=fingerprint)
    study.set_user_attr(eval_attr_key(key, epochs, seed), run.to_dict())
    return run


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'studies.db'}"
