"""The pruning callback driven by scripted epoch logs (no training)."""

import keras
import optuna
import pytest

from cifar_hpo.search.models.training import MissingMetricError, PruningCallback, TrainResult


class PruneBelow(optuna.pruners.BasePruner):
    """Prunes as soon as the last reported value is below a threshold."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        return step is not None and trial.intermediate_values[step] < self.threshold


def scripted(callback: PruningCallback, values: list[float]) -> int:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.stop_training = False  # fit() sets this; the callback flips it to stop
    callback.set_model(model)
    epochs = 0
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"loss": 1.0, "val_accuracy": value})
        epochs += 1
        if callback.model.stop_training:
            break
    return epochs


def test_reports_every_epoch_and_stops_when_pruned():
    study = optuna.create_study(direction="maximize", pruner=PruneBelow(0.5))
    trial = study.ask()
    callback = PruningCallback(trial)
    assert scripted(callback, [0.6, 0.7, 0.4, 0.9]) == 3
    assert callback.pruned_at == 3
    assert study.trials[0].intermediate_values == {1: 0.6, 2: 0.7, 3: 0.4}


def test_never_pruned_reports_all_epochs():
    study = optuna.create_study(direction="maximize", pruner=PruneBelow(0.0))
    trial = study.ask()
    callback = PruningCallback(trial, step_offset=2)
    assert scripted(callback, [0.1, 0.2]) == 2
    assert callback.pruned_at is None
    assert study.trials[0].intermediate_values == {3: 0.1, 4: 0.2}


def test_missing_metric_fails_loudly():
    study = optuna.create_study(direction="maximize")
    callback = PruningCallback(study.ask())
    callback.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    with pytest.raises(MissingMetricError, match=r"'val_accuracy' is not in the epoch logs \['accuracy', 'loss'\]"):
        callback.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})


def test_train_result_summaries():
    result = TrainResult(history={"val_accuracy": [0.2, 0.5, 0.4]}, train_seconds=2.0, train_images=1000)
    assert (result.best_epoch, result.best_val_accuracy, result.epochs_run) == (2, 0.5, 3)
    assert result.images_per_s == 500.0
    later = TrainResult(history={"val_accuracy": [0.6]}, train_seconds=1.0, train_images=500, pruned_at=4)
    result.merge(later)
    assert result.best_epoch == 4 and result.pruned_at == 4 and result.epochs_run == 4
