"""Retraining and test-set evaluation: the TensorFlow side of `hpo report --evaluate` and `hpo retrain`.

Configurations are retrained on the study's training split (never on the test set), then evaluated once
on the test set; or, when a trial's own model was kept as an Optuna artifact (storage/artifacts.py), that
model is evaluated as it is, without retraining. reports/evaluation.py turns the predictions into metrics. Each run is stored in the
study right after it finishes, so an interrupted or repeated report resumes instead of retraining.
TensorFlow is imported inside the functions that train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from cifar_hpo.reports.evaluation import (OWN_MODEL, EvalRun, eval_attr_key, evaluate_predictions,
                                          model_eval_attr_key, stored_model_run, stored_runs)
from cifar_hpo.reports.export import ExportedConfig, export_epochs
from cifar_hpo.reports.ranking import RankedRow, find_baseline
from cifar_hpo.search.models.data import CLASS_NAMES, Cifar10, Split, split_train_val
from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.settings import ALL_IMAGES, StudySettings, absolute_data_path
from cifar_hpo.spaces import get_space_module
from cifar_hpo.storage.artifacts import ModelStore, kept_model


@dataclass(frozen=True)
class Candidate:
    """A configuration to evaluate: a trial of the study, or the space's BASELINE when no trial holds it."""

    key: str
    trial: int | None
    baseline: bool
    params: dict[str, Any]
    epochs: int


def choose_candidates(trials: Sequence[FrozenTrial], rows: Sequence[RankedRow], top_k: int, settings: StudySettings,
                      epochs: int | None, *, with_baseline: bool = True) -> list[Candidate]:
    """The top ``top_k`` completed trials by validation accuracy, plus the seed baseline (``with_baseline``)."""
    by_number = {t.number: t for t in trials}
    chosen = [by_number[row.trial] for row in rows[:top_k]]
    if not with_baseline:
        return [Candidate(f"t{t.number}", t.number, bool(t.user_attrs.get("baseline")), dict(t.params),
                          epochs or export_epochs(t, settings.epochs)) for t in chosen]
    baseline = find_baseline(trials)
    if baseline is not None and baseline.params and all(t.number != baseline.number for t in chosen):
        chosen.append(baseline)
    out = [Candidate(f"t{t.number}", t.number, bool(t.user_attrs.get("baseline")), dict(t.params),
                     epochs or export_epochs(t, settings.epochs)) for t in chosen]
    if baseline is None or not baseline.params:
        params = get_space_module(settings.space).BASELINE.to_params()
        out.append(Candidate("baseline", None, True, params, epochs or settings.epochs))
    return out


def evaluation_seeds(settings: StudySettings, n_seeds: int) -> list[int]:
    """The same seeds for every configuration (a fair comparison), derived from the study's seed."""
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, but got {n_seeds}")
    return [settings.seed + k for k in range(n_seeds)]


def stored_evaluations(study: optuna.Study, candidates: Sequence[Candidate], seeds: Sequence[int],
                       fingerprint: str | None) -> dict[str, list[EvalRun]]:
    attrs = study.user_attrs
    found = {}
    for c in candidates:
        runs = stored_runs(attrs, c.key, c.epochs, seeds, fingerprint)
        if runs:
            found[c.key] = [runs[s] for s in seeds if s in runs]
    return found


def evaluate_candidates(study: optuna.Study, settings: StudySettings, data: Cifar10, candidates: Sequence[Candidate],
                        seeds: Sequence[int], on_run: Callable[[str], None] | None = None) -> dict[str, list[EvalRun]]:
    """Train what is not stored yet, store each run as it finishes; returns every candidate's runs."""
    fingerprint = data.fingerprint()
    results = stored_evaluations(study, candidates, seeds, fingerprint)
    split = split_train_val(data, settings.val_size, settings.subset, settings.seed)
    for c in candidates:
        have = {r.seed for r in results.get(c.key, [])}
        for seed in seeds:
            if seed in have:
                continue
            if on_run:
                on_run(f"{c.key}: training {c.epochs} epoch(s) with seed {seed}")
            _, run = train_and_evaluate(settings, c, split, data, seed)
            study.set_user_attr(eval_attr_key(c.key, c.epochs, seed), run.to_dict())
            results.setdefault(c.key, []).append(run)
        if c.key in results:
            results[c.key].sort(key=lambda r: seeds.index(r.seed))
    return results


