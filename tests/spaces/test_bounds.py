import optuna
import pytest

from cifar_hpo.spaces import build_space, load_overrides
from cifar_hpo.spaces.bounds import Choice, FloatRange, IntRange, bound_from_mapping, outside_bounds
from cifar_hpo.spaces.cnn import BASELINE


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: IntRange(5, 2), "low must be <= high"),
        (lambda: IntRange(1, 4, step=0), "step must be >= 1"),
        (lambda: IntRange(0, 4, log=True), "log range needs low >= 1"),
        (lambda: IntRange(1.5, 4), "must be an integer"),
        (lambda: FloatRange(0.0, 1.0, log=True), "log range needs low > 0"),
        (lambda: FloatRange(2.0, 1.0), "low must be <= high"),
        (lambda: FloatRange(float("nan"), 1.0), "finite number"),
        (lambda: Choice(()), "must not be empty"),
        (lambda: Choice((1, 1)), "distinct"),
        (lambda: Choice("abc"), "must be a list"),
    ],
)
def test_impossible_bounds_raise_with_the_offending_value(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_partial_override_keeps_the_other_fields():
    bound = bound_from_mapping("learning_rate", FloatRange(1e-4, 1e-2, log=True), {"high": 1e-3})
    assert bound == FloatRange(1e-4, 1e-3, log=True)


def test_value_fixes_a_parameter():
    assert bound_from_mapping("kernel_size", Choice((3, 5)), {"value": 3}) == Choice((3,))
    assert bound_from_mapping("depth", IntRange(2, 4), {"value": 3}) == IntRange(3, 3)


def test_unknown_key_in_a_bound_is_named():
    with pytest.raises(ValueError, match="unknown key.*'lo'"):
        bound_from_mapping("depth", IntRange(2, 4), {"lo": 1})


def test_space_overrides_from_toml(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text('[cnn]\ndepth = {low = 2, high = 3}\noptimizer = {choices = ["adam"]}\n')
    space = build_space("cnn", load_overrides(path, "cnn"))
    assert space.depth == IntRange(2, 3)
    assert space.optimizer == Choice(("adam",))
    assert outside_bounds(space, BASELINE.to_params()) == []
    trial = optuna.trial.FixedTrial({**BASELINE.to_params(), "optimizer": "adam"})
    assert trial.suggest_int("depth", 2, 3) == 3


def test_flat_toml_and_errors(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text("depth = {high = 3}\n")
    assert build_space("cnn", load_overrides(flat, "cnn")).depth == IntRange(2, 3)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("layers = {high = 3}\n")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['layers'\] for space 'cnn'"):
        build_space("cnn", load_overrides(unknown, "cnn"))
    impossible = tmp_path / "impossible.toml"
    impossible.write_text("depth = {low = 5, high = 2}\n")
    with pytest.raises(ValueError, match="bounds of 'depth': low must be <= high"):
        build_space("cnn", load_overrides(impossible, "cnn"))
    broken = tmp_path / "broken.toml"
    broken.write_text("depth = {low = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_overrides(broken, "cnn")
    with pytest.raises(ValueError, match="does not exist"):
        load_overrides(tmp_path / "missing.toml", "cnn")


def test_narrowed_bounds_report_the_baseline_outside():
    space = build_space("cnn", {"depth": {"low": 4, "high": 4}})
    assert outside_bounds(space, BASELINE.to_params()) == ["depth"]


def test_pinned_values_are_the_single_valued_bounds():
    from cifar_hpo.spaces import build_space
    from cifar_hpo.spaces.bounds import pinned_values

    space = build_space("inception", {"input_size": {"value": 175}, "pooling": {"choices": ["max"]},
                                      "head_lr": {"low": 1e-3, "high": 1e-3}, "unfreeze_blocks": {"low": 1, "high": 2}})
    assert pinned_values(space) == {"input_size": 175, "pooling": "max", "head_lr": 1e-3}
