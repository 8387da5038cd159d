"""A space's bounds as KerasTuner hyperparameters, and KerasTuner's values back as the space's parameters.

Pure: no model, no TensorFlow graph. The Optuna distributions the recorded trials carry come from
spaces.bounds.optuna_distributions, the same function the Optuna engine's suggestions follow.
"""

from __future__ import annotations

from typing import Any

import keras_tuner as kt

from cifar_hpo.search.errors import ConfigError
from cifar_hpo.spaces.bounds import Choice, FloatRange, IntRange, space_bounds


def kerastuner_hyperparameters(space: Any) -> kt.HyperParameters:
    """The space as KerasTuner hyperparameters with the same names; a single-valued bound becomes Fixed."""
    hp = kt.HyperParameters()
    for name, bound in space_bounds(space).items():
        if isinstance(bound, Choice):
            kinds = {type(value) for value in bound.choices}
            if len(kinds) != 1 or kinds.pop() not in (int, float, str, bool):
                raise ConfigError(f"--engine kerastuner: choices of {name!r} must all be ints, floats, strings or "
                                  f"booleans of one type (KerasTuner's rule), but got {list(bound.choices)}")
            if len(bound.choices) == 1:
                hp.Fixed(name, bound.choices[0])
            else:
                hp.Choice(name, list(bound.choices))
        elif bound.low == bound.high:
            hp.Fixed(name, bound.low)
        elif isinstance(bound, IntRange):
            hp.Int(name, bound.low, bound.high, step=None if bound.log else bound.step,
                   sampling="log" if bound.log else "linear")
        else:
            hp.Float(name, bound.low, bound.high, step=bound.step, sampling="log" if bound.log else "linear")
    return hp


def params_from_values(space: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The space's parameters from KerasTuner's values (without its ``tuner/...`` entries), typed and on grid."""
    params: dict[str, Any] = {}
    for name, bound in space_bounds(space).items():
        if name not in values:  # e.g. an injected first trial without the conditional parameters it does not use
            continue
        value = values[name]
        if isinstance(bound, IntRange):
            value = int(value)
        elif isinstance(bound, FloatRange):
            value = float(value)
            if bound.step is not None:  # KerasTuner's grid arithmetic leaves float noise (1.7500000000000002)
                value = round(bound.low + round((value - bound.low) / bound.step) * bound.step, 10)
            value = min(max(value, bound.low), bound.high)
        elif isinstance(bound, Choice):  # KerasTuner stores booleans as 1/0: give back the space's own object
            same = [c for c in bound.choices if c == value]
            value = next((c for c in same if type(c) is type(value)), same[0] if same else value)
        params[name] = value
    return params
