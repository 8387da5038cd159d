"""Ranking: pure functions from FrozenTrials to rows a person can decide with.

Trials are ranked by their best validation accuracy (the objective's value). The seed baseline (user attr
``baseline``) gets its own row and every row its gain over it. Test-set results, when evaluated, are
attached by trial number and give a second ranking by the test mean; they never choose the exported config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from optuna.trial import FrozenTrial, TrialState

from cifar_hpo.storage.counting import TrialCounts, count_frozen_trials


@dataclass(frozen=True)
class RankedRow:
    """One trial as the report shows it; ``rank`` is None for trials that did not complete."""

    trial: int
    state: str
    rank: int | None
    val_accuracy: float | None  # best validation accuracy (for pruned trials: best reported before pruning)
    params: dict[str, Any]
    best_epoch: int | None
    epochs_run: int | None
    n_params: int | None
    fit_seconds: float | None
    images_per_s: float | None
    wall_seconds: float | None
    baseline: bool = False
    gain_vs_baseline: float | None = None  # val accuracy minus the baseline's, in accuracy points (0..1)
    cache_fill_seconds: float | None = None  # inception: filling the feature cache, outside fit_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial, "state": self.state, "rank": self.rank, "baseline": self.baseline,
            "val_accuracy": self.val_accuracy, "gain_vs_baseline": self.gain_vs_baseline,
            "best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "n_params": self.n_params,
            "fit_seconds": self.fit_seconds, "images_per_s": self.images_per_s, "wall_seconds": self.wall_seconds,
            "cache_fill_seconds": self.cache_fill_seconds, "params": dict(self.params),
        }


@dataclass(frozen=True)
class TestRow:
    """A configuration ranked by its test-set accuracy over seeds (see reports.evaluation.EvalSummary)."""

    rank: int
    key: str
    trial: int | None
    baseline: bool
    mean: float
    std: float
    seeds: int
    epochs: int
    val_accuracy: float | None
    gain_vs_baseline: float | None
    macro_f1: float


@dataclass(frozen=True)
class Separation:
    """Whether the top two test-set means differ by more than their spread (mean +- std intervals apart)."""

    first: str
    second: str
    gap: float
    spread: float
    distinct: bool

    def sentence(self) -> str:
        verdict = "differ by more than their spread" if self.distinct else "do NOT differ by more than their spread"
        return (f"The top two configurations ({self.first} and {self.second}) {verdict}: test accuracy gap "
                f"{100 * self.gap:.2f} points vs. combined std {100 * self.spread:.2f} points over seeds.")


def find_baseline(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The seed baseline trial (the first one marked, preferring a completed one)."""
    marked = [t for t in trials if t.user_attrs.get("baseline")]
    complete = [t for t in marked if t.state == TrialState.COMPLETE]
    return (complete or marked or [None])[0]


def trial_score(trial: FrozenTrial) -> float | None:
    """The objective value of a completed trial, else the best validation accuracy it reported."""
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        return float(trial.value)
    reported = [v for v in trial.intermediate_values.values() if v is not None and math.isfinite(v)]
    return max(reported) if reported else None


def _row(trial: FrozenTrial, rank: int | None, baseline_value: float | None, is_baseline: bool) -> RankedRow:
    attrs = trial.user_attrs
    value = trial_score(trial)
    gain = None if value is None or baseline_value is None or rank is None else value - baseline_value
    return RankedRow(
        trial=trial.number, state=trial.state.name, rank=rank, val_accuracy=value, params=dict(trial.params),
        best_epoch=attrs.get("best_epoch"), epochs_run=attrs.get("epochs_run", len(trial.intermediate_values) or None),
        n_params=attrs.get("params"), fit_seconds=attrs.get("fit_seconds"),
        images_per_s=attrs.get("train_images_per_s"), wall_seconds=attrs.get("wall_seconds"),
        baseline=is_baseline, gain_vs_baseline=gain, cache_fill_seconds=cache_fill_seconds(attrs),
    )


def cache_fill_seconds(attrs: Mapping[str, Any]) -> float | None:
    """Seconds a trial spent filling the feature cache (inception; trials before cache_fill_seconds was
    recorded have it in feature_cache.compute_seconds); None when it has no cache."""
    if "cache_fill_seconds" in attrs:
        return attrs["cache_fill_seconds"]
    cache = attrs.get("feature_cache")
    return cache.get("compute_seconds") if isinstance(cache, Mapping) else None


def rank_trials(trials: Sequence[FrozenTrial]) -> list[RankedRow]:
    """Completed trials by best validation accuracy (highest first; ties: earlier trial first)."""
    baseline = find_baseline(trials)
    baseline_value = baseline.value if baseline is not None and baseline.state == TrialState.COMPLETE else None
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    complete.sort(key=lambda t: (-float(t.value), t.number))  # type: ignore[arg-type]
    return [_row(t, i + 1, baseline_value, baseline is not None and t.number == baseline.number)
            for i, t in enumerate(complete)]


