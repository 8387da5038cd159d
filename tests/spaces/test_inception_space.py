"""The `inception` space as data: bounds, suggestion, the baseline, overrides. No TensorFlow here."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import optuna
import pytest

from cifar_hpo.spaces import build_space, get_space_module
from cifar_hpo.spaces.bounds import Choice, outside_bounds, space_bounds
from cifar_hpo.spaces.inception import BASELINE, InceptionConfig, InceptionSpace, InfeasibleConfig, config_from_params, suggest


def test_module_exports_the_uniform_space_interface() -> None:
    module = get_space_module("inception")
    for name in ("NAME", "Space", "Config", "suggest", "BASELINE", "config_from_params", "InfeasibleConfig"):
        assert hasattr(module, name), name
    assert module.NAME == "inception"
    assert issubclass(module.InfeasibleConfig, ValueError)


def test_space_lists_every_knob_of_the_issue() -> None:
    names = set(space_bounds(InceptionSpace()))
    assert names == {"unfreeze_blocks", "input_size", "pooling", "head_dropout", "head_dense", "head_lr",
                     "finetune_lr_fraction", "warmup_epochs", "label_smoothing", "batch_size", "augment_strength"}
    assert InceptionSpace().head_lr.log and InceptionSpace().finetune_lr_fraction.log
    assert 0 in InceptionSpace().head_dense.choices  # 0 = no dense layer
    assert InceptionSpace().unfreeze_blocks.low == 0  # 0 = frozen feature extractor


def test_baseline_is_frozen_then_fine_tuned_with_augmentation_and_inside_default_bounds() -> None:
    assert BASELINE.unfreeze_blocks >= 1 and BASELINE.warmup_epochs >= 1 and BASELINE.augment_strength > 0
    assert outside_bounds(InceptionSpace(), BASELINE.to_params()) == []
    assert config_from_params(BASELINE.to_params()) == BASELINE


def test_fixed_trial_gives_a_typed_config_and_the_cut_point() -> None:
    params = {**BASELINE.to_params(), "unfreeze_blocks": 3, "input_size": 107}
    config = suggest(optuna.trial.FixedTrial(params))
    assert isinstance(config, InceptionConfig)
    assert config.input_size == 107 and config.cut_block == 7  # mixed8..mixed10 trainable, mixed7 cached


def test_sampled_configs_stay_within_bounds() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        config = suggest(trial)
        assert outside_bounds(InceptionSpace(), config.to_params()) == []
        assert config.augment_strength in (0.0, 0.25, 0.5, 0.75, 1.0)  # a grid, so cached views are shared
        study.tell(trial, 0.5)


def test_input_size_can_be_fixed_to_299_from_toml_overrides() -> None:
    space = build_space("inception", {"input_size": {"value": 299}, "unfreeze_blocks": {"high": 6}})
    assert space.input_size == Choice((299,))
    config = suggest(optuna.trial.FixedTrial({**BASELINE.to_params(), "input_size": 299, "unfreeze_blocks": 6}), space)
    assert config.input_size == 299 and config.cut_block == 4


@pytest.mark.parametrize("overrides, message", [
    ({"input_size": {"choices": [32, 139]}}, "input_size"),
    ({"input_size": {"value": 300}}, "input_size"),
    ({"unfreeze_blocks": {"high": 11}}, "unfreeze_blocks"),
    ({"not_a_knob": {"value": 1}}, "unknown parameter"),
])
def test_impossible_overrides_are_refused_when_the_space_is_built(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_space("inception", overrides)


@pytest.mark.parametrize("change", [
    {"input_size": 74}, {"pooling": "flatten"}, {"head_dropout": 1.0}, {"finetune_lr_fraction": 0.0},
    {"head_lr": -1.0}, {"label_smoothing": 1.0}, {"augment_strength": 1.5}, {"unfreeze_blocks": -1},
    {"head_dense": -5}, {"batch_size": 0},
])
def test_config_rejects_bad_values_with_the_name(change: dict) -> None:
    name = next(iter(change))
    with pytest.raises(ValueError, match=name):
        dataclasses.replace(BASELINE, **change)


def test_unfreezing_more_blocks_than_the_trunk_has_is_infeasible() -> None:
    config = dataclasses.replace(BASELINE, unfreeze_blocks=11)
    with pytest.raises(InfeasibleConfig, match="mixed0..mixed10"):
        config.check_feasible()


def test_space_module_does_not_import_tensorflow() -> None:
    code = "import sys, spaces.inception; sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_baseline_is_enqueued_at_the_pinned_input_size_and_skipped_outside_other_bounds():
    """A study that pins the input size means the seed recipe at that size; a narrowed range that excludes
    one of the recipe's values still skips it, with a note."""
    import optuna

    from cifar_hpo.search.study_setup import enqueue_baseline
    from cifar_hpo.spaces import build_space

    study = optuna.create_study(direction="maximize")
    note = enqueue_baseline(study, "inception", build_space("inception", {"input_size": {"value": 175}}))
    assert note == "seed baseline enqueued with the study's pinned input_size = 175"
    queued = study.get_trials(deepcopy=False)[0]
    fixed = queued.system_attrs["fixed_params"]  # a waiting trial holds its parameters there
    assert fixed["input_size"] == 175 and fixed["unfreeze_blocks"] == BASELINE.unfreeze_blocks
    narrowed = optuna.create_study(direction="maximize")
    note = enqueue_baseline(narrowed, "inception", build_space("inception", {"unfreeze_blocks": {"low": 3, "high": 4}}))
    assert "not enqueued" in note and "unfreeze_blocks" in note and narrowed.trials == []
