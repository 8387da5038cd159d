import optuna
import pytest

from cifar_hpo.spaces import build_space
from cifar_hpo.spaces.bounds import outside_bounds, space_bounds
from cifar_hpo.spaces.cnn import (
    BASELINE, BASELINE_PARAMS, PRIORS, CnnConfig, CnnSpace, InfeasibleConfig, config_from_params, suggest,
    valid_padding_fits,
)


@pytest.mark.parametrize("config", [BASELINE, *PRIORS.values()], ids=["baseline", *PRIORS])
def test_enqueued_configs_round_trip_through_a_fixed_trial(config: CnnConfig) -> None:
    trial = optuna.trial.FixedTrial(config.to_params())
    assert suggest(trial, CnnSpace()) == config
    assert trial.params == config.to_params()  # exactly the parameters suggest asks: nothing extra, nothing missing
    assert config_from_params(config.to_params()) == config


@pytest.mark.parametrize("config", [BASELINE, *PRIORS.values()], ids=["baseline", *PRIORS])
def test_enqueued_configs_lie_inside_the_default_space(config: CnnConfig) -> None:
    assert outside_bounds(CnnSpace(), config.to_params()) == []


def test_baseline_is_the_hand_tuned_model():
    from cifar_hpo.search.models.cnn import build_cnn

    model = build_cnn(BASELINE)
    assert model.count_params() == BASELINE_PARAMS == 356_810
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == "valid" for c in convs)


def test_space_covers_the_required_knobs():
    names = set(space_bounds(CnnSpace()))
    required = {"block", "depth", "convs_per_block", "base_filters", "filter_growth", "kernel_size", "batch_norm",
                "conv_dropout", "dense_dropout", "dense_units", "optimizer", "adam_learning_rate",
                "sgd_learning_rate", "lr_schedule", "weight_decay", "batch_size", "augment_strength", "mixing",
                "label_smoothing", "use_ema"}
    assert required <= names
    space = CnnSpace()
    assert space.adam_learning_rate.log and space.sgd_learning_rate.log and space.weight_decay.log
    assert space.sgd_learning_rate.high > 10 * space.adam_learning_rate.high  # SGD wants far larger steps
    assert {"warmup_cosine", "one_cycle"} <= set(space.lr_schedule.choices)
    assert set(space.block.choices) == {"plain", "residual"} and set(space.mixing.choices) == {"none", "mixup", "cutmix"}


def test_random_points_always_build():
    """Conditional parameters keep impossible points (e.g. depth 4, 3 valid 5x5 convolutions) out of the space:
    no trial is spent, and pruned, on a configuration that cannot be built."""
    from cifar_hpo.search.models.cnn import build_cnn

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    blocks = set()
    for _ in range(16):
        trial = study.ask()
        config = suggest(trial)
        assert all(size >= 1 for size in config.feature_map_sizes())
        assert build_cnn(config).output_shape == (None, 10)
        blocks.add(config.block)
    assert blocks == {"plain", "residual"}


def test_only_the_chosen_optimizers_learning_rate_is_a_parameter():
    for optimizer in ("adam", "sgd"):
        space = build_space("cnn", {"optimizer": {"choices": [optimizer]}})
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        config = suggest(trial, space)
        other = "sgd" if optimizer == "adam" else "adam"
        assert f"{optimizer}_learning_rate" in trial.params and f"{other}_learning_rate" not in trial.params
        assert config.learning_rate == trial.params[f"{optimizer}_learning_rate"]


def test_padding_is_asked_only_where_unpadded_convolutions_fit():
    assert valid_padding_fits(3, 1, 3) and not valid_padding_fits(4, 3, 5)
    space = build_space("cnn", {"block": {"choices": ["plain"]}, "depth": {"value": 4},
                                "convs_per_block": {"value": 3}, "kernel_size": {"value": 5}})
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    config = suggest(trial, space)
    assert "padding" not in trial.params and config.padding == "same"


def test_residual_blocks_imply_kernel_padding_and_batch_norm():
    space = build_space("cnn", {"block": {"choices": ["residual"]}})
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    config = suggest(trial, space)
    assert not {"kernel_size", "padding", "batch_norm"} & set(trial.params)
    assert (config.kernel_size, config.padding, config.batch_norm) == (3, "same", True)
    with pytest.raises(ValueError, match="residual blocks"):
        CnnConfig(**{**PRIORS["resnet"].__dict__, "padding": "valid"})


def test_trials_of_older_studies_keep_their_meaning():
    """Params recorded before residual blocks, mixing, EMA and per-optimizer learning rates existed."""
    old = {name: getattr(BASELINE, name) for name in ("depth", "convs_per_block", "base_filters", "filter_growth",
           "kernel_size", "padding", "batch_norm", "conv_dropout", "head", "dense_units", "dense_dropout",
           "optimizer", "learning_rate", "lr_schedule", "weight_decay", "batch_size")}
    config = config_from_params({**old, "augment_strength": 0.3})
    assert config.augment_policy == "legacy" and config.block == "plain" and config.mixing == "none"
    assert config.learning_rate == BASELINE.learning_rate and not config.use_ema and config.label_smoothing == 0.0


def test_infeasible_point_names_the_problem():
    config = CnnConfig(**{**BASELINE.__dict__, "depth": 4, "convs_per_block": 3, "kernel_size": 5})
    with pytest.raises(InfeasibleConfig, match="shrinks below 1x1"):
        config.feature_map_sizes()


def test_config_checks_its_values():
    with pytest.raises(ValueError, match="augment_strength"):
        CnnConfig(**{**BASELINE.__dict__, "augment_strength": 1.5})
    with pytest.raises(ValueError, match="optimizer"):
        CnnConfig(**{**BASELINE.__dict__, "optimizer": "rmsprop"})
    with pytest.raises(ValueError, match="lr_schedule"):
        CnnConfig(**{**BASELINE.__dict__, "lr_schedule": "step"})
    with pytest.raises(ValueError, match="label_smoothing"):
        CnnConfig(**{**BASELINE.__dict__, "label_smoothing": 1.0})


def test_overridden_space_suggests_within_bounds():
    space = build_space("cnn", {"depth": {"value": 2}, "batch_size": {"choices": [32]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        config = suggest(study.ask(), space)
        assert config.depth == 2 and config.batch_size == 32
