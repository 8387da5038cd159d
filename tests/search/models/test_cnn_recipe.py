"""The cnn training recipe: residual stages, schedules, label smoothing, mixing, EMA and test-time flips,
on tiny synthetic data (each test trains for a second or two)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from hpo_testkit import make_tiny_cifar

from cifar_hpo.search.models.cnn import build_cnn, train_cnn
from cifar_hpo.search.models.data import Split
from cifar_hpo.search.models.training import OneCycle, ValidationScorer, make_schedule, predict_probabilities
from cifar_hpo.search.settings import StudySettings
from cifar_hpo.spaces.cnn import PRIORS

TINY = dict(depth=2, convs_per_block=1, base_filters=8, filter_growth=1.0, dense_units=16, batch_size=64)


def tiny_split(n: int = 400) -> Split:
    data = make_tiny_cifar(n_train=n, n_test=100)
    return Split(data["x_train"][:-100], data["y_train"][:-100], data["x_train"][-100:], data["y_train"][-100:])


def test_residual_stages_have_projection_shortcuts_and_a_float32_output() -> None:
    config = dataclasses.replace(PRIORS["resnet"], **{**TINY, "filter_growth": 2.0})
    model = build_cnn(config)
    names = [layer.name for layer in model.layers]
    assert "stem" in names and "block2_unit1_proj" in names and "block1_unit1_proj" not in names
    assert sum(name.endswith("_add") for name in names) == config.depth * config.convs_per_block
    assert model.output.dtype == "float32"


def test_one_cycle_rises_to_its_peak_then_falls() -> None:
    schedule = OneCycle(0.1, 100)
    values = [float(schedule(step)) for step in (0, 15, 30, 65, 100)]
    assert values[0] == pytest.approx(0.1 / 25) and values[2] == pytest.approx(0.1)
    assert values[0] < values[1] < values[2] > values[3] > values[4] and values[4] == pytest.approx(0.1 / 2500, rel=1e-3)


def test_warmup_cosine_warms_up_for_one_epoch_then_decays_to_zero() -> None:
    schedule = make_schedule("warmup_cosine", 0.01, decay_steps=100, steps_per_epoch=5)
    assert float(schedule(0)) == pytest.approx(0.001)
    assert float(schedule(5)) == pytest.approx(0.01, rel=1e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="schedule must be one of"):
        make_schedule("step", 0.01, 100)


class Mirror(keras.Model):
    """Class 1 when the left half is brighter than the right half, else class 0."""

    def call(self, x: object, training: bool = False) -> object:
        left = keras.ops.mean(x[:, :, :16], axis=(1, 2, 3))
        right = keras.ops.mean(x[:, :, 16:], axis=(1, 2, 3))
        one = keras.ops.cast(left > right, "float32")
        return keras.ops.stack([1.0 - one, one] + [keras.ops.zeros_like(one)] * 8, axis=-1)


def test_flip_tta_averages_each_image_with_its_mirror() -> None:
    x = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    x[0, :, :16] = 200  # brighter left half: class 1; its mirror says class 0
    plain = predict_probabilities(Mirror(), x)
    flipped = predict_probabilities(Mirror(), x, tta="flip")
    assert plain[0].argmax() == 1 and flipped[0, 0] == pytest.approx(0.5) and flipped[0, 1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="tta must be one of"):
        predict_probabilities(Mirror(), x, tta="crops")


def test_validation_scorer_writes_the_tta_score_and_keeps_the_plain_one() -> None:
    x = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    x[:2, :, :16] = 200
    scorer = ValidationScorer(x, np.array([1, 1, 0, 0]), tta="flip")
    scorer.set_model(Mirror())
    logs: dict = {}
    scorer.on_epoch_end(0, logs)
    # Mirrored, the two bright-left images say class 0: averaged, a tie, which argmax gives to class 0.
    assert logs["val_accuracy_plain"] == 1.0 and logs["val_accuracy"] == 0.5


@pytest.mark.parametrize("changes", [
    {"mixing": "mixup", "label_smoothing": 0.1},
    {"mixing": "cutmix", "use_ema": True, "lr_schedule": "one_cycle", "optimizer": "sgd", "learning_rate": 0.05},
    {"block": "residual", "augment_strength": 0.9, "lr_schedule": "warmup_cosine"},
], ids=["mixup-smoothing", "cutmix-ema-onecycle", "residual-erasing"])
def test_recipes_train_and_score_validation_with_flips(changes: dict) -> None:
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(PRIORS["vgg_bn"], **TINY, **changes)
    settings = StudySettings(space="cnn", epochs=2)
    assert settings.tta == "flip"  # the cnn space's default
    model, result = train_cnn(config, tiny_split(), epochs=2, trial=None, seed=0, settings=settings)
    assert result.epochs_run == 2 and set(result.history) >= {"val_accuracy", "val_accuracy_plain", "loss"}
    assert all(0.0 <= v <= 1.0 for v in result.history["val_accuracy"])
    assert result.images_per_s > 0 and model.count_params() == result.params
