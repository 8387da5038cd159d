"""Assemble a report from studies: ranking, evaluation summaries, plots; then write every file into a folder.

Reads trials only through Optuna's API; evaluations arrive as EvalRuns (trained by search/evaluate.py or
loaded from the study), so nothing here trains or prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna

from cifar_hpo.reports import plots
from cifar_hpo.reports.evaluation import EvalRun, summarize
from cifar_hpo.reports.export import build_export
from cifar_hpo.reports.ranking import StudyRanking, build_ranking, label, rank_by_test
from cifar_hpo.reports.render import ReportMeta, ranking_csv, ranking_json, report_blocks, to_html, to_markdown
from cifar_hpo.storage.attrs import TUNER_ATTR
from cifar_hpo.storage.names import safe_filename

BEST_CONFIG = "best_config.json"


@dataclass
class ReportFiles:
    """What ``write_report`` wrote (paths relative to the output folder)."""

    folder: Path
    files: list[str] = field(default_factory=list)


def study_ranking(study: optuna.Study, settings: Mapping[str, Any], evaluations: Mapping[str, Sequence[EvalRun]],
                  class_names: Sequence[str], images: dict[str, bytes], *, plot: bool = True) -> StudyRanking:
    """The StudyRanking of one study, its plots added to ``images`` (file name -> PNG bytes)."""
    trials = study.get_trials(deepcopy=False)
    ranking = build_ranking(study.study_name, settings["space"], settings, trials)
    ranking.tuner = study.user_attrs.get(TUNER_ATTR)
    if ranking.rows:
        best = next(t for t in trials if t.number == ranking.rows[0].trial)
        ranking.best_config = build_export(study.study_name, best, settings)
    ranking.summaries = {key: summarize(runs) for key, runs in evaluations.items() if runs}
    ranking.test_rows = rank_by_test(ranking.summaries, ranking.rows)
    if plot:
        add_plots(ranking, study, trials, class_names, images)
    return ranking


def add_plots(ranking: StudyRanking, study: optuna.Study, trials: Sequence[Any], class_names: Sequence[str],
              images: dict[str, bytes]) -> None:
    prefix = safe_filename(study.study_name)  # never hidden (.x), never shared (non-ASCII names)

    def keep(title: str, stem: str, result: tuple[bytes | None, str]) -> None:
        png, note = result
        if png is None:
            ranking.notes.append(note)
            return
        name = f"{prefix}_{stem}.png"
        images[name] = png
        ranking.plots[title] = name

    keep("Optimisation history", "optimization_history", plots.optimization_history(study))
    keep("Learning curves (validation accuracy per epoch; pruned trials dashed, x where cut short)",
         "learning_curves", plots.learning_curves(trials, f"Learning curves: {study.study_name}"))
    ranking.importances, note = plots.fanova_importances(study)
    if ranking.importances:
        keep("Parameter importances (fANOVA)", "param_importances", plots.param_importances(study, ranking.importances))
    else:
        ranking.notes.append(note)
    top = list(ranking.importances) or None
    keep("Parallel coordinates of the most important parameters", "parallel_coordinates",
         plots.parallel_coordinates(study, top))
    for t in ranking.test_rows:
        summary = ranking.summaries[t.key]
        png, _ = plots.confusion_matrix(summary.confusion, class_names,
                                        f"Confusion matrix (row-normalised), {label(t.trial, t.baseline)}")
        if png is not None:
            name = f"{prefix}_confusion_{safe_filename(t.key)}.png"
            images[name] = png
            ranking.plots_confusion[t.key] = name


def write_report(folder: str | Path, rankings: Sequence[StudyRanking], images: Mapping[str, bytes],
                 meta: ReportMeta) -> ReportFiles:
    """report.md, report.html (self-contained), ranking.csv/json, best_config.json (+ one per study), PNGs."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    out = ReportFiles(folder)

    def write(name: str, content: str | bytes) -> None:
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
        out.files.append(name)

    for name, png in images.items():
        write(name, png)
    with_config = [r for r in rankings if r.best_config]
    for r in with_config:
        r.best_config_file = BEST_CONFIG if len(rankings) == 1 else f"best_config_{safe_filename(r.study)}.json"
    blocks = report_blocks(rankings, meta)
    write("report.md", to_markdown(blocks))
    write("report.html", to_html(blocks, images, meta.title))
    write("ranking.json", ranking_json(rankings, meta))
    write("ranking.csv", ranking_csv(rankings))
    if with_config:
        write(BEST_CONFIG, json.dumps(with_config[0].best_config, indent=2) + "\n")
    if len(rankings) > 1:
        for r in with_config:
            write(f"best_config_{safe_filename(r.study)}.json", json.dumps(r.best_config, indent=2) + "\n")
    return out