@dataclass(frozen=True)
class KeptModel:
    """A candidate trial's own model in the study's artifact store: evaluated instead of retrained."""

    artifact: str
    epochs: int  # the epochs the trial trained
    seed: int  # the trial's training seed
    fit_seconds: float
    n_params: int | None


def kept_models(study: optuna.Study, settings: StudySettings, candidates: Sequence[Candidate],
                store: ModelStore | None) -> dict[str, KeptModel]:
    """The candidates whose trial's model is still kept, by candidate key."""
    if store is None:
        return {}
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    attrs = study.user_attrs
    found = {}
    for c in candidates:
        trial = by_number.get(c.trial) if c.trial is not None else None
        artifact = kept_model(trial, attrs, store) if trial is not None else None
        if artifact is not None:
            u = trial.user_attrs
            found[c.key] = KeptModel(artifact, int(u.get("epochs_run") or settings.epochs),
                                     settings.seed + trial.number, float(u.get("fit_seconds") or 0.0), u.get("params"))
    return found


def stored_model_evaluations(study: optuna.Study, models: dict[str, KeptModel],
                             fingerprint: str | None) -> dict[str, list[EvalRun]]:
    attrs = study.user_attrs
    found = {}
    for key, m in models.items():
        run = stored_model_run(attrs, key, m.epochs, m.seed, m.artifact, fingerprint)
        if run is not None:
            found[key] = [run]
    return found


def evaluate_kept_models(study: optuna.Study, settings: StudySettings, data: Cifar10, candidates: Sequence[Candidate],
                         models: dict[str, KeptModel], store: ModelStore,
                         on_run: Callable[[str], None] | None = None) -> dict[str, list[EvalRun]]:
    """Evaluate each kept model not evaluated yet on the test set (no training); store each run."""
    results = stored_model_evaluations(study, models, data.fingerprint())
    for c in candidates:
        if c.key not in models or c.key in results:
            continue
        if on_run:
            on_run(f"{c.key}: evaluating the trial's own model (no retraining)")
        run = evaluate_kept_model(settings, c, models[c.key], store, data)
        study.set_user_attr(model_eval_attr_key(c.key, run.epochs, run.seed), run.to_dict())
        results[c.key] = [run]
    return results


def evaluate_kept_model(settings: StudySettings, candidate: Candidate, kept: KeptModel, store: ModelStore,
                        data: Cifar10) -> EvalRun:
    """Load a trial's model from the artifact store and score it on the test set with the study's TTA."""
    import tempfile
    from pathlib import Path

    import keras
    from optuna.artifacts import download_artifact

    from cifar_hpo.search.runtime.objective import clear_tensorflow_state, get_trainer

    get_trainer(settings.space)  # imports the space's model module: its custom layers must be registered
    with tempfile.TemporaryDirectory(prefix="hpo-model-") as folder:
        path = Path(folder) / "model.keras"  # Keras loads the native format by its file name
        download_artifact(artifact_store=store, artifact_id=kept.artifact, file_path=str(path))
        model = keras.models.load_model(path)
    try:
        y_pred = predict_labels(model, data.x_test, tta=settings.tta)
    finally:
        del model
        clear_tensorflow_state()
    accuracy, report, confusion = evaluate_predictions(data.y_test, y_pred, CLASS_NAMES)
    return EvalRun(key=candidate.key, trial=candidate.trial, baseline=candidate.baseline, epochs=kept.epochs,
                   seed=kept.seed, accuracy=accuracy, report=report, confusion=confusion,
                   fit_seconds=round(kept.fit_seconds, 3), n_params=kept.n_params,
                   data_fingerprint=data.fingerprint(), source=OWN_MODEL, artifact=kept.artifact)


