"""The `cnn` space's model builder and training recipe. Takes a typed CnnConfig, never a Trial."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from cifar_hpo.search.models.augment import augmentation_layers
from cifar_hpo.search.models.data import NUM_CLASSES, Split, make_dataset
from cifar_hpo.search.models.training import Reporter, TrainResult, fit_tracked, make_optimizer, steps_per_epoch
from cifar_hpo.spaces.cnn import IMAGE_SIZE, CnnConfig


def build_cnn(config: CnnConfig, mean: np.ndarray | None = None, variance: np.ndarray | None = None,
              seed: int | None = None) -> keras.Model:
    """The network for ``config`` on raw [0, 255] pixels: augmentation, normalisation, conv blocks, head.

    ``mean``/``variance`` are per-channel statistics of the training images (standard CIFAR values if
    omitted); baked into the model so a saved model needs no preprocessing.
    """
    config.feature_map_sizes()  # raises InfeasibleConfig before any layer is built
    layers = keras.layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    x = inputs
    for layer in augmentation_layers(config.augment_strength, seed=seed):
        x = layer(x)
    mean = np.array([125.3, 123.0, 113.9]) if mean is None else mean
    variance = np.array([63.0, 62.1, 66.7]) ** 2 if variance is None else variance
    x = layers.Normalization(mean=mean, variance=variance, name="normalize")(x)
    for block, filters in enumerate(config.block_filters()):
        for conv in range(config.convs_per_block):
            x = layers.Conv2D(filters, config.kernel_size, padding=config.padding,
                              use_bias=not config.batch_norm, name=f"block{block + 1}_conv{conv + 1}",
                              activation=None if config.batch_norm else "relu")(x)
            if config.batch_norm:
                x = layers.BatchNormalization(name=f"block{block + 1}_bn{conv + 1}")(x)
                x = layers.Activation("relu")(x)
        if block < config.depth - 1:
            x = layers.MaxPooling2D(2, name=f"block{block + 1}_pool")(x)
            if config.conv_dropout > 0:
                x = layers.Dropout(config.conv_dropout, seed=seed)(x)
    x = layers.Flatten()(x) if config.head == "flatten" else layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    if config.dense_dropout > 0:
        x = layers.Dropout(config.dense_dropout, seed=seed)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="classes", dtype="float32")(x)  # float32 loss
    return keras.Model(inputs, outputs, name="cnn")


def compile_cnn(model: keras.Model, config: CnnConfig, n_train: int, epochs: int) -> None:
    optimizer = make_optimizer(config.optimizer, config.learning_rate, config.weight_decay,
                               schedule=config.lr_schedule,
                               decay_steps=steps_per_epoch(n_train, config.batch_size) * epochs)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def train_cnn(config: CnnConfig, split: Split, *, epochs: int, trial: Reporter | None,
              seed: int = 0, **_: Any) -> tuple[keras.Model, TrainResult]:
    """Train on split.x_train, validate each epoch on split.x_val, reporting to ``trial`` for pruning."""
    mean, variance = split.train_channel_stats
    model = build_cnn(config, mean, variance, seed=seed)
    compile_cnn(model, config, len(split.x_train), epochs)
    train_ds = make_dataset(split.x_train, split.y_train, config.batch_size, shuffle=True, seed=seed)
    val_ds = make_dataset(split.x_val, split.y_val, 512, shuffle=False)
    result = fit_tracked(model, train_ds, val_ds, epochs=epochs, n_train=len(split.x_train), trial=trial)
    return model, result
