"""The `cnn` space's model builder and training recipe. Takes a typed CnnConfig, never a Trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from cifar_hpo.search.models.augment import cnn_augmentation_layers
from cifar_hpo.search.models.data import NUM_CLASSES, Split, make_dataset
from cifar_hpo.search.models.training import (
    Reporter, TrainResult, ValidationScorer, fit_tracked, make_optimizer, steps_per_epoch,
)
from cifar_hpo.spaces.cnn import IMAGE_SIZE, CnnConfig

# MixUp/CutMix at Keras' default strengths (MixUp alpha, CutMix factor): mixing is a switch, not a dial.
MIXING_LAYERS = {"mixup": ("MixUp", {"alpha": 0.2}), "cutmix": ("CutMix", {"factor": 1.0})}
EMA_MOMENTUM = 0.99


def build_cnn(config: CnnConfig, mean: np.ndarray | None = None, variance: np.ndarray | None = None,
              seed: int | None = None) -> keras.Model:
    """The network for ``config`` on raw [0, 255] pixels: augmentation, normalisation, stages, head.

    ``mean``/``variance`` are per-channel statistics of the training images (standard CIFAR values if
    omitted); baked into the model so a saved model needs no preprocessing.
    """
    config.feature_map_sizes()  # raises InfeasibleConfig before any layer is built
    layers = keras.layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    x = inputs
    for layer in cnn_augmentation_layers(config.augment_strength, config.augment_policy, seed=seed):
        x = layer(x)
    mean = np.array([125.3, 123.0, 113.9]) if mean is None else mean
    variance = np.array([63.0, 62.1, 66.7]) ** 2 if variance is None else variance
    x = layers.Normalization(mean=mean, variance=variance, name="normalize")(x)
    if config.block == "residual":
        x = layers.Conv2D(config.block_filters()[0], 3, padding="same", use_bias=False, name="stem")(x)
    for block, filters in enumerate(config.block_filters()):
        if config.block == "residual":
            x = _residual_stage(x, filters, config.convs_per_block, name=f"block{block + 1}")
        else:
            x = _plain_stage(x, filters, config, name=f"block{block + 1}")
        if block < config.depth - 1:
            x = layers.MaxPooling2D(2, name=f"block{block + 1}_pool")(x)
            if config.conv_dropout > 0:
                x = layers.Dropout(config.conv_dropout, seed=seed)(x)
    if config.block == "residual":  # pre-activation units end without a normalisation of their sum
        x = layers.BatchNormalization(name="final_bn")(x)
        x = layers.Activation("relu", name="final_relu")(x)
    x = layers.Flatten()(x) if config.head == "flatten" else layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    if config.dense_dropout > 0:
        x = layers.Dropout(config.dense_dropout, seed=seed)(x)
    # float32 probabilities whatever the compute precision: losses and metrics stay stable.
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs, outputs, name="cnn")


def _plain_stage(x: Any, filters: int, config: CnnConfig, name: str) -> Any:
    layers = keras.layers
    for conv in range(config.convs_per_block):
        x = layers.Conv2D(filters, config.kernel_size, padding=config.padding, use_bias=not config.batch_norm,
                          name=f"{name}_conv{conv + 1}", activation=None if config.batch_norm else "relu")(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{conv + 1}")(x)
            x = layers.Activation("relu")(x)
    return x


def _residual_stage(x: Any, filters: int, units: int, name: str) -> Any:
    """``units`` pre-activation basic units (BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut); the first one
    projects the shortcut with a 1x1 convolution when the width changes."""
    layers = keras.layers
    for unit in range(units):
        prefix = f"{name}_unit{unit + 1}"
        y = layers.BatchNormalization(name=f"{prefix}_bn1")(x)
        y = layers.Activation("relu")(y)
        shortcut = x if x.shape[-1] == filters else layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}_proj")(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv1")(y)
        y = layers.BatchNormalization(name=f"{prefix}_bn2")(y)
        y = layers.Activation("relu")(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv2")(y)
        x = layers.Add(name=f"{prefix}_add")([shortcut, y])
    return x


def compile_cnn(model: keras.Model, config: CnnConfig, n_train: int, epochs: int) -> None:
    """Optimizer, schedule over the whole run, EMA, and label-smoothed cross-entropy on one-hot labels."""
    optimizer = make_optimizer(config.optimizer, config.learning_rate, config.weight_decay,
                               schedule=config.lr_schedule,
                               decay_steps=steps_per_epoch(n_train, config.batch_size) * epochs,
                               steps_per_epoch=steps_per_epoch(n_train, config.batch_size),
                               use_ema=config.use_ema, ema_momentum=EMA_MOMENTUM)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


@dataclass
class CnnInputs:
    """What fitting a cnn needs besides the model: the training pipeline and the callbacks that score
    validation (the same way the final test evaluation scores the test set) and swap in EMA weights."""

    train: Any
    callbacks: list[keras.callbacks.Callback]


def cnn_inputs(config: CnnConfig, split: Split, *, seed: int, tta: str) -> CnnInputs:
    """One-hot labels (label smoothing, MixUp/CutMix), mixing in the input pipeline, validation scoring."""
    import tensorflow as tf

    train = make_dataset(split.x_train, split.y_train, config.batch_size, shuffle=True, seed=seed)
    train = train.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), NUM_CLASSES)),
                      num_parallel_calls=tf.data.AUTOTUNE)
    if config.mixing != "none":
        layer_name, strength = MIXING_LAYERS[config.mixing]
        # float32 whatever the global policy: it mixes input pixels and labels, not activations
        mixer = getattr(keras.layers, layer_name)(**strength, seed=seed, dtype="float32")

        def mix(images: Any, labels: Any) -> tuple[Any, Any]:
            mixed = mixer({"images": images, "labels": labels}, training=True)
            return mixed["images"], mixed["labels"]

        train = train.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    callbacks: list[keras.callbacks.Callback] = []
    if config.use_ema:  # validation (and the model after fit) use the averaged weights
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.append(ValidationScorer(split.x_val, split.y_val, tta=tta))
    return CnnInputs(train.prefetch(tf.data.AUTOTUNE), callbacks)


def train_cnn(config: CnnConfig, split: Split, *, epochs: int, trial: Reporter | None,
              seed: int = 0, settings: Any = None, **_: Any) -> tuple[keras.Model, TrainResult]:
    """Train on split.x_train, score split.x_val after each epoch (with the study's test-time augmentation),
    reporting to ``trial`` for pruning."""
    mean, variance = split.train_channel_stats
    model = build_cnn(config, mean, variance, seed=seed)
    compile_cnn(model, config, len(split.x_train), epochs)
    inputs = cnn_inputs(config, split, seed=seed, tta=getattr(settings, "tta", "none"))
    result = fit_tracked(model, inputs.train, None, epochs=epochs, n_train=len(split.x_train), trial=trial,
                         callbacks=inputs.callbacks)
    return model, result
