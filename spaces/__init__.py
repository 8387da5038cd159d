"""WHAT is searched. Pure Python (no TensorFlow): each space is bounds as data + suggest(trial) -> Config.

Every space module exports NAME, Space (a frozen dataclass of bounds), Config (with to_params() and
check_feasible(), which raises InfeasibleConfig), suggest(trial, space), BASELINE (a Config enqueued as the
first trial), PRIORS (strong known Configs, enqueued after it) and config_from_params(params).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from cifar_hpo.spaces.bounds import outside_bounds, pinned_values, with_overrides

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SPACE_NAMES = ("cnn", "inception")
# A space config's [SPACE.priors.NAME] tables: the user's own recipes, enqueued after the space's PRIORS.
PRIORS_TABLE = "priors"
# What a declared prior may start from (``like = ...``) besides the space's PRIORS.
BASELINE_NAME = "baseline"


def get_space_module(name: str) -> ModuleType:
    if name not in SPACE_NAMES:
        raise ValueError(f"unknown space {name!r}; choose one of {list(SPACE_NAMES)}")
    return importlib.import_module(f"cifar_hpo.spaces.{name}")


def load_overrides(path: str | Path, space_name: str) -> dict[str, Any]:
    """Bound overrides from a TOML file: either flat tables per parameter, or under a [SPACE] table, and
    optionally recipes of the user's own to try first (``declared_priors``).

    Example::

        [cnn]
        depth = {low = 2, high = 3}
        optimizer = {choices = ["adam"]}

        [cnn.priors.my_resnet]   # the built-in resnet recipe with another learning rate
        like = "resnet"
        learning_rate = 0.05
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"space config {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read space config {str(path)!r}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"space config {str(path)!r} is not valid TOML: {err}") from None
    if space_name in data and isinstance(data[space_name], dict):
        data = data[space_name]
    other = [name for name in SPACE_NAMES if name != space_name and name in data]
    if other:
        raise ValueError(f"space config {str(path)!r} has a [{other[0]}] table but the study's space is {space_name!r}")
    return data


def current_version(name: str) -> int:
    """The version of space ``name`` a new study is created with (1 for spaces that never changed)."""
    return int(getattr(get_space_module(name), "CURRENT_VERSION", 1))


def build_space(name: str, overrides: dict[str, Any] | None = None, version: int | None = None) -> Any:
    """The space's default bounds (of ``version``, default the current one) with overrides applied; raises
    ValueError for unknown or impossible bounds, or a version this release does not know."""
    module = get_space_module(name)
    versions = getattr(module, "SPACES_BY_VERSION", {1: module.Space})
    version = current_version(name) if version is None else version
    if version not in versions:
        raise ValueError(f"space {name!r} has no version {version} (known: {sorted(versions)}); upgrade cifar-hpo")
    return with_overrides(versions[version](), bound_overrides(overrides), name)


def bound_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The overrides of bounds, without the space config's declared priors."""
    return {key: spec for key, spec in (overrides or {}).items() if key != PRIORS_TABLE}


def declared_priors(name: str, overrides: Mapping[str, Any] | None, space: Any) -> dict[str, Any]:
    """The recipes a space config declares ([SPACE.priors.NAME] tables) as configs of space ``name``, in file order.

    A table gives the config's fields, or starts from a built-in recipe (``like = "resnet"``, any of the
    space's PRIORS or "baseline") and gives the fields it changes. ValueError, naming the prior, when a table
    is not a recipe of this space or lies outside ``space`` (the bounds the same file sets)."""
    module = get_space_module(name)
    tables = (overrides or {}).get(PRIORS_TABLE) or {}
    if not isinstance(tables, Mapping) or not all(isinstance(table, Mapping) for table in tables.values()):
        raise ValueError(f"[{name}.{PRIORS_TABLE}] must hold one table per recipe, e.g. [{name}.{PRIORS_TABLE}.my_recipe] "
                         'with like = "..." and the fields it changes')
    built_in = {BASELINE_NAME: module.BASELINE, **module.PRIORS}
    known = {field.name for field in dataclasses.fields(module.Config)}
    configs: dict[str, Any] = {}
    for prior, table in tables.items():
        fields = dict(table)
        like = fields.pop("like", None)
        what = f"prior {prior!r} of the space config"
        if prior in built_in:
            raise ValueError(f"{what}: {prior!r} is a built-in recipe's name; name yours differently")
        if like is not None and like not in built_in:
            raise ValueError(f"{what}: like = {like!r} is not a built-in recipe; use one of {sorted(built_in)}")
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"{what}: unknown field(s) {unknown}; the {name} space's are {sorted(known)}")
        try:
            config = dataclasses.replace(built_in[like], **fields) if like else module.Config(**fields)
            config.check_feasible()
        except (TypeError, ValueError) as err:  # the config's own checks (InfeasibleConfig included)
            missing = [] if like else sorted(n for n in known if n not in fields and _required(module.Config, n))
            if missing:
                raise ValueError(f"{what}: missing field(s) {missing}; give them, or start from a built-in recipe "
                                 f"with like = one of {sorted(built_in)}") from None
            raise ValueError(f"{what}: {err}") from None
        outside = outside_bounds(space, config.to_params())
        if outside:
            raise ValueError(f"{what}: its {', '.join(outside)} lie outside the bounds this study searches; widen "
                             "them or change the recipe")
        configs[prior] = config
    return configs


@dataclasses.dataclass(frozen=True)
class Placement:
    """A recipe as a study of some space would enqueue it (``place_recipe``)."""

    params: dict[str, Any]  # the trial's parameters, the space's pinned values in place of the recipe's own
    pinned: dict[str, Any]  # the pinned values that replaced the recipe's
    refusal: str = ""  # why the study cannot enqueue it ("" when it can)


def place_recipe(name: str, space: Any, config: Any) -> Placement:
    """``config`` (the baseline or a prior) in ``space``: a study that pins a value (``value = X``, e.g. the
    input size) means the recipe at that value; one whose bounds exclude the recipe, or where the pinned
    values cannot be built with the rest, refuses it. The one rule for what is enqueued and what the study
    note lists."""
    params = config.to_params()
    pinned = {key: value for key, value in pinned_values(space).items() if key in params and params[key] != value}
    params.update(pinned)
    outside = outside_bounds(space, params)
    if outside:
        return Placement(params, pinned, f"its {', '.join(outside)} lie outside this study's bounds")
    if pinned:
        try:
            get_space_module(name).config_from_params(params).check_feasible()  # the values together
        except ValueError as err:  # InfeasibleConfig included
            return Placement(params, pinned, f"with the pinned {', '.join(pinned)} it cannot be built ({err})")
    return Placement(params, pinned)


def _required(config_class: type, field_name: str) -> bool:
    field = next(f for f in dataclasses.fields(config_class) if f.name == field_name)
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
