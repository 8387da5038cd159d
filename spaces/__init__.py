"""WHAT is searched. Pure Python (no TensorFlow): each space is bounds as data + suggest(trial) -> Config.

Every space module exports NAME, Space (a frozen dataclass of bounds), Config, suggest(trial, space),
BASELINE (a Config enqueued as the first trial), config_from_params(params) and InfeasibleConfig.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from cifar_hpo.spaces.bounds import with_overrides

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SPACE_NAMES = ("cnn", "inception")


def get_space_module(name: str) -> ModuleType:
    if name not in SPACE_NAMES:
        raise ValueError(f"unknown space {name!r}; choose one of {list(SPACE_NAMES)}")
    return importlib.import_module(f"cifar_hpo.spaces.{name}")


def load_overrides(path: str | Path, space_name: str) -> dict[str, Any]:
    """Bound overrides from a TOML file: either flat tables per parameter, or under a [SPACE] table.

    Example::

        [cnn]
        depth = {low = 2, high = 3}
        optimizer = {choices = ["adam"]}
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
    return with_overrides(versions[version](), overrides or {}, name)
