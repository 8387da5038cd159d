"""The short note a new study carries (space, bounds, data, split, budget), shown by optuna-dashboard.

Written once, when the study is created, through optuna-dashboard's note API, so a person watching the
dashboard sees what a trial means without the command line that started it. optuna-dashboard is an
optional extra: without it the study simply has no note.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import optuna

from cifar_hpo.search.settings import SUBSET_VAL_MAX, SUBSET_VAL_MIN, SUBSET_VAL_RATIO, StudySettings, default_val_size
from cifar_hpo.spaces import bound_overrides, get_space_module, place_recipe
from cifar_hpo.spaces.bounds import describe, space_bounds

_logger = logging.getLogger(__name__)


def study_note(study_name: str, settings: StudySettings, space: Any, declared: Mapping[str, Any]) -> str:
    """The note's Markdown: settings first, then one table row per bound (overridden ones marked).
    ``declared``: the recipes the space config declares (``spaces.declared_priors``)."""
    data = settings.data or "CIFAR-10 through keras.datasets"
    subset = f"a stratified subset of {settings.subset} training images" if settings.subset else "all training images"
    validation = f"{settings.val_size} validation images"
    if settings.subset and settings.val_size == default_val_size(settings.subset):
        validation += (f" (the default for --subset {settings.subset}: one per {SUBSET_VAL_RATIO} training images, "
                       f"{SUBSET_VAL_MIN} to {SUBSET_VAL_MAX})")
    budget = [f"up to {settings.epochs} epochs per trial"]
    if settings.n_trials is not None:
        budget.append(f"{settings.n_trials} trials")
    if settings.timeout is not None:
        budget.append(f"timeout {settings.timeout:g} s")
    lines = [
        f"## {study_name}: `{settings.space}` space",
        "",
        f"- **Data**: `{data}` (fingerprint `{settings.data_fingerprint or 'unknown'}`)",
        f"- **Split**: {validation} held out of the training set, stratified; "
        f"trained on {subset}; seed {settings.seed}. The test set is never used to choose hyperparameters.",
        f"- **Budget**: {', '.join(budget)}"
        + (f" (preset `{settings.preset}`: what no flag sized; CPU-sized bounds are marked below)"
           if settings.preset != "full" else ""),
        f"- **Sampler**: {settings.sampler}; **pruner**: {settings.pruner} on validation accuracy per epoch"
        + (f" (first rung after {settings.min_resource} epoch{'s' if settings.min_resource > 1 else ''})"
           if settings.pruner == "hyperband" else ""),
        f"- **Engine**: {settings.engine}; seed baseline enqueued first: {'yes' if settings.baseline else 'no'}",
        "- **Scoring**: validation (and later test) accuracy "
        + ("with horizontal-flip test-time augmentation (predictions of each image and its mirror averaged)"
           if settings.tta == "flip" else "without test-time augmentation"),
        f"- **Precision**: {settings.precision}"
        + (" (resolved by each trial process; its `precision` user attr holds the Keras policy it used)"
           if settings.precision == "auto" else ""),
    ]
    if settings.priors and settings.engine == "optuna":
        built_in = get_space_module(settings.space).PRIORS
        priors = [f"`{name}`" for name, config in built_in.items()
                  if not place_recipe(settings.space, space, config).refusal]
        priors += [f"`{name}` (from the space config)" for name in declared]
        if priors:
            lines.append("- **Priors** enqueued after the baseline (strong known recipes, `--no-priors` turns them "
                         "off): " + ", ".join(priors))
    if settings.space == "inception":
        lines.append(f"- **Weights**: `{settings.weights}`")
    lines += [
        "- **Trials**: intermediate values are validation accuracy per epoch; user attrs hold params, "
        "best_epoch, train_images_per_s, fit_seconds and the full history.",
        "",
        "| parameter | bounds |",
        "|---|---|",
    ]
    overridden = set(bound_overrides(settings.space_overrides))
    for name, bound in space_bounds(space).items():
        mark = " (overridden)" if name in overridden else ""
        lines.append(f"| {name} | {describe(bound)}{mark} |")
    return "\n".join(lines) + "\n"


def annotate_new_study(study: optuna.Study, settings: StudySettings, space: Any, declared: Mapping[str, Any]) -> None:
    """Save the note on a study just created; skipped (debug log) when optuna-dashboard is not installed."""
    try:
        from optuna_dashboard import save_note
    except ImportError:
        _logger.debug("optuna-dashboard is not installed; study %r gets no note", study.study_name)
        return
    save_note(study, study_note(study.study_name, settings, space, declared))
