"""Augmentation from one knob, ``augment_strength`` in [0, 1], as Keras preprocessing layers.

Layers live inside the model, so they run on the GPU when there is one and are inactive at inference.
At strength s: horizontal flip (s > 0), translation up to 12.5%*s, rotation up to 18 deg*s, zoom up to
15%*s, contrast up to 30%*s. Inputs are pixels in [0, 255].
"""

from __future__ import annotations

from typing import Any


def augmentation_layers(strength: float, seed: int | None = None) -> list[Any]:
    """The layers for ``strength`` (empty list at 0)."""
    import keras

    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augment_strength must be in [0, 1], but got augment_strength={strength}")
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
