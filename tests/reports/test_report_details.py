"""Report details a reader trips over: per-seed means explained, comparison rows only for what exists,
cache fill and trial wall time apart from training, '1 epoch', plot layout (integer epochs, clear labels)."""

from __future__ import annotations

import optuna
from hpo_testkit import SMALL_CNN, make_study, make_trial, store_fake_evaluation

from cifar_hpo.reports.build import study_ranking
from cifar_hpo.reports.evaluation import EvalRun
from cifar_hpo.reports.plots import integer_epoch_axis, parallel_figure
from cifar_hpo.reports.render import PER_SEED_MEAN_NOTE, ReportMeta, report_blocks, to_markdown
from cifar_hpo.search.models.data import CLASS_NAMES
from cifar_hpo.search.settings import StudySettings


def ranking_of(study: optuna.Study, evaluations: dict[str, list[EvalRun]] | None = None):
    return study_ranking(study, StudySettings(epochs=1).__dict__, evaluations or {}, CLASS_NAMES, {}, plot=False)


def markdown(*rankings) -> str:
    return to_markdown(report_blocks(list(rankings), ReportMeta(class_names=list(CLASS_NAMES), folder="out")))


def test_comparison_without_evaluation_shows_only_what_exists_and_says_how_to_get_the_rest() -> None:
    a = make_study("sqlite:///:memory:", "a", StudySettings(), n_complete=2)
    b = make_study("sqlite:///:memory:", "b", StudySettings(), n_complete=2, seed=1)
    text = markdown(ranking_of(a), ranking_of(b))
    comparison = text.split("Comparison of studies")[1].split("## Study")[0]
    table = "\n".join(line for line in comparison.splitlines() if line.startswith("|"))
    assert "test accuracy" not in table and "F1" not in table and "—" not in table
    assert "hpo report --study a --study b --evaluate" in comparison


def test_comparison_with_one_evaluated_study_names_the_other() -> None:
    a = make_study("sqlite:///:memory:", "a", StudySettings(), n_complete=2)
    b = make_study("sqlite:///:memory:", "b", StudySettings(), n_complete=2, seed=1)
    best = ranking_of(a).rows[0]
    runs = [store_fake_evaluation(a, f"t{best.trial}", best.trial, 1, seed, 0.6) for seed in (0, 1)]
    text = markdown(ranking_of(a, {f"t{best.trial}": runs}), ranking_of(b))
    comparison = text.split("Comparison of studies")[1].split("## Study")[0]
    assert "test accuracy" in comparison and "macro F1" in comparison
    assert "hpo report --study b --evaluate" in comparison
    assert PER_SEED_MEAN_NOTE in text  # two seeds: the per-class means are explained


def test_comparison_reports_the_configuration_chosen_by_validation_not_the_best_on_test() -> None:
    a = make_study("sqlite:///:memory:", "a", StudySettings(), n_complete=3)
    b = make_study("sqlite:///:memory:", "b", StudySettings(), n_complete=2, seed=1)
    chosen, runner_up = ranking_of(a).rows[0], ranking_of(a).rows[1]
    low = store_fake_evaluation(a, f"t{chosen.trial}", chosen.trial, 1, 0, 0.5)
    high = store_fake_evaluation(a, f"t{runner_up.trial}", runner_up.trial, 1, 0, 0.9)
    assert high.accuracy > low.accuracy
    evaluations = {f"t{chosen.trial}": [low], f"t{runner_up.trial}": [high]}
    text = markdown(ranking_of(a, evaluations), ranking_of(b))
    comparison = text.split("Comparison of studies")[1].split("## Study")[0]
    row = next(line for line in comparison.splitlines() if line.startswith("| chosen configuration (best validation)"))
    assert f"trial {chosen.trial}" in row and f"trial {runner_up.trial}" not in row
    test_row = next(line for line in comparison.splitlines() if line.startswith("| test accuracy"))
    assert f"{100 * low.accuracy:.2f}%" in test_row and f"{100 * high.accuracy:.2f}%" not in test_row


def test_cache_fill_and_wall_time_are_reported_apart_from_training() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(make_trial(dict(SMALL_CNN), [0.5], feature_cache={"compute_seconds": 61.5}, wall_seconds=80.0,
                               fit_seconds=12.0))
    study.add_trial(make_trial(dict(SMALL_CNN, dense_units=100), [0.4], cache_fill_seconds=0.0, wall_seconds=15.0))
    text = markdown(ranking_of(study))
    header = next(line for line in text.splitlines() if line.startswith("| rank"))
    assert "training (s)" in header and "cache fill (s)" in header and "trial wall time (s)" in header
    row = next(line for line in text.splitlines() if line.startswith("| 1 "))
    assert "61.5" in row and "80.0" in row and "12.0" in row
    assert "up to 1 epoch," in text and "1 epochs" not in text


def test_single_epoch_learning_curve_has_whole_epoch_ticks() -> None:
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    ax.plot([1], [0.5])
    integer_epoch_axis(ax, 1)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1.0]


def test_parallel_coordinates_title_and_labels_clear_the_plot() -> None:
    study = make_study("sqlite:///:memory:", "p", StudySettings(), n_complete=6)
    figure = parallel_figure(study, ["weight_decay", "dense_units", "conv_dropout", "optimizer"])
    renderer = figure.canvas.get_renderer()
    ax = figure.axes[0]
    plot_box = ax.get_window_extent(renderer)
    title = figure._suptitle.get_window_extent(renderer)
    legend_or_axes_top = max([plot_box.y1] + [a.get_window_extent(renderer).y1 for a in figure.axes])
    assert title.y0 > legend_or_axes_top  # the title sits above everything else
    labels = [label.get_window_extent(renderer) for label in ax.get_xticklabels() if label.get_text()]
    assert all(box.y1 <= plot_box.y0 for box in labels)  # names below the axes, not on the lines
    assert all(a.x1 <= b.x0 for a, b in zip(labels, labels[1:]))  # and not on each other
    assert all(box.x0 >= 0 for box in labels)  # nor cut off at the left edge
