import pytest

from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.settings import StudySettings, make_pruner, make_sampler, resolve


def test_new_settings_from_flags():
    settings = resolve(None, {"epochs": 3, "subset": 2000, "seed": None})
    assert settings.epochs == 3 and settings.subset == 2000 and settings.seed == 0


def test_resume_accepts_repeated_and_omitted_flags_and_budget_changes():
    stored = StudySettings(epochs=3, subset=2000, n_trials=4)
    assert resolve(stored, {"epochs": 3}) == stored
    assert resolve(stored, {}) == stored
    assert resolve(stored, {"n_trials": 10}).n_trials == 10


def test_resume_refuses_different_settings():
    stored = StudySettings(epochs=3, sampler="tpe")
    with pytest.raises(ConfigError, match=r"epochs: study has 3, command asks 5.*sampler: study has 'tpe'"):
        resolve(stored, {"epochs": 5, "sampler": "random"})


@pytest.mark.parametrize("flags, message", [
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"sampler": "grid"}, "--sampler must be one of"),
    ({"n_trials": 0}, "--n-trials must be >= 1"),
])
def test_impossible_settings(flags, message):
    with pytest.raises(ConfigError, match=message):
        resolve(None, flags)


def test_sampler_and_pruner_from_settings():
    import optuna

    assert isinstance(make_sampler(StudySettings()), optuna.samplers.TPESampler)
    assert isinstance(make_sampler(StudySettings(sampler="random")), optuna.samplers.RandomSampler)
    assert isinstance(make_pruner(StudySettings()), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(StudySettings(pruner="none")), optuna.pruners.NopPruner)


def test_each_worker_and_process_generation_draws_its_own_stream():
    import optuna

    def first_draw(worker: int, generation: int) -> float:
        study = optuna.create_study(sampler=make_sampler(StudySettings(sampler="random"), worker, generation))
        return study.ask().suggest_float("x", 0, 1)

    draws = {first_draw(w, g) for w in range(2) for g in range(2)}
    assert len(draws) == 4
    assert first_draw(1, 1) == first_draw(1, 1)  # reproducible
