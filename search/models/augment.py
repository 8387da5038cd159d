"""Augmentation from one knob, ``augment_strength`` in [0, 1], as Keras preprocessing layers.

Layers live inside the model, so they run on the GPU when there is one and are inactive at inference.
Inputs are pixels in [0, 255].

``augmentation_layers`` (the inception space, and cnn trials of studies made before the crop policy):
horizontal flip (s > 0), translation up to 12.5%*s, rotation up to 18 deg*s, zoom up to 15%*s, contrast up
to 30%*s.

``cnn_augmentation_layers`` with policy "crop_erase" (the cnn space), the recipe that decides CIFAR-10
accuracy at small cost: horizontal flip (s > 0); padded random crops, shifts up to 4 px (12.5%) reached at
s = 0.5; random erasing (cutout) from s > 0.5, applied to up to 50% of the images at s = 1; mild rotation,
zoom and contrast only from s > 0.75.
"""

from __future__ import annotations

from typing import Any


def _check(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augment_strength must be in [0, 1], but got augment_strength={strength}")


def augmentation_layers(strength: float, seed: int | None = None) -> list[Any]:
    """The layers for ``strength`` (empty list at 0)."""
    import keras

    _check(strength)
    if strength == 0.0:
        return []
    layers = keras.layers
    return [
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomTranslation(0.125 * strength, 0.125 * strength, fill_mode="reflect", seed=seed),
        layers.RandomRotation(0.05 * strength, fill_mode="reflect", seed=seed),
        layers.RandomZoom(0.15 * strength, fill_mode="reflect", seed=seed),
        layers.RandomContrast(0.3 * strength, value_range=(0, 255), seed=seed),
    ]


def cnn_augmentation_layers(strength: float, policy: str = "crop_erase", seed: int | None = None) -> list[Any]:
    """The cnn space's layers for ``strength`` under ``policy`` ("crop_erase", or "legacy" = augmentation_layers)."""
    import keras

    _check(strength)
    if policy == "legacy":
        return augmentation_layers(strength, seed)
    if policy != "crop_erase":
        raise ValueError(f"augment_policy must be 'crop_erase' or 'legacy', but got augment_policy={policy!r}")
    if strength == 0.0:
        return []
    layers = keras.layers
    shift = 0.125 * min(1.0, 2 * strength)
    result = [
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed),
    ]
    if strength > 0.5:
        result.append(layers.RandomErasing(factor=strength - 0.5, scale=(0.02, 0.25), value_range=(0, 255),
                                           seed=seed))
    if strength > 0.75:
        mild = strength - 0.75
        result += [layers.RandomRotation(0.1 * mild, fill_mode="reflect", seed=seed),
                   layers.RandomZoom(0.4 * mild, fill_mode="reflect", seed=seed),
                   layers.RandomContrast(0.8 * mild, value_range=(0, 255), seed=seed)]
    return result
