"""Storage tests run on every kind of storage hpo supports, like Optuna's own storage tests."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import optuna
import pytest

from cifar_hpo.storage import make_storage

STORAGE_KINDS = ("memory", "sqlite", "postgresql")


@pytest.fixture(params=STORAGE_KINDS)
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[optuna.storages.BaseStorage]:
    """A storage built by make_storage: in memory, a SQLite file, or the PostgreSQL test server."""
    if request.param == "memory":
        yield make_storage("memory://")
    elif request.param == "sqlite":
        yield make_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    else:
        url = request.getfixturevalue("postgres_url")
        yield make_storage(url)


@pytest.fixture
def study_name(any_storage: optuna.storages.BaseStorage) -> Iterator[str]:
    """A name no other test uses; the study is deleted afterwards (the PostgreSQL server is shared)."""
    name = f"s-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=any_storage)
    except KeyError:
        pass
