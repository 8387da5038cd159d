"""Report plots as PNG bytes: Optuna's matplotlib visualisations where they exist, small custom ones otherwise.

Every function returns ``(png, note)``: the PNG bytes, or None and one line saying why the plot is missing
(e.g. fANOVA needs at least two completed trials). Nothing is shown on screen; the Agg backend is used.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

Png = bytes | None
MAX_PARALLEL_PARAMS = 6


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any, close: bool = True, tight: bool = True) -> bytes:
    buffer = io.BytesIO()
    if tight:
        figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    if close:
        _pyplot().close(figure)
    return buffer.getvalue()


def _new_figure(width: float = 7.5, height: float = 4.5) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def _retitle(ax: Any, title: str) -> None:
    """Replace Optuna's generic title (it uses the left or centre slot depending on the plot)."""
    for loc in ("left", "right"):
        ax.set_title("", loc=loc)
    ax.set_title(title)


def _completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def optimization_history(study: optuna.Study) -> tuple[Png, str]:
    if not _completed(study):
        return None, "optimisation history: no completed trial"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name="val accuracy")
    _retitle(ax, f"Optimisation history: {study.study_name}")
    figure = ax.figure
    figure.set_size_inches(7.5, 4.5)
    return _png(figure), ""


def learning_curves(trials: Sequence[FrozenTrial], title: str = "Learning curves") -> tuple[Png, str]:
    """Validation accuracy per epoch of every trial; pruned trials dashed and ending in an x where they stopped."""
    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        return None, "learning curves: no trial reported a validation accuracy"
    figure, ax = _new_figure()
    styles = {
        TrialState.COMPLETE: dict(color="tab:blue", linestyle="-", alpha=0.8, label="complete"),
        TrialState.PRUNED: dict(color="tab:red", linestyle="--", alpha=0.6, label="pruned (cut short)"),
    }
    labelled: set[str] = set()
    for trial in curves:
        steps = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[s] for s in steps]
        baseline = bool(trial.user_attrs.get("baseline"))
        style = dict(styles.get(trial.state, dict(color="grey", linestyle=":", alpha=0.6, label=trial.state.name.lower())))
        if baseline:
            style.update(color="black", alpha=1.0, label="seed baseline")
        label = style.pop("label")
        ax.plot(steps, values, marker="o", markersize=3, linewidth=1.4 if baseline else 1.0,
                label=None if label in labelled else label, **style)
        labelled.add(label)
        if trial.state == TrialState.PRUNED:
            ax.plot(steps[-1], values[-1], marker="x", markersize=8, color=style["color"], linestyle="none")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    integer_epoch_axis(ax, max(max(t.intermediate_values) for t in curves))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(figure, close=False), ""


def integer_epoch_axis(ax: Any, last_epoch: int) -> None:
    """Whole epochs only: matplotlib's integer locator gives up (fractional ticks) when fewer than two whole
    numbers are in view, as with single-epoch studies, so the view spans at least one epoch either side."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(0.5, max(1, last_epoch) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def fanova_importances(study: optuna.Study, seed: int = 0) -> tuple[dict[str, float], str]:
    """fANOVA parameter importances over completed trials; empty with a reason when it cannot be computed."""
    if len(_completed(study)) < 2:
        return {}, "parameter importances: fANOVA needs at least two completed trials"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return {}, f"parameter importances: not computable ({err})"
    return {name: float(value) for name, value in importances.items()}, ""


class _Precomputed(optuna.importance.BaseImportanceEvaluator):
    """Hands importances already computed to Optuna's plot, so fANOVA runs once per report."""

    def __init__(self, importances: dict[str, float]) -> None:
        self.importances = importances

    def evaluate(self, study: optuna.Study, params: list[str] | None = None, *, target: Any = None) -> dict[str, float]:
        return dict(self.importances)


def param_importances(study: optuna.Study, importances: dict[str, float] | None = None,
                      seed: int = 0) -> tuple[Png, str]:
    """Optuna's importance bar chart of fANOVA importances (computed here unless given)."""
    if importances is None:
        importances, note = fanova_importances(study, seed)
        if not importances:
            return None, note
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_param_importances(
            study, evaluator=_Precomputed(importances), target_name="val accuracy")
    _retitle(ax, f"Parameter importances (fANOVA): {study.study_name}")
    figure = ax.figure
    figure.set_size_inches(7.5, 5.0)
    return _png(figure), ""


def parallel_coordinates(study: optuna.Study, params: Sequence[str] | None = None) -> tuple[Png, str]:
    """Parallel coordinates of the given (most important) parameters over completed trials."""
    completed = _completed(study)
    if len(completed) < 2:
        return None, "parallel coordinates: needs at least two completed trials"
    figure = parallel_figure(study, list(params or [])[:MAX_PARALLEL_PARAMS]
                             or sorted(completed[0].params)[:MAX_PARALLEL_PARAMS])
    return _png(figure, tight=False), ""


def parallel_figure(study: optuna.Study, names: Sequence[str]) -> Any:
    """Optuna's parallel-coordinates plot, laid out so labels clear the lines and the title: the title sits
    above the legend Optuna puts over the axes, parameter names are centred below the axes with room kept
    for them, and the per-axis value labels are smaller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study, params=list(names),
                                                                      target_name="val accuracy")
    figure = ax.figure
    figure.set_size_inches(10.0, 6.0)
    for loc in ("left", "center", "right"):
        ax.set_title("", loc=loc)
    figure.suptitle(f"Parallel coordinates (top parameters): {study.study_name}", y=0.98)
    ax.tick_params(axis="x", pad=8, labelsize=8)
    for label in ax.get_xticklabels():
        label.set_rotation(0)
        label.set_horizontalalignment("center")
    for twin in figure.axes:
        if twin is not ax:
            twin.tick_params(which="both", labelsize=7)
    figure.subplots_adjust(left=0.08, right=0.86, top=0.84, bottom=0.12)
    return figure


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> tuple[Png, str]:
    """Row-normalised confusion matrix (recall on the diagonal), counts summed over seeds."""
    from sklearn.metrics import ConfusionMatrixDisplay

    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    figure, ax = _new_figure(7.0, 6.0)
    display = ConfusionMatrixDisplay(normalised, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", values_format=".2f", colorbar=False, xticks_rotation=45)
    ax.grid(False)
    ax.set_title(title)
    return _png(figure, close=False), ""
