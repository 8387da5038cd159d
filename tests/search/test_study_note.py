"""The study note: what a new study means (space, bounds, data, split, budget), saved for optuna-dashboard."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import optuna
import pytest

from cifar_hpo.search.settings import StudySettings
from cifar_hpo.search.study_note import annotate_new_study, study_note
from cifar_hpo.search.study_setup import enqueue_priors
from cifar_hpo.spaces import build_space, declared_priors
from cifar_hpo.spaces.bounds import describe, space_bounds

get_note = pytest.importorskip("optuna_dashboard").get_note


def test_note_names_every_setting_and_bound() -> None:
    settings = StudySettings(data="/data/cifar10.npz", data_fingerprint="abc123", val_size=2000, subset=8000,
                             epochs=12, seed=7, sampler="random", pruner="median", n_trials=40, timeout=3600,
                             space_overrides={"depth": {"low": 2, "high": 3}})
    space = build_space("cnn", settings.space_overrides)
    note = study_note("s1", settings, space, {})
    for text in ("## s1: `cnn` space", "`/data/cifar10.npz`", "fingerprint `abc123`", "2000 validation images",
                 "subset of 8000 training images", "seed 7", "up to 12 epochs per trial", "40 trials",
                 "timeout 3600 s", "**Sampler**: random", "**pruner**: median", "**Precision**: auto (resolved"):
        assert text in note
    for name, bound in space_bounds(space).items():
        assert f"| {name} | {describe(bound)}" in note
    assert "| depth | [2, 3] (overridden) |" in note
    assert "| convs_per_block | [1, 3] |" in note  # defaults are not marked


def test_note_defaults_say_where_the_data_comes_from() -> None:
    note = study_note("s", StudySettings(), build_space("cnn"), {})
    assert "CIFAR-10 through keras.datasets" in note and "all training images" in note
    assert "timeout" not in note  # no budget line for what was not set
    assert "**Precision**: float32\n" in study_note("s", StudySettings(precision="float32"), build_space("cnn"), {})


def test_annotate_saves_the_note_on_the_study() -> None:
    study = optuna.create_study(study_name="noted", direction="maximize")
    settings = StudySettings(epochs=3)
    annotate_new_study(study, settings, build_space("cnn"), {})
    assert get_note(study) == study_note("noted", settings, build_space("cnn"), {})


def test_without_optuna_dashboard_the_study_has_no_note(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # makes `import optuna_dashboard` fail
    study = optuna.create_study(study_name="plain")
    with caplog.at_level(logging.DEBUG, logger="cifar_hpo.search.study_note"):
        annotate_new_study(study, StudySettings(), build_space("cnn"), {})
    assert "not installed" in caplog.text
    monkeypatch.undo()
    assert get_note(study) == ""


def test_new_hpo_study_carries_the_note_and_a_resumed_one_keeps_it(tmp_path: Path, tiny_npz: Path) -> None:
    from cifar_hpo.search.study_setup import open_hpo_study

    url = f"sqlite:///{tmp_path / 's.db'}"
    given = {"data": str(tiny_npz), "val_size": 100, "epochs": 2, "n_trials": 3}
    created = open_hpo_study(url, "noted", given)
    note = get_note(created.study)
    assert "noted: `cnn` space" in note and str(tiny_npz) in note and created.settings.data_fingerprint in note
    resumed = open_hpo_study(url, "noted", None)
    assert not resumed.created and get_note(resumed.study) == note


def test_inception_note_names_the_weights() -> None:
    pytest.importorskip("cifar_hpo.spaces.inception")
    settings = StudySettings(space="inception", weights="/assets/inception.weights.h5")
    note = study_note("inc", settings, build_space("inception"), {})
    assert "`inception` space" in note and "`/assets/inception.weights.h5`" in note


def test_note_lists_the_priors_this_study_enqueues_built_in_and_declared() -> None:
    overrides = {"base_filters": {"choices": [16, 32]},
                 "priors": {"narrow_resnet": {"like": "resnet", "base_filters": 16}}}
    space = build_space("cnn", overrides)
    declared = declared_priors("cnn", overrides, space)
    note = study_note("p", StudySettings(space_overrides=overrides), space, declared)
    assert "`vgg_bn`, `resnet`, `narrow_resnet` (from the space config)" in note
    assert "| priors |" not in note and "(overridden)" in note  # the priors table is not a bound
    narrowed = {"base_filters": {"choices": [16, 48]}}  # both built-in recipes use 32: not enqueued, not listed
    narrowed_note = study_note("p", StudySettings(space_overrides=narrowed), build_space("cnn", narrowed), {})
    assert "**Priors**" not in narrowed_note
    assert "**Priors**" not in study_note("p", StudySettings(priors=False, space_overrides=overrides), space, declared)


def test_a_prior_the_pins_make_unbuildable_is_neither_queued_nor_listed() -> None:
    overrides = {"depth": {"value": 7}}  # inside the bounds, but 7 blocks of both recipes shrink the map to 1x1
    space = build_space("cnn", overrides)
    study = optuna.create_study(direction="maximize")
    notes = enqueue_priors(study, "cnn", space, {})
    assert notes == [f"prior {name!r} not enqueued: with the pinned depth it cannot be built (feature map is 1x1 "
                     "before pooling after block 6)" for name in ("vgg_bn", "resnet")]
    assert study.get_trials() == []
    assert "**Priors**" not in study_note("p", StudySettings(space_overrides=overrides), space, {})
    study_with_one = optuna.create_study(direction="maximize")  # depth 6 builds: queued with the pin, and listed
    six = build_space("cnn", {"depth": {"value": 6}})
    assert enqueue_priors(study_with_one, "cnn", six, {}) == [
        f"prior {name!r} enqueued with the study's pinned depth = 6" for name in ("vgg_bn", "resnet")]
    assert [t.system_attrs["fixed_params"]["depth"] for t in study_with_one.get_trials()] == [6, 6]  # waiting trials
    assert "`vgg_bn`, `resnet`" in study_note("p", StudySettings(space_overrides={"depth": {"value": 6}}), six, {})
