"""Recipes of the user's own in a space config ([cnn.priors.NAME]): read, checked, and kept out of the bounds."""

from __future__ import annotations

import dataclasses

import pytest

from cifar_hpo.spaces import bound_overrides, build_space, declared_priors, load_overrides
from cifar_hpo.spaces.cnn import BASELINE, PRIORS, CnnConfig


def priors_of(tables: dict, bounds: dict | None = None) -> dict:
    overrides = {**(bounds or {}), "priors": tables}
    return declared_priors("cnn", overrides, build_space("cnn", overrides))


def test_a_toml_prior_starts_from_a_built_in_recipe_and_changes_what_it_gives(tmp_path) -> None:
    config = tmp_path / "space.toml"
    config.write_text('[cnn]\nbase_filters = {choices = [32, 64]}\n\n'
                      '[cnn.priors.wide_resnet]\nlike = "resnet"\nbase_filters = 64\nlearning_rate = 0.05\n\n'
                      '[cnn.priors.slow_baseline]\nlike = "baseline"\nlearning_rate = 0.0005\n')
    overrides = load_overrides(config, "cnn")
    assert bound_overrides(overrides) == {"base_filters": {"choices": [32, 64]}}
    space = build_space("cnn", overrides)  # the priors table is not a bound
    priors = declared_priors("cnn", overrides, space)
    assert list(priors) == ["wide_resnet", "slow_baseline"]  # file order
    assert priors["wide_resnet"] == dataclasses.replace(PRIORS["resnet"], base_filters=64, learning_rate=0.05)
    assert priors["slow_baseline"] == dataclasses.replace(BASELINE, learning_rate=0.0005)


def test_a_prior_may_give_every_field_itself() -> None:
    fields = {f.name: getattr(PRIORS["vgg_bn"], f.name) for f in dataclasses.fields(CnnConfig)}
    assert priors_of({"mine": {**fields, "dense_units": 256}}) == {
        "mine": dataclasses.replace(PRIORS["vgg_bn"], dense_units=256)}


def test_no_priors_table_declares_none() -> None:
    assert declared_priors("cnn", {"depth": {"value": 3}}, build_space("cnn", {"depth": {"value": 3}})) == {}
    assert declared_priors("cnn", None, build_space("cnn")) == {}


@pytest.mark.parametrize("tables, bounds, words", [
    ({"x": {"like": "vgg"}}, None, "like = 'vgg' is not a built-in recipe; use one of ['baseline', 'resnet', 'vgg_bn']"),
    ({"resnet": {"like": "resnet"}}, None, "'resnet' is a built-in recipe's name"),
    ({"x": {"like": "resnet", "widht": 2}}, None, "unknown field(s) ['widht']"),
    ({"x": {"depth": 3}}, None, "missing field(s) ['augment_strength', 'base_filters',"),
    ({"x": {"like": "resnet", "block": "dense"}}, None, "block must be one of ['plain', 'residual']"),
    ({"x": {"like": "baseline", "depth": 6}}, None, "feature map"),
    ({"x": {"like": "resnet", "base_filters": 96}}, None,
     "its base_filters lie outside the bounds this study searches"),
    ({"x": {"like": "resnet"}}, {"optimizer": {"choices": ["adam"]}}, "its optimizer lie outside"),
    ({"x": 3}, None, "must hold one table per recipe"),
])
def test_a_bad_prior_is_named_with_what_is_wrong(tables, bounds, words) -> None:
    with pytest.raises(ValueError) as err:
        priors_of(tables, bounds)
    assert words in str(err.value)
    if tables != {"x": 3}:
        assert "prior " in str(err.value) and repr(next(iter(tables))) in str(err.value)
