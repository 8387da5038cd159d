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
    ({"epochs": 4, "min_resource": 5}, r"--min-resource must be between 1 and --epochs \(4\), but got 5"),
    ({"min_resource": 0}, "--min-resource must be between 1"),
    ({"pruner": "median", "min_resource": 2}, "--min-resource applies to the hyperband pruner"),
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


def test_hyperband_first_rung_is_the_studys_min_resource_and_old_studies_keep_one_epoch():
    import optuna

    pruner = make_pruner(StudySettings(epochs=8, min_resource=2))
    assert pruner._min_resource == 2 and pruner._max_resource == 8  # private: Optuna has no public getter
    study = optuna.create_study()
    attrs = StudySettings(epochs=8, min_resource=3).to_attrs()
    del attrs["hpo_settings"]["min_resource"]  # what an hpo before the setting wrote
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    assert StudySettings.from_study(study).min_resource == 1
    with pytest.raises(ConfigError, match="min_resource: study has 1, command asks 2"):
        resolve(StudySettings.from_study(study), {"min_resource": 2})


def params_of(opened_study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in opened_study.study.trials]


def cnn_objective(trial) -> float:
    """Suggests a CNN configuration as the real objective does, and scores it without training."""
    from cifar_hpo.spaces.cnn import InfeasibleConfig, suggest

    try:
        config = suggest(trial)
    except InfeasibleConfig:
        return 0.0
    return float(config.learning_rate)


def study_flags(tiny_npz, n_trials: int) -> dict:
    return {"data": str(tiny_npz), "val_size": 100, "epochs": 1, "seed": 7, "baseline": False, "priors": False,
            "n_trials": n_trials}


def test_resumes_and_joined_workers_never_repeat_start_up_draws(tmp_path, tiny_npz):
    """Issue 12: every rerun of hpo search, and every worker left at its default index, replayed the same draws."""
    from cifar_hpo.search.study_setup import open_hpo_study
    from cifar_hpo.search.runtime.worker import run_worker

    url = f"sqlite:///{tmp_path / 's.db'}"
    for total in (2, 4, 6):  # created, then resumed twice: a new sampler each time, as a new command has
        run_worker(open_hpo_study(url, "s", study_flags(tiny_npz, 40)).study, cnn_objective, n_trials=total)
    workers = [open_hpo_study(url, "s", None) for _ in range(2)]  # two `hpo worker` with the default index
    for total in (7, 8, 9, 10):  # they take turns, each keeping its own sampler
        run_worker(workers[total % 2].study, cnn_objective, n_trials=total)
    params = params_of(workers[0])
    assert len(params) == 10  # all random start-up trials (TPE starts modelling after 10 of a 40-trial study)
    assert len(set(params)) == 10, "a configuration was drawn twice"


def test_a_serial_study_draws_the_same_configurations_resumed_or_not(tmp_path, tiny_npz):
    """Draws depend on (seed, trial number) only: resuming in pieces gives the one-go study's configurations,
    through the random start-up trials and the model-based ones after them (5 start-up trials here)."""
    from cifar_hpo.search.study_setup import open_hpo_study
    from cifar_hpo.search.runtime.worker import run_worker

    one_go = open_hpo_study(f"sqlite:///{tmp_path / 'a.db'}", "s", study_flags(tiny_npz, 8))
    run_worker(one_go.study, cnn_objective, n_trials=8)
    url = f"sqlite:///{tmp_path / 'b.db'}"
    for total in (3, 6, 8):
        pieces = open_hpo_study(url, "s", study_flags(tiny_npz, total))
        run_worker(pieces.study, cnn_objective, n_trials=total)
    assert len(params_of(one_go)) == 8
    assert params_of(pieces) == params_of(one_go)


def test_same_seed_and_trial_number_draw_the_same_random_configuration():
    import optuna

    def draws(settings: StudySettings) -> list[float]:
        study = optuna.create_study(sampler=make_sampler(settings))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        return [t.params["x"] for t in study.trials]

    for sampler in ("random", "tpe"):
        assert draws(StudySettings(sampler=sampler)) == draws(StudySettings(sampler=sampler))
        assert len(set(draws(StudySettings(sampler=sampler)))) == 3
        assert draws(StudySettings(sampler=sampler, seed=1)) != draws(StudySettings(sampler=sampler))


def test_precision_defaults_to_auto_for_new_studies_and_is_checked():
    assert resolve(None, {}).precision == "auto"
    assert resolve(None, {"precision": "bf16"}).precision == "bf16"
    with pytest.raises(ConfigError, match=r"--precision must be one of \['auto', 'float32', 'bf16', 'fp16'\]"):
        resolve(None, {"precision": "half"})


def test_a_study_created_before_precision_existed_loads_as_float32():
    import optuna

    study = optuna.create_study()
    attrs = StudySettings(epochs=3).to_attrs()
    del attrs["hpo_settings"]["precision"]  # what an older hpo wrote
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    stored = StudySettings.from_study(study)
    assert stored.precision == "float32"
    assert resolve(stored, {}).precision == "float32"  # resuming without the flag keeps it
    with pytest.raises(ConfigError, match="precision: study has 'float32', command asks 'auto'"):
        resolve(stored, {"precision": "auto"})


def test_resume_refuses_a_different_precision():
    stored = StudySettings(precision="bf16")
    assert resolve(stored, {"precision": "bf16"}) == stored
    with pytest.raises(ConfigError, match="precision: study has 'bf16', command asks 'fp16'"):
        resolve(stored, {"precision": "fp16"})
