"""Two processes creating the same study at once: one creates it (settings, note, baseline, once); the
other resumes it, refused with the usual one-line conflict error when its settings differ."""

import threading

import optuna
import pytest

import cifar_hpo.search.study_setup as study_setup
from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.settings import StudySettings
from cifar_hpo.storage import make_storage


def _url(kind: str, request, tmp_path) -> tuple[str, str]:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'race.db'}", "race"
    return request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_study")


def race(monkeypatch, url: str, name: str, npz, seeds: tuple[int, int]) -> tuple[list, dict[str, int]]:
    """Both callers see "no such study" before either creates it (a barrier right after the check), then
    both try to create it. Returns each caller's OpenedStudy or ConfigError, and how often the note and
    the baseline were written."""
    make_storage(url)  # the tables exist: what races here is the study, not the schema
    barrier = threading.Barrier(2, timeout=20)
    real_exists = study_setup.study_exists
    writes = {"note": 0, "baseline": 0}
    real_note, real_baseline = study_setup.annotate_new_study, study_setup.enqueue_baseline

    def exists_then_wait(storage, study_name):
        found = real_exists(storage, study_name)
        barrier.wait()
        return found

    def counted(key, real):
        def call(*args, **kwargs):
            writes[key] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(study_setup, "study_exists", exists_then_wait)
    monkeypatch.setattr(study_setup, "annotate_new_study", counted("note", real_note))
    monkeypatch.setattr(study_setup, "enqueue_baseline", counted("baseline", real_baseline))
    results: list = [None, None]

    def open_it(i: int) -> None:
        given = {"space": "cnn", "data": str(npz), "val_size": 100, "epochs": 1, "seed": seeds[i], "n_trials": 4}
        try:
            results[i] = study_setup.open_hpo_study(url, name, given, heartbeat_interval=5)
        except ConfigError as err:
            results[i] = err

    threads = [threading.Thread(target=open_it, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(r is not None for r in results), "a racing caller died with an unexpected error"
    return results, writes


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_racing_creators_with_different_settings_one_wins_one_is_refused(kind, request, tmp_path, tiny_npz, monkeypatch):
    url, name = _url(kind, request, tmp_path)
    results, writes = race(monkeypatch, url, name, tiny_npz, seeds=(0, 1))
    opened = [r for r in results if isinstance(r, study_setup.OpenedStudy)]
    refused = [r for r in results if isinstance(r, ConfigError)]
    assert len(opened) == 1 and len(refused) == 1, results
    assert opened[0].created
    message = str(refused[0])
    assert "\n" not in message and "settings differ from the existing study" in message and "seed" in message
    stored = StudySettings.from_study(optuna.load_study(study_name=name, storage=url))
    assert stored.seed == opened[0].settings.seed
    assert writes == {"note": 1, "baseline": 1}


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_racing_creators_with_the_same_settings_both_open_it_once(kind, request, tmp_path, tiny_npz, monkeypatch):
    url, name = _url(kind, request, tmp_path)
    results, writes = race(monkeypatch, url, name, tiny_npz, seeds=(0, 0))
    assert all(isinstance(r, study_setup.OpenedStudy) for r in results), results
    assert sorted(r.created for r in results) == [False, True]
    assert results[0].settings == results[1].settings
    assert writes == {"note": 1, "baseline": 1}
    study = optuna.load_study(study_name=name, storage=url)
    # baseline and priors enqueued once each, before any worker asks
    assert [t.user_attrs.get("baseline") or t.user_attrs.get("prior") for t in study.trials] == [True, "vgg_bn", "resnet"]
