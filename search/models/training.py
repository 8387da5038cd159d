"""Training shared by every space: optimizers, the pruning callback, timing, and what a trial records."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import keras

from cifar_hpo.reports.export import TTA_MODES
from cifar_hpo.search.errors import MissingMetricError

MONITOR = "val_accuracy"


class Reporter(Protocol):
    """What a trainer tells the search after each epoch. An Optuna trial is one; the KerasTuner engine
    passes one that records without pruning; None trains without reporting. Trainers never see a Trial."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...

    def set_user_attr(self, key: str, value: Any) -> None: ...


class ReportOnly:
    """Stands for a trial in PruningCallback: reports each epoch, never prunes (for the KerasTuner engine, where
    KerasTuner decides, and for prior recipes, which train to the end so a study never ends below them)."""

    def __init__(self, trial: Reporter) -> None:
        self.trial = trial

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:  # trainers record extras (e.g. feature_cache)
        self.trial.set_user_attr(key, value)


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


@keras.saving.register_keras_serializable(package="cifar_hpo")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle: linear rise from peak/25 to ``peak`` over the first 30% of the steps, then linear decay
    to peak/2500 (Smith's super-convergence shape, as fast CIFAR-10 trainers use)."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float = 0.3) -> None:
        self.peak, self.total_steps, self.warmup_fraction = float(peak), int(total_steps), float(warmup_fraction)

    def __call__(self, step: Any) -> Any:
        from keras import ops

        step = ops.cast(step, "float32")
        up = max(1.0, self.warmup_fraction * self.total_steps)
        down = max(1.0, self.total_steps - up)
        start, end = self.peak / 25.0, self.peak / 2500.0
        rising = start + (self.peak - start) * step / up
        falling = self.peak + (end - self.peak) * ops.minimum(1.0, (step - up) / down)
        return ops.where(step < up, rising, falling)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction}


def make_schedule(schedule: str, learning_rate: float, decay_steps: int, steps_per_epoch: int = 1) -> Any:
    """The learning rate over the run: constant, cosine (to 1%), linear warm-up for one epoch (at most 10% of
    the run) then cosine to 0, or one-cycle. Warm-up matters for batch norm with high learning rates."""
    if schedule == "constant":
        return learning_rate
    if schedule not in ("cosine", "warmup_cosine", "one_cycle"):
        raise ValueError(f"schedule must be one of constant, cosine, warmup_cosine, one_cycle, but got {schedule!r}")
    if decay_steps < 1:
        raise ValueError(f"{schedule} schedule needs decay_steps >= 1, but got decay_steps={decay_steps}")
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.01)
    if schedule == "one_cycle":
        return OneCycle(learning_rate, decay_steps)
    warmup = max(1, min(steps_per_epoch, decay_steps // 10))
    return keras.optimizers.schedules.CosineDecay(learning_rate / 10, max(1, decay_steps - warmup), alpha=0.0,
                                                  warmup_target=learning_rate, warmup_steps=warmup)


def make_optimizer(name: str, learning_rate: float, weight_decay: float, *, schedule: str = "constant",
                   decay_steps: int = 0, steps_per_epoch: int = 1, use_ema: bool = False,
                   ema_momentum: float = 0.99) -> keras.optimizers.Optimizer:
    """Adam (decoupled weight decay) or SGD with Nesterov momentum, a schedule over the run, optional
    exponential moving average of the weights (validated and kept through keras.callbacks.SwapEMAWeights)."""
    lr = make_schedule(schedule, learning_rate, decay_steps, steps_per_epoch)
    common: dict[str, Any] = {"weight_decay": weight_decay or None, "use_ema": use_ema, "ema_momentum": ema_momentum}
    if name == "adam":
        return keras.optimizers.Adam(lr, **common)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **common)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', but got optimizer={name!r}")




def predict_probabilities(model: keras.Model, x: Any, tta: str = "none", batch_size: int = 500) -> Any:
    """Class probabilities for raw uint8 images; ``tta="flip"`` averages them with the horizontally flipped
    images' (test-time augmentation). Validation scoring and the final test evaluation both come here, so
    the study's search and its report score images the same way."""
    import numpy as np

    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {list(TTA_MODES)}, but got tta={tta!r}")
    probabilities = _predict(model, x, batch_size)
    if tta == "flip":
        probabilities = (probabilities + _predict(model, x[:, :, ::-1], batch_size)) / 2
    return np.asarray(probabilities)


def _predict(model: keras.Model, x: Any, batch_size: int) -> Any:
    import numpy as np

    out = [model(np.asarray(x[i:i + batch_size], dtype="float32"), training=False) for i in range(0, len(x), batch_size)]
    return np.concatenate([np.asarray(o, dtype="float32") for o in out])


class ValidationScorer(keras.callbacks.Callback):
    """Scores the validation split after each epoch into ``val_accuracy`` (what pruning and the trial's value
    read), with the study's test-time augmentation; ``val_accuracy_plain`` keeps the un-augmented score.

    ``x_val_flipped``: the model's inputs for the mirrored images, when its inputs are not images (InceptionV3
    trains on cached trunk features: the mirrored images' features are cached too); default: ``x_val`` flipped."""

    def __init__(self, x_val: Any, y_val: Any, tta: str = "none", batch_size: int = 500,
                 x_val_flipped: Any = None) -> None:
        super().__init__()
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {list(TTA_MODES)}, but got tta={tta!r}")
        self.x_val, self.y_val, self.tta, self.batch_size = x_val, y_val, tta, batch_size
        self.x_val_flipped = x_val_flipped

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        import numpy as np

        if logs is None:
            return
        labels = np.asarray(self.y_val).reshape(-1)
        plain = _predict(self.model, self.x_val, self.batch_size)
        logs["val_accuracy_plain"] = float((plain.argmax(-1) == labels).mean())
        if self.tta == "flip":
            mirrored = self.x_val[:, :, ::-1] if self.x_val_flipped is None else self.x_val_flipped
            flipped = _predict(self.model, mirrored, self.batch_size)
            logs[MONITOR] = float((((plain + flipped) / 2).argmax(-1) == labels).mean())
        else:
            logs[MONITOR] = logs["val_accuracy_plain"]


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
    # ``callbacks`` run before pruning reads the epoch's logs (a ValidationScorer writes val_accuracy there).
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
                        shuffle=False, callbacks=[timer, *(callbacks or []), pruning])
    fit_seconds = time.perf_counter() - start
    return TrainResult(
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        params=int(model.count_params()),
        fit_seconds=fit_seconds,
        train_seconds=sum(timer.train_seconds),
        train_images=n_train * len(timer.train_seconds),
        pruned_at=pruning.pruned_at,
    )
