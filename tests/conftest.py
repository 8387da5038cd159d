"""Shared fixtures: tiny synthetic CIFAR-shaped data, the PostgreSQL test server, the real offline assets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
from hpo_testkit import ROOT, make_tiny_cifar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_ASSETS = ROOT.parent / "shared" / "assets"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def stop_state_of_this_process_restored():
    """An in-process `hpo search` (or a test of the stop handling) installs process-wide stop handling: the
    SIGINT/SIGTERM handlers, the unraisable hook and the interrupts module's flags. Each test gets them back
    as they were, so one test's stop cannot turn a later test's trial into an interrupt."""
    from cifar_hpo.search.runtime import interrupts

    handlers = {signum: signal.getsignal(signum) for signum in interrupts.STOP_SIGNALS}
    hook = sys.unraisablehook
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    sys.unraisablehook = hook
    interrupts._interrupted = interrupts._pending = interrupts._redelivering = False


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.npz"
    np.savez(path, **make_tiny_cifar())
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skipped when absent, unless HPO_REQUIRE_POSTGRES=1 (CI), which fails instead."""
    url = os.environ.get("HPO_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1),
                                          connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as err:  # any failure to reach the server means the same thing here
        if os.environ.get("HPO_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required (HPO_REQUIRE_POSTGRES=1) but {url} is unreachable: {err}")
        pytest.skip(f"PostgreSQL at {url} is unreachable: {err}")
    return url


@pytest.fixture
def unique_study() -> str:
    """A study name no other test (or earlier run) uses."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_study(postgres_url: str, unique_study: str):
    """A unique study name on PostgreSQL, deleted after the test."""
    yield unique_study
    import optuna

    try:
        optuna.delete_study(study_name=unique_study, storage=postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    except KeyError:
        pass


@pytest.fixture(scope="session")
def real_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR-10 npz and ImageNet InceptionV3 weights, rebuilt from ../shared/assets."""
    materialize = SHARED_ASSETS / "materialize"
    if not materialize.exists():
        pytest.skip(f"{materialize} not found")
    out = Path(os.environ.get("HPO_ASSETS_DIR") or tmp_path_factory.mktemp("assets"))
    subprocess.run([sys.executable, str(materialize), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file saved from a randomly initialised InceptionV3 (no ImageNet asset needed)."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "random_inception.weights.h5"
    keras.utils.set_random_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3)).save_weights(path)
    keras.backend.clear_session()
    return path
