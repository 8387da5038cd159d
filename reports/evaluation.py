"""Test-set evaluation: metrics from predictions (scikit-learn), summaries over seeds, and how runs are stored.

Pure: the caller trains and predicts (search/evaluate.py); this module turns labels into accuracy, the
per-class report in scikit-learn's ``classification_report`` layout, and a confusion matrix. One EvalRun per
(configuration, epochs, seed) is stored in the study's user attrs, so a second report reuses it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

EVAL_PREFIX = "hpo_eval"
EVAL_FORMAT = 2  # 2: runs evaluated from the trial's own model (source "model"); retraining runs stay format 1
RETRAIN, OWN_MODEL = "retrain", "model"
REPORT_ROWS = ("precision", "recall", "f1-score", "support")
AVERAGES = ("macro avg", "weighted avg")


@dataclass(frozen=True)
class EvalRun:
    """One retraining of one configuration with one seed, evaluated on the test set; or (source "model") the
    trial's own model, kept as an Optuna artifact, evaluated as it was trained (seed: the trial's)."""

    key: str  # candidate key: "t<number>" for a trial, "baseline" for the space's BASELINE outside the study
    trial: int | None
    baseline: bool
    epochs: int
    seed: int
    accuracy: float
    report: dict[str, Any]  # classification_report(output_dict=True), keyed by class name
    confusion: list[list[int]]
    fit_seconds: float = 0.0
    n_params: int | None = None
    data_fingerprint: str | None = None
    source: str = RETRAIN
    artifact: str | None = None  # source "model": the artifact id of the model evaluated

    def to_dict(self) -> dict[str, Any]:
        if self.source == RETRAIN:  # the layout of format 1, which older hpo versions read
            return {"format": 1, **{k: v for k, v in asdict(self).items() if k not in ("source", "artifact")}}
        return {"format": EVAL_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> "EvalRun":
        fields = {k: v for k, v in stored.items() if k != "format"}
        return cls(**fields)


@dataclass(frozen=True)
class EvalSummary:
    """A configuration's runs over seeds: accuracy mean +- std, mean per-class metrics, summed confusion."""

    key: str
    trial: int | None
    baseline: bool
    epochs: int
    seeds: int
    seed_list: list[int]
    accuracies: list[float]
    mean: float
    std: float  # sample standard deviation over seeds (0 for one seed)
    report: dict[str, Any]  # per-class and average rows, metrics averaged over seeds
    confusion: list[list[int]]  # summed over seeds
    fit_seconds: float
    n_params: int | None
    source: str = RETRAIN  # "model": the trial's own model, not a retraining

    @property
    def macro_f1(self) -> float:
        return float(self.report["macro avg"]["f1-score"])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "macro_f1": self.macro_f1}


def evaluate_predictions(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                         class_names: Sequence[str]) -> tuple[float, dict[str, Any], list[list[int]]]:
    """Accuracy, the per-class report (every class listed, even if never predicted) and the confusion matrix."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    labels = list(range(len(class_names)))
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    report = classification_report(y_true, y_pred, labels=labels, target_names=list(class_names),
                                   output_dict=True, zero_division=0)
    report["accuracy"] = float(accuracy_score(y_true, y_pred))  # labels= drops it from the dict
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    return report["accuracy"], report, matrix.astype(int).tolist()


def summarize(runs: Sequence[EvalRun]) -> EvalSummary:
    """Mean and std of accuracy over seeds; per-class metrics averaged over seeds; confusion summed."""
    if not runs:
        raise ValueError("summarize needs at least one run")
    first = runs[0]
    accuracies = [r.accuracy for r in runs]
    report: dict[str, Any] = {}
    for name, row in first.report.items():
        if isinstance(row, Mapping):
            report[name] = {metric: statistics.fmean(float(r.report[name][metric]) for r in runs) for metric in row}
            report[name]["support"] = int(row["support"])
    report["accuracy"] = statistics.fmean(accuracies)
    confusion = np.sum([np.asarray(r.confusion) for r in runs], axis=0).astype(int).tolist()
    return EvalSummary(
        key=first.key, trial=first.trial, baseline=first.baseline, epochs=first.epochs, seeds=len(runs),
        seed_list=[r.seed for r in runs], accuracies=accuracies, mean=statistics.fmean(accuracies),
        std=statistics.stdev(accuracies) if len(runs) > 1 else 0.0, report=report, confusion=confusion,
        fit_seconds=statistics.fmean(r.fit_seconds for r in runs), n_params=first.n_params, source=first.source,
    )


def eval_attr_key(key: str, epochs: int, seed: int) -> str:
    """The study user attr holding one run: one attr per run, so concurrent reports never overwrite a dict."""
    return f"{EVAL_PREFIX}:{key}:e{epochs}:s{seed}"


def model_eval_attr_key(key: str, epochs: int, seed: int) -> str:
    """The attr of a run from the trial's own model: apart from retraining runs (whose seed it may share)."""
    return eval_attr_key(f"{key}@{OWN_MODEL}", epochs, seed)


def stored_runs(user_attrs: Mapping[str, Any], key: str, epochs: int, seeds: Sequence[int],
                fingerprint: str | None) -> dict[int, EvalRun]:
    """The runs already stored for ``key`` at ``epochs``, by seed (runs on other data are ignored)."""
    found = {}
    for seed in seeds:
        stored = user_attrs.get(eval_attr_key(key, epochs, seed))
        if not isinstance(stored, Mapping) or stored.get("format", 0) > EVAL_FORMAT:
            continue
        run = EvalRun.from_dict(stored)
        if fingerprint is None or run.data_fingerprint in (None, fingerprint):
            found[seed] = run
    return found


def stored_model_run(user_attrs: Mapping[str, Any], key: str, epochs: int, seed: int, artifact: str,
                     fingerprint: str | None) -> EvalRun | None:
    """The stored evaluation of the trial's own model ``artifact``, if any (on this data)."""
    stored = user_attrs.get(model_eval_attr_key(key, epochs, seed))
    if not isinstance(stored, Mapping) or stored.get("format", 0) > EVAL_FORMAT:
        return None
    run = EvalRun.from_dict(stored)
    if run.artifact != artifact or (fingerprint is not None and run.data_fingerprint not in (None, fingerprint)):
        return None
    return run


def format_report_text(report: Mapping[str, Any], class_names: Sequence[str], digits: int = 4) -> str:
    """The text layout of scikit-learn's classification_report, from a (possibly seed-averaged) report dict."""
    width = max(len(name) for name in [*class_names, *AVERAGES])
    head = f"{'':>{width}} " + " ".join(f"{h:>9}" for h in REPORT_ROWS)
    lines = [head, ""]
    for name in class_names:
        lines.append(_text_row(name, report[name], width, digits))
    lines.append("")
    support = int(report["macro avg"]["support"])
    lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {report['accuracy']:>9.{digits}f} {support:>9}")
    for name in AVERAGES:
        lines.append(_text_row(name, report[name], width, digits))
    return "\n".join(lines)


def _text_row(name: str, row: Mapping[str, Any], width: int, digits: int) -> str:
    values = " ".join(f"{float(row[m]):>9.{digits}f}" for m in REPORT_ROWS[:3])
    return f"{name:>{width}} {values} {int(row['support']):>9}"


def finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)
