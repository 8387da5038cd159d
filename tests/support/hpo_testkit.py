"""What several test modules share (no tests here): tiny CIFAR-shaped data, and report studies built with
optuna.trial.create_trial (no training) whose distributions come from the cnn space itself.

On sys.path through pytest's ``pythonpath = ["tests/support"]``: the repository root never is, so tests
import the installed ``cifar_hpo`` namespace only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState, create_trial

from cifar_hpo.reports.evaluation import EvalRun, eval_attr_key, evaluate_predictions
from cifar_hpo.search.models.data import CLASS_NAMES
from cifar_hpo.search.settings import StudySettings
from cifar_hpo.spaces import build_space
from cifar_hpo.spaces.bounds import optuna_distributions
from cifar_hpo.spaces.cnn import BASELINE

ROOT = Path(__file__).resolve().parents[2]

# A CNN small enough to train in a second on the tiny synthetic data.
SMALL_CNN = dict(BASELINE.to_params(), depth=2, base_filters=16, filter_growth=1.0, dense_units=64, batch_size=64,
                 padding="same", head="global_avg", adam_learning_rate=3e-3)

# The distributions Optuna records for the default cnn space (what a real study's trials carry).
DISTRIBUTIONS = optuna_distributions(build_space("cnn"))


def make_tiny_cifar(n_train: int = 500, n_test: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR-shaped uint8 arrays a tiny model can learn fast: each class has its own mean colour."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, size=(10, 3))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        rng.shuffle(y)
        noise = rng.normal(0, 25, size=(n, 32, 32, 3))
        x = np.clip(colours[y][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        return x, y.astype(np.uint8)

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def make_trial(params: dict[str, Any], curve: list[float], state: TrialState = TrialState.COMPLETE,
               baseline: bool = False, **attrs: Any) -> optuna.trial.FrozenTrial:
    best = int(np.argmax(curve)) + 1 if curve else 0
    user_attrs = {"best_epoch": best, "epochs_run": len(curve), "params": 1000 + len(curve), "fit_seconds": 1.5,
                  "train_images_per_s": 900.0, "wall_seconds": 2.0,
                  "history": {"val_accuracy": curve}, **attrs}
    if baseline:
        user_attrs["baseline"] = True
    return create_trial(
        state=state, value=max(curve) if state == TrialState.COMPLETE else None, params=params,
        distributions={k: DISTRIBUTIONS[k] for k in params}, user_attrs=user_attrs,
        intermediate_values={i + 1: v for i, v in enumerate(curve)},
    )


def variant(rng: np.random.Generator) -> dict[str, Any]:
    """A random neighbour of SMALL_CNN, with the learning rate under the chosen optimizer's own parameter."""
    optimizer = str(rng.choice(["adam", "sgd"]))
    params = {k: v for k, v in SMALL_CNN.items() if not k.endswith("_learning_rate")}
    low, high = (-4, -2) if optimizer == "adam" else (-2, -0.5)
    return dict(params, dense_units=int(rng.integers(64, 1024)), conv_dropout=float(rng.uniform(0, 0.4)),
                optimizer=optimizer, **{f"{optimizer}_learning_rate": float(10 ** rng.uniform(low, high))})


def make_study(storage: str, name: str, settings: StudySettings, n_complete: int = 5, seed: int = 0) -> optuna.Study:
    """A study with a baseline, ``n_complete`` completed, one pruned and one failed trial, and hpo settings."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for key, value in settings.to_attrs().items():
        study.set_user_attr(key, value)
    study.add_trial(make_trial(dict(SMALL_CNN), [0.30, 0.40, 0.45], baseline=True))
    for _ in range(n_complete):
        curve = sorted(float(v) for v in rng.uniform(0.2, 0.7, size=3))
        study.add_trial(make_trial(variant(rng), curve))
    study.add_trial(make_trial(variant(rng), [0.12], state=TrialState.PRUNED))
    study.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    return study


def store_fake_evaluation(study: optuna.Study, key: str, trial: int | None, epochs: int, seed: int, accuracy: float,
                          baseline: bool = False, fingerprint: str | None = None) -> EvalRun:
    """An EvalRun from synthetic predictions with roughly ``accuracy``, stored as hpo report stores it."""
    rng = np.random.default_rng(seed + 17 * (trial or 0))
    y_true = np.arange(1000) % 10
    y_pred = np.where(rng.random(1000) < accuracy, y_true, rng.integers(0, 10, 1000))
    acc, report, confusion = evaluate_predictions(y_true, y_pred, CLASS_NAMES)
    run = EvalRun(key=key, trial=trial, baseline=baseline, epochs=epochs, seed=seed, accuracy=acc, report=report,
                  confusion=confusion, fit_seconds=3.0, n_params=1234, data_fingerprint=fingerprint)
    study.set_user_attr(eval_attr_key(key, epochs, seed), run.to_dict())
    return run


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'studies.db'}"


def create_tiny_study(url: str, name: str, npz: Path, **given: Any) -> optuna.Study:
    """An hpo cnn study on tiny data (1 epoch, 100 validation images), created as `hpo search` creates one."""
    from cifar_hpo.search.study_setup import open_hpo_study

    flags = {"space": "cnn", "data": str(npz), "val_size": 100, "epochs": 1, "seed": 0, **given}
    return open_hpo_study(url, name, flags, heartbeat_interval=2).study


def stubborn_trial_process(job: Any) -> None:
    """A trial process (search/runtime/processes.py child_main's stand-in) that runs one trial and never stops
    on SIGTERM, as one whose interrupt was lost in native code."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _ask_as_trial_process(job)
    time.sleep(120)  # bounded: a worker that fails to kill it leaves no process behind for long


def trial_process_that_exits_unheard(job: Any) -> None:
    """A trial process that stops on SIGTERM at once, its trial's FAIL never written: as one whose write was
    refused by a busy database while it stopped."""
    import os
    import signal
    import time

    from cifar_hpo.search.errors import ExitCode

    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(ExitCode.INTERRUPTED))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # held while its worker started it
    _ask_as_trial_process(job)
    time.sleep(120)


def trial_process_interrupted_unheard(job: Any) -> None:
    """A trial process that a terminal's Ctrl-C stopped before its worker did, its trial's FAIL never written."""
    import os

    from cifar_hpo.search.errors import ExitCode

    _ask_as_trial_process(job)
    os._exit(ExitCode.INTERRUPTED)


def _ask_as_trial_process(job: Any) -> None:
    """Start a trial, tagged with this process as search/runtime/objective.py tags it."""
    import os

    from cifar_hpo.storage.attrs import WORKER_ATTR, process_tag

    trial = optuna.load_study(study_name=job.study, storage=job.url).ask()
    trial.set_user_attr(WORKER_ATTR, process_tag(os.getpid()))
