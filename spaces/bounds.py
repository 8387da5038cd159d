"""Bound types a search space is made of: plain data, checked when built, suggested through Optuna.

A space is a frozen dataclass whose fields are these bounds; overriding a space from TOML replaces a
field with a bound of the same kind, so a space can be listed, checked and stored without a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


@dataclass(frozen=True)
class IntRange:
    """An integer from low to high inclusive, optionally on a log scale or a step grid."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        for field in ("low", "high", "step"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field} must be an integer, but got {field}={value!r}")
        if self.low > self.high:
            raise ValueError(f"low must be <= high, but got low={self.low}, high={self.high}")
        if self.step < 1:
            raise ValueError(f"step must be >= 1, but got step={self.step}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError(f"a log range needs low >= 1 and step 1, but got low={self.low}, step={self.step}")

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high and (value - self.low) % self.step == 0


@dataclass(frozen=True)
class FloatRange:
    """A float from low to high inclusive, optionally on a log scale or a step grid."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        for field in ("low", "high"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"{field} must be a finite number, but got {field}={value!r}")
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        if self.low > self.high:
            raise ValueError(f"low must be <= high, but got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, but got low={self.low}")
        if self.step is not None:
            if self.log or self.step <= 0:
                raise ValueError(f"step must be > 0 and not combined with log, but got step={self.step}")
            object.__setattr__(self, "step", float(self.step))

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low - 1e-12 <= value <= self.high + 1e-12


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of values (strings, numbers or booleans)."""

    choices: tuple

    def __post_init__(self) -> None:
        if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, (list, tuple)):
            raise TypeError(f"choices must be a list, but got choices={self.choices!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if not self.choices:
            raise ValueError("choices must not be empty")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError(f"choices must be distinct, but got choices={list(self.choices)}")
        for value in self.choices:
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise TypeError(f"choices must be strings, numbers or booleans, but got {value!r}")

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        return value in self.choices


Bound = IntRange | FloatRange | Choice


def bound_from_mapping(name: str, current: Bound, spec: Mapping[str, Any]) -> Bound:
    """Build a bound of the same kind as ``current`` from a TOML table such as ``{low = 2, high = 4}``.

    Keys left out keep their current value, so ``{high = 5}`` only moves the upper bound. A single
    ``value = X`` fixes the parameter.
    """
    if not isinstance(spec, Mapping):
        raise TypeError(f"bounds of '{name}' must be a table such as {{low = ..., high = ...}}, but got {spec!r}")
    spec = dict(spec)
    if "value" in spec:
        value = spec.pop("value")
        if spec:
            raise ValueError(f"bounds of '{name}': 'value' cannot be combined with {sorted(spec)}")
        spec = {"choices": [value]} if isinstance(current, Choice) else {"low": value, "high": value}
    allowed = {f.name for f in dataclasses.fields(current)}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"bounds of '{name}': unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    try:
        if isinstance(current, FloatRange) and "low" in spec and "high" in spec and spec.get("log") is None:
            spec.setdefault("log", current.log)
        return dataclasses.replace(current, **spec)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bounds of '{name}': {err}") from None


def describe(bound: Bound) -> str:
    """Short human-readable form, for notes and reports."""
    if isinstance(bound, Choice):
        return "{" + ", ".join(str(c) for c in bound.choices) + "}"
    scale = " log" if bound.log else ""
    step = f" step {bound.step}" if bound.step not in (None, 1) else ""
    return f"[{bound.low}, {bound.high}]{scale}{step}"


def space_bounds(space: Any) -> dict[str, Bound]:
    """The bounds of a space dataclass, by parameter name, in declaration order."""
    return {f.name: getattr(space, f.name) for f in dataclasses.fields(space)}


def with_overrides(space: Any, overrides: Mapping[str, Any], space_name: str) -> Any:
    """A copy of ``space`` with some bounds replaced; unknown names and impossible bounds raise ValueError."""
    current = space_bounds(space)
    unknown = sorted(set(overrides) - set(current))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for space '{space_name}'; known: {sorted(current)}")
    replaced = {name: bound_from_mapping(name, current[name], spec) for name, spec in overrides.items()}
    return dataclasses.replace(space, **replaced)


def suggest_params(space: Any, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Ask the trial for every parameter of the space, in declaration order."""
    return {name: bound.suggest(trial, name) for name, bound in space_bounds(space).items()}


def optuna_distribution(bound: Bound) -> BaseDistribution:
    """The distribution Optuna records when ``bound.suggest`` asks a trial (engines that record trials
    themselves, and tests building trials by hand, use the same)."""
    if isinstance(bound, IntRange):
        return IntDistribution(bound.low, bound.high, log=bound.log, step=bound.step)
    if isinstance(bound, FloatRange):
        return FloatDistribution(bound.low, bound.high, log=bound.log, step=bound.step)
    if isinstance(bound, Choice):
        return CategoricalDistribution(bound.choices)
    raise TypeError(f"unknown bound type {type(bound).__name__} ({bound!r})")


def optuna_distributions(space: Any) -> dict[str, BaseDistribution]:
    """Every parameter's Optuna distribution, by name, in declaration order."""
    return {name: optuna_distribution(bound) for name, bound in space_bounds(space).items()}


def pinned_values(space: Any) -> dict[str, Any]:
    """The parameters the space fixes to one value (TOML ``value = X``, or equal low and high)."""
    pinned: dict[str, Any] = {}
    for name, bound in space_bounds(space).items():
        if isinstance(bound, Choice) and len(bound.choices) == 1:
            pinned[name] = bound.choices[0]
        elif isinstance(bound, (IntRange, FloatRange)) and bound.low == bound.high:
            pinned[name] = bound.low
    return pinned


def outside_bounds(space: Any, params: Mapping[str, Any]) -> list[str]:
    """Names of parameters whose value the space does not contain (e.g. a baseline after narrowing)."""
    bounds = space_bounds(space)
    return [name for name, value in params.items() if name in bounds and not bounds[name].contains(value)]
