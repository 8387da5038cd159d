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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def beside_optuna(request: pytest.FixtureRequest, tmp_path: Path):
    """(the service's storage, Optuna's own RDBStorage on the same database, a study name prefix), for tests
    that compare what the service's fast paths read or write with Optuna's own; the studies are deleted after."""
    url = (f"sqlite:///{tmp_path / 'beside.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    ours = make_storage(url)
    theirs = optuna.storages.RDBStorage(url.replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"beside-{uuid.uuid4().hex[:10]}"
    yield ours, theirs, name
    for study in optuna.get_all_study_names(theirs):
        if study.startswith(name):
            optuna.delete_study(study_name=study, storage=theirs)
    ours.engine.dispose()
    theirs.engine.dispose()