def train_and_evaluate(settings: StudySettings, candidate: Candidate, split: Split, data: Cifar10,
                       seed: int) -> tuple[Any, EvalRun]:
    """Retrain one configuration with one seed on the training split, then evaluate it on the test set."""
    from cifar_hpo.search.runtime.objective import clear_tensorflow_state

    model, result = retrain(settings.space, candidate.params, split, epochs=candidate.epochs, seed=seed,
                            settings=settings)
    try:
        y_pred = predict_labels(model, data.x_test, tta=settings.tta)
    finally:
        clear_tensorflow_state()
    accuracy, report, confusion = evaluate_predictions(data.y_test, y_pred, CLASS_NAMES)
    run = EvalRun(key=candidate.key, trial=candidate.trial, baseline=candidate.baseline, epochs=candidate.epochs,
                  seed=seed, accuracy=accuracy, report=report, confusion=confusion,
                  fit_seconds=round(result.fit_seconds, 3), n_params=result.params,
                  data_fingerprint=data.fingerprint())
    return model, run


def retrain(space: str, params: dict[str, Any], split: Split, *, epochs: int, seed: int,
            settings: StudySettings, reporter: Any = None) -> tuple[Any, Any]:
    """The space's own trainer, as the search ran it but without a trial (nothing is pruned; ``reporter``
    may watch the epochs)."""
    import keras

    from cifar_hpo.search.models.precision import apply_precision
    from cifar_hpo.search.runtime.objective import get_trainer

    config = get_space_module(space).config_from_params(dict(params))
    keras.utils.set_random_seed(seed)
    apply_precision(settings.precision)  # the study's precision, resolved on this machine as a worker would
    return get_trainer(space)(config, split, epochs=epochs, trial=reporter, seed=seed, settings=settings)


def predict_labels(model: Any, x: np.ndarray, tta: str = "none", batch_size: int = 256) -> np.ndarray:
    """Class ids for raw uint8 images, with the study's test-time augmentation (as validation was scored)."""
    from cifar_hpo.search.models.training import predict_probabilities

    return predict_probabilities(model, x, tta, batch_size).argmax(axis=-1)


def settings_for_export(exported: ExportedConfig, data_override: str | None, epochs: int | None,
                        weights: str | None, subset: int | str | None = None) -> StudySettings:
    """StudySettings that reproduce the exported configuration's training conditions (the trainer's settings=).

    Their seed is the split's seed (which images are validation); the training seed is passed separately.
    ``subset`` replaces the searched training subset (a count, or "all"); the validation split does not
    depend on it (cifar_hpo.search.models.data.split_train_val draws validation first).
    """
    data = exported.data
    values: dict[str, Any] = {
        "space": exported.space,
        "data": absolute_data_path(data_override) if data_override else data.get("path"),
        "data_fingerprint": data.get("fingerprint"),
        "val_size": data.get("val_size"), "seed": data.get("seed"),
        "subset": data.get("subset") if subset is None else (None if subset == ALL_IMAGES else subset),
        "epochs": epochs or exported.epochs, "weights": weights or exported.weights, "tta": exported.tta,
        "precision": exported.precision,
    }
    try:
        settings = StudySettings(**{k: v for k, v in values.items() if v is not None})
    except TypeError as err:
        raise ConfigError(f"config {exported.source!r}: bad data settings ({err})") from None
    return settings


def retrain_exported(exported: ExportedConfig, settings: StudySettings, data: Cifar10, seed: int,
                     reporter: Any = None) -> tuple[Any, Any, EvalRun]:
    """`hpo retrain`: train the exported config on its training split, evaluate once on the test set.
    ``reporter`` (a Reporter that prunes nothing) hears each epoch's validation accuracy."""
    split = split_train_val(data, settings.val_size, settings.subset, settings.seed)
    model, result = retrain(exported.space, exported.params, split, epochs=settings.epochs, seed=seed,
                            settings=settings, reporter=reporter)
    y_pred = predict_labels(model, data.x_test, tta=settings.tta)
    accuracy, report, confusion = evaluate_predictions(data.y_test, y_pred, CLASS_NAMES)
    run = EvalRun(key=f"t{exported.trial}" if exported.trial is not None else "config", trial=exported.trial,
                  baseline=False, epochs=settings.epochs, seed=seed, accuracy=accuracy, report=report,
                  confusion=confusion, fit_seconds=round(result.fit_seconds, 3), n_params=result.params,
                  data_fingerprint=data.fingerprint())
    return model, result, run
