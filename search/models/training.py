"""Training shared by every space: optimizers, the pruning callback, timing, and what a trial records."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import keras

from cifar_hpo.search.errors import MissingMetricError

MONITOR = "val_accuracy"


class Reporter(Protocol):
    """What a trainer tells the search after each epoch. An Optuna trial is one; the KerasTuner engine
    passes one that records without pruning; None trains without reporting. Trainers never see a Trial."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...

    def set_user_attr(self, key: str, value: Any) -> None: ...


class PruningCallback(keras.callbacks.Callback):
    """Reports validation accuracy to the trial after every epoch; stops training when the pruner says so.

    Steps count epochs across phases (``step_offset``), so a warm-up phase and a fine-tuning phase form
    one curve. Training is stopped rather than raising inside Keras, so the trial still records what it
    did; the caller raises TrialPruned afterwards.
    """

    def __init__(self, trial: Reporter | None, monitor: str = MONITOR, step_offset: int = 0) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.step_offset = step_offset
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise MissingMetricError(
                f"metric {self.monitor!r} is not in the epoch logs {sorted(logs)}; "
                "compile with metrics=['accuracy'] and pass validation data"
            )
        if self.trial is None:
            return
        step = self.step_offset + epoch + 1  # epochs completed: Hyperband's resource unit
        self.trial.report(float(logs[self.monitor]), step)
        if self.trial.should_prune():
            self.pruned_at = step
            self.model.stop_training = True


class EpochTimer(keras.callbacks.Callback):
    """Seconds spent training (not validating) in each epoch, for images/s."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds: list[float] = []
        self._start = 0.0
        self._stopped = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start, self._stopped = time.perf_counter(), False

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self._stopped:
            self.train_seconds.append(time.perf_counter() - self._start)
            self._stopped = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._stopped:  # no validation data
            self.train_seconds.append(time.perf_counter() - self._start)


@dataclass
class TrainResult:
    """What a trial records (DESIGN: epoch curve, best epoch, parameter count, wall time, images/s)."""

    history: dict[str, list[float]] = field(default_factory=dict)
    params: int = 0
    fit_seconds: float = 0.0
    train_seconds: float = 0.0
    train_images: int = 0
    pruned_at: int | None = None

    @property
    def val_accuracy(self) -> list[float]:
        return self.history.get(MONITOR, [])

    @property
    def epochs_run(self) -> int:
        return len(self.val_accuracy)

    @property
    def best_epoch(self) -> int:
        curve = self.val_accuracy
        return int(max(range(len(curve)), key=curve.__getitem__)) + 1 if curve else 0

    @property
    def best_val_accuracy(self) -> float:
        return max(self.val_accuracy) if self.val_accuracy else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else 0.0

    def merge(self, other: "TrainResult") -> None:
        """Append a later phase (e.g. fine-tuning after warm-up)."""
        for key, values in other.history.items():
            self.history.setdefault(key, []).extend(values)
        self.params = other.params or self.params
        self.fit_seconds += other.fit_seconds
        self.train_seconds += other.train_seconds
        self.train_images += other.train_images
        self.pruned_at = other.pruned_at

    def user_attrs(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "params": self.params,
            "fit_seconds": round(self.fit_seconds, 3),
            "train_images_per_s": round(self.images_per_s, 1),
            "history": {k: [round(float(v), 5) for v in vs] for k, vs in self.history.items()},
        }


def make_optimizer(name: str, learning_rate: float, weight_decay: float, *, schedule: str = "constant",
                   decay_steps: int = 0) -> keras.optimizers.Optimizer:
    """Adam (decoupled weight decay) or SGD with Nesterov momentum; optional cosine decay over the run."""
    lr: Any = learning_rate
    if schedule == "cosine":
        if decay_steps < 1:
            raise ValueError(f"cosine schedule needs decay_steps >= 1, but got decay_steps={decay_steps}")
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.01)
    elif schedule != "constant":
        raise ValueError(f"schedule must be 'constant' or 'cosine', but got schedule={schedule!r}")
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=weight_decay or None)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=weight_decay or None)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', but got optimizer={name!r}")


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return max(1, math.ceil(n_images / batch_size))


def fit_tracked(model: keras.Model, train_ds: Any, val_ds: Any, *, epochs: int, n_train: int,
                trial: Reporter | None, step_offset: int = 0, initial_epoch: int = 0,
                callbacks: list[keras.callbacks.Callback] | None = None) -> TrainResult:
    """``model.fit`` with per-epoch reporting to the trial and timing; never raises TrialPruned itself.

    ``initial_epoch`` continues an earlier run (epochs count from it, as Keras does); the result holds the
    epochs run here."""
    pruning, timer = PruningCallback(trial, step_offset=step_offset), EpochTimer()
    start = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
                        shuffle=False, callbacks=[timer, pruning, *(callbacks or [])])
    fit_seconds = time.perf_counter() - start
    return TrainResult(
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        params=int(model.count_params()),
        fit_seconds=fit_seconds,
        train_seconds=sum(timer.train_seconds),
        train_images=n_train * len(timer.train_seconds),
        pruned_at=pruning.pruned_at,
    )