def unranked_rows(trials: Sequence[FrozenTrial]) -> list[RankedRow]:
    """Pruned, failed, running and waiting trials (for the CSV: every trial appears once)."""
    baseline = find_baseline(trials)
    others = [t for t in trials if t.state != TrialState.COMPLETE or t.value is None]
    return [_row(t, None, None, baseline is not None and t.number == baseline.number)
            for t in sorted(others, key=lambda t: t.number)]


def baseline_row(rows: Sequence[RankedRow], trials: Sequence[FrozenTrial]) -> RankedRow | None:
    """The baseline's ranked row, or its unranked row when it did not complete; None without a baseline."""
    for row in rows:
        if row.baseline:
            return row
    baseline = find_baseline(trials)
    return None if baseline is None else _row(baseline, None, None, True)


def top_rows(rows: Sequence[RankedRow], k: int) -> list[RankedRow]:
    """The first ``k`` rows plus the baseline's row if it ranks lower (the report always shows it)."""
    top = list(rows[:k])
    top += [r for r in rows[k:] if r.baseline]
    return top


def rank_by_test(summaries: Mapping[str, Any], rows: Sequence[RankedRow]) -> list[TestRow]:
    """Evaluated configurations ranked by test-set mean accuracy (highest first).

    ``summaries`` maps a candidate key to an EvalSummary-like object (trial, baseline, mean, std, seeds,
    epochs, macro_f1); the baseline's test mean gives each row's gain.
    """
    by_trial = {r.trial: r for r in rows}
    base = [s for s in summaries.values() if s.baseline]
    base_mean = base[0].mean if base else None
    ordered = sorted(summaries.items(), key=lambda kv: (-kv[1].mean, kv[0]))
    out = []
    for i, (key, s) in enumerate(ordered):
        row = by_trial.get(s.trial) if s.trial is not None else None
        out.append(TestRow(
            rank=i + 1, key=key, trial=s.trial, baseline=s.baseline, mean=s.mean, std=s.std, seeds=s.seeds,
            epochs=s.epochs, val_accuracy=row.val_accuracy if row else None,
            gain_vs_baseline=None if base_mean is None else s.mean - base_mean, macro_f1=s.macro_f1,
        ))
    return out


def separation(test_rows: Sequence[TestRow]) -> Separation | None:
    """Do the top two test means differ by more than the sum of their standard deviations over seeds?"""
    if len(test_rows) < 2:
        return None
    a, b = test_rows[0], test_rows[1]
    gap, spread = a.mean - b.mean, a.std + b.std
    return Separation(label(a.trial, a.baseline), label(b.trial, b.baseline), gap, spread, gap > spread)


def label(trial: int | None, baseline: bool) -> str:
    name = "baseline" if trial is None else f"trial {trial}"
    return f"{name} (baseline)" if baseline and trial is not None else name


def param_names(rows: Iterable[RankedRow]) -> list[str]:
    """Parameter names in first-seen order (studies of different spaces have different parameters)."""
    names: dict[str, None] = {}
    for row in rows:
        for name in row.params:
            names.setdefault(name, None)
    return list(names)


@dataclass
class StudyRanking:
    """Everything the renderers need about one study, computed once from its trials."""

    study: str
    space: str
    settings: dict[str, Any]
    counts: TrialCounts
    rows: list[RankedRow]
    unranked: list[RankedRow]
    baseline: RankedRow | None
    best_config: dict[str, Any] | None = None  # the export document of the best trial (by validation)
    best_config_file: str = "best_config.json"  # its file name in the report folder
    summaries: dict[str, Any] = field(default_factory=dict)  # candidate key -> EvalSummary
    test_rows: list[TestRow] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # plot title -> PNG file name
    plots_confusion: dict[str, str] = field(default_factory=dict)  # candidate key -> confusion-matrix PNG
    importances: dict[str, float] = field(default_factory=dict)  # fANOVA, most important first
    tuner: str | None = None  # the KerasTuner tuner of an `--engine kerastuner` study
    notes: list[str] = field(default_factory=list)

    @property
    def separation(self) -> Separation | None:
        return separation(self.test_rows)


def build_ranking(study: str, space: str, settings: Mapping[str, Any], trials: Sequence[FrozenTrial]) -> StudyRanking:
    rows = rank_trials(trials)
    return StudyRanking(study=study, space=space, settings=dict(settings), counts=count_frozen_trials(trials), rows=rows,
                        unranked=unranked_rows(trials), baseline=baseline_row(rows, trials))
