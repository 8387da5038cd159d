import optuna
import pytest

from cifar_hpo.spaces import build_space
from cifar_hpo.spaces.bounds import space_bounds
from cifar_hpo.spaces.cnn import BASELINE, BASELINE_PARAMS, CnnConfig, CnnSpace, InfeasibleConfig, suggest


def test_baseline_round_trips_through_a_fixed_trial():
    config = suggest(optuna.trial.FixedTrial(BASELINE.to_params()), CnnSpace())
    assert config == BASELINE


def test_baseline_lies_inside_the_default_space():
    for name, bound in space_bounds(CnnSpace()).items():
        assert bound.contains(getattr(BASELINE, name)), name


def test_baseline_is_the_hand_tuned_model():
    from cifar_hpo.search.models.cnn import build_cnn

    model = build_cnn(BASELINE)
    assert model.count_params() == BASELINE_PARAMS == 356_810
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == "valid" for c in convs)


def test_space_covers_the_required_knobs():
    names = set(space_bounds(CnnSpace()))
    required = {"depth", "convs_per_block", "base_filters", "filter_growth", "kernel_size", "batch_norm",
                "conv_dropout", "dense_dropout", "dense_units", "optimizer", "learning_rate", "weight_decay",
                "batch_size", "augment_strength"}
    assert required <= names
    space = CnnSpace()
    assert space.learning_rate.log and space.weight_decay.log


def test_random_points_build_or_are_flagged_infeasible():
    from cifar_hpo.search.models.cnn import build_cnn

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    built = infeasible = 0
    for _ in range(12):
        trial = study.ask()
        try:
            config = suggest(trial)
        except InfeasibleConfig:
            infeasible += 1
            continue
        sizes = config.feature_map_sizes()
        assert all(size >= 1 for size in sizes)
        assert build_cnn(config).output_shape == (None, 10)
        built += 1
    assert built > 0


def test_infeasible_point_names_the_problem():
    config = CnnConfig(**{**BASELINE.to_params(), "depth": 4, "convs_per_block": 3, "kernel_size": 5})
    with pytest.raises(InfeasibleConfig, match="shrinks below 1x1"):
        config.feature_map_sizes()


def test_config_checks_its_values():
    with pytest.raises(ValueError, match="augment_strength"):
        CnnConfig(**{**BASELINE.to_params(), "augment_strength": 1.5})
    with pytest.raises(ValueError, match="optimizer"):
        CnnConfig(**{**BASELINE.to_params(), "optimizer": "rmsprop"})


def test_overridden_space_suggests_within_bounds():
    space = build_space("cnn", {"depth": {"value": 2}, "batch_size": {"choices": [32]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        try:
            config = suggest(trial, space)
        except InfeasibleConfig:
            continue
        assert config.depth == 2 and config.batch_size == 32
