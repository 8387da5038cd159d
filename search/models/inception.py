"""The `inception` space's model builder and training recipe. Takes a typed InceptionConfig, never a Trial.

The ImageNet InceptionV3 trunk is cut at ``mixed{cut_block}``: the part below (resize, ``preprocess_input``
scaling, blocks up to the cut) is frozen, so its output is computed once per image and kept in
cifar_hpo.search.models.feature_cache; the trainable part (the top ``unfreeze_blocks`` blocks and the head) trains on those
features. Augmentation with the cache: each training image gets ``AUG_VIEWS`` fixed augmented views
(seeded, shared by all trials with the same strength), computed once; epoch ``e`` trains on view
``e mod AUG_VIEWS``. The cache is bypassed, and the trunk with live augmentation runs every epoch, when
``HPO_FEATURE_CACHE=off`` or the trunk has random weights (``weights=None``, tests only).
The trunk runs under the trial's dtype policy (search/models/precision.py): bf16 features stay close to
float32 ones (cosine 0.999 median) and extract faster on a bf16 CPU, and the cache keys entries by the compute
dtype, so bf16 and float32 features never mix.

Two phases share one step counter for pruning: ``warmup_epochs`` of head-only training at ``head_lr``,
then fine-tuning of the unfrozen blocks and the head at ``head_lr * finetune_lr_fraction``. The
unfrozen blocks' BatchNormalization layers stay frozen, in inference mode (moving statistics and offsets).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cifar_hpo.search.models.augment import augmentation_layers
from cifar_hpo.search.models.data import IMAGE_SHAPE, NUM_CLASSES, Split, make_dataset
from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.models.feature_cache import (STORE_DTYPE, CacheKey, FeatureCache, array_fingerprint, default_cache,
                                  weights_identity)
from cifar_hpo.search.models.phase import report_phase
from cifar_hpo.search.models.training import Reporter, TrainResult, ValidationScorer, fit_tracked
from cifar_hpo.spaces.inception import TOP_BLOCK, InceptionConfig

AUG_VIEWS = 2  # fixed augmented views per training image when training on cached features
AUG_SEED = 20240  # views are shared by every trial (same strength), so their seed is not the trial's
TRUNK_BATCH = 32  # images per trunk forward pass while filling the cache (fastest on CPU: benchmarks/precision.py)
CHUNK = 2048  # images cast/augmented at a time (bounds memory on full CIFAR-10)
EVAL_BATCH = 256
WEIGHTS_HINT = "give 'imagenet' or a .weights.h5 file saved from keras.applications.InceptionV3(include_top=False)"

_FROM_SETTINGS: Any = object()


def block_name(block: int) -> str:
    return f"mixed{block}"


# --- weights -------------------------------------------------------------------------------------------

def load_trunk(weights: str | None, input_size: int) -> keras.Model:
    """InceptionV3 without its classifier at ``input_size`` px; loading problems become ConfigError."""
    shape = (input_size, input_size, 3)
    if weights == "imagenet":
        try:
            return keras.applications.InceptionV3(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as err:  # download errors come in many types; the message is what matters
            first = str(err).splitlines()[0] if str(err) else ""
            raise ConfigError(f"could not get the ImageNet InceptionV3 weights through Keras ({type(err).__name__}: "
                              f"{first}); offline, pass --weights PATH to a .weights.h5 file") from None
    trunk = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=shape)
    if weights is not None:
        _load_weights_file(trunk, Path(weights).expanduser())
    return trunk


def _load_weights_file(model: keras.Model, path: Path) -> None:
    try:
        model.load_weights(str(path))
    except Exception as err:  # h5py/Keras raise OSError, ValueError, KeyError ... for files that do not fit
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"--weights {str(path)!r} does not fit InceptionV3(include_top=False) ({first}); {WEIGHTS_HINT}") from None


def _file_weight_shapes(path: Path) -> Counter:
    import h5py

    shapes: Counter = Counter()
    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda _, obj: shapes.update([tuple(obj.shape)]) if isinstance(obj, h5py.Dataset) else None)
    except OSError as err:
        reason = str(err).split("(")[-1].rstrip(")") if "(" in str(err) else str(err)
        raise ConfigError(f"--weights {str(path)!r} is not a readable HDF5 weights file ({reason}); {WEIGHTS_HINT}") from None
    return shapes


def check_weights(weights: str) -> None:
    """Refuse, with one clear line, a weights file that is missing, truncated or made for another model.

    "imagenet" passes without a download (Keras fetches it when a trial first builds the trunk). A file
    must hold a tensor of the right shape for each of InceptionV3's 376 variables and load without error.
    """
    if weights == "imagenet":
        return
    if not isinstance(weights, str) or not weights:
        raise ConfigError(f"--weights must be 'imagenet' or a path, but got {weights!r}")
    path = Path(weights).expanduser()
    if not path.exists():
        raise ConfigError(f"--weights {str(path)!r} does not exist; {WEIGHTS_HINT}")
    if not path.is_file():
        raise ConfigError(f"--weights {str(path)!r} is not a file; {WEIGHTS_HINT}")
    if not path.name.endswith((".weights.h5", ".h5", ".hdf5")):
        raise ConfigError(f"--weights {str(path)!r} must end in .weights.h5 (or a legacy .h5); {WEIGHTS_HINT}")
    found = _file_weight_shapes(path)
    model = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
    expected = Counter(tuple(w.shape) for w in model.weights)
    missing = expected - found
    if missing:
        n = sum(missing.values())
        raise ConfigError(f"--weights {str(path)!r} does not fit InceptionV3(include_top=False): {n} of its "
                          f"{sum(expected.values())} weight tensors have no match in the file; {WEIGHTS_HINT}")
    _load_weights_file(model, path)
    keras.backend.clear_session()


# --- model ---------------------------------------------------------------------------------------------

@dataclass
class InceptionParts:
    """The shared layers of one trial, seen as the pieces the cache needs.

    ``bottom``: pixels (32x32, 0..255) -> cut features, frozen. ``top``: cut features -> mixed10 output
    (None when nothing is unfrozen). ``classifier``: mixed10 output -> class probabilities (pooling, head);
    its layers are shared by ``head``: cut features -> class probabilities (top, then classifier).
    ``full``: pixels -> probabilities, augmentation included; what the trainer returns.
    """

    config: InceptionConfig
    trunk: keras.Model
    bottom: keras.Model
    top: keras.Model | None
    classifier: keras.Model
    head: keras.Model
    full: keras.Model
    compute_dtype: str = "float32"  # of the policy the trunk was built under; part of the cache key

    def set_top_trainable(self, trainable: bool) -> None:
        """Per layer (a Functional model cut out of another does not pass ``trainable`` on to its layers).

        BatchNormalization layers stay non-trainable: Keras 3 lets the outer ``fit`` override the
        ``training=False`` of the nested call, and a frozen BN layer always runs in inference mode.
        """
        if self.top is not None:
            self.top.trainable = trainable
            for layer in self.top.layers:
                layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)

    def between(self, low_block: int, high_block: int | None = None) -> keras.Model:
        """mixed{low_block} output -> mixed{high_block} output (default: the cut): derives features from a
        lower cut's cached ones."""
        high = self.config.cut_block if high_block is None else high_block
        return keras.Model(self.trunk.get_layer(block_name(low_block)).output,
                           self.trunk.get_layer(block_name(high)).output)


def build_inception(config: InceptionConfig, weights: str | None = "imagenet", seed: int | None = None) -> InceptionParts:
    """The trunk with ``weights`` ('imagenet', a .weights.h5 path, or None for random), cut per ``config``."""
    config.check_feasible()
    layers = keras.layers
    trunk = load_trunk(weights, config.input_size)
    trunk.trainable = False
    cut = trunk.get_layer(block_name(config.cut_block)).output
    pixels = keras.Input(IMAGE_SHAPE, name="pixels")
    x = layers.Resizing(config.input_size, config.input_size, interpolation="bilinear", name="resize")(pixels)
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_input")(x)  # inception_v3.preprocess_input
    x = keras.Model(trunk.input, cut, name="trunk_below_cut")(x, training=False)
    bottom = keras.Model(pixels, x, name="bottom")
    top = keras.Model(cut, trunk.output, name="unfrozen_blocks") if config.unfreeze_blocks else None

    final = keras.Input(tuple(trunk.output.shape[1:]), name="final_features")
    x = layers.GlobalAveragePooling2D()(final) if config.pooling == "avg" else layers.GlobalMaxPooling2D()(final)
    if config.head_dense:
        if config.head_dropout > 0:
            x = layers.Dropout(config.head_dropout, seed=seed)(x)
        x = layers.Dense(config.head_dense, activation="relu", name="head_dense")(x)
    if config.head_dropout > 0:
        x = layers.Dropout(config.head_dropout, seed=seed)(x)
    # float32 probabilities under any mixed-precision policy: losses and metrics stay stable
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="classes", dtype="float32")(x)
    classifier = keras.Model(final, outputs, name="classifier")
    if top is None:  # a frozen extractor: the cut is mixed10, and the classifier is the whole head
        head = classifier
    else:
        features = keras.Input(tuple(cut.shape[1:]), name="features")
        head = keras.Model(features, classifier(top(features, training=False)), name="head")  # BN: inference

    pixels = keras.Input(IMAGE_SHAPE, name="pixels")
    x = pixels
    for layer in augmentation_layers(config.augment_strength, seed=seed):
        x = layer(x)
    full = keras.Model(pixels, head(bottom(x, training=False)), name="inception_transfer")
    compute_dtype = str(keras.mixed_precision.global_policy().compute_dtype)  # set by search/models/precision.py
    return InceptionParts(config, trunk, bottom, top, classifier, head, full, compute_dtype)


def compile_phase(model: keras.Model, config: InceptionConfig, learning_rate: float) -> None:
    """Adam at ``learning_rate``; one-hot targets so label smoothing applies."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=["accuracy"])


# --- cached features -----------------------------------------------------------------------------------

class FeatureSequence(keras.utils.PyDataset):
    """Batches of cached features; epoch ``e`` reads view ``e mod len(views)``, reshuffled each epoch."""

    def __init__(self, views: list[np.ndarray], labels: np.ndarray, batch_size: int, *, shuffle: bool,
                 seed: int = 0) -> None:
        super().__init__()
        if not views or any(len(v) != len(labels) for v in views):
            raise ValueError(f"each view needs one row per label ({len(labels)}), but got {[len(v) for v in views]}")
        self.views, self.batch_size, self.shuffle = views, batch_size, shuffle
        self.targets = keras.utils.to_categorical(labels, NUM_CLASSES).astype("float32")
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.order = self.rng.permutation(len(labels)) if shuffle else np.arange(len(labels))

    def __len__(self) -> int:
        return math.ceil(len(self.targets) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
        view = self.views[self.epoch % len(self.views)]
        return np.asarray(view[rows], dtype="float32"), self.targets[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        if self.shuffle:
            self.order = self.rng.permutation(len(self.targets))


def augmented_pixels(x: np.ndarray, strength: float, view: int) -> np.ndarray:
    """View ``view`` of ``x`` under augmentation ``strength``: the same arrays whenever asked again."""
    layers = augmentation_layers(strength, seed=AUG_SEED + view)
    out = np.empty(x.shape, dtype="float32")
    for start in range(0, len(x), CHUNK):
        batch = x[start:start + CHUNK].astype("float32")
        for layer in layers:
            batch = layer(batch, training=True)
        out[start:start + CHUNK] = keras.ops.convert_to_numpy(batch)
    return out


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Chunked predict, each chunk cast to the cache's dtype at once (full CIFAR-10 stays within memory);
    reports its progress as the "cache fill" phase (minutes on a CPU: the watcher shows it)."""
    parts = []
    for s in range(0, len(x), CHUNK):
        report_phase("cache fill", s, len(x))
        parts.append(model.predict(x[s:s + CHUNK].astype("float32"), batch_size=TRUNK_BATCH, verbose=0).astype(STORE_DTYPE))
    report_phase("cache fill", len(x), len(x))
    return np.concatenate(parts)


def cut_features(parts: InceptionParts, x: np.ndarray, cache: FeatureCache, weights_id: str, *,
                 strength: float = 0.0, view: int = 0, data_id: str | None = None,
                 block: int | None = None) -> np.ndarray:
    """Features at the cut (or at frozen ``block`` above it) for pixels ``x`` (view ``view`` at ``strength``;
    0 = clean), through the cache.

    A miss first looks for the same images cached at a lower cut and runs only the blocks in between.
    """
    data_id = data_id or array_fingerprint(x)
    view_id = "clean" if strength == 0 else f"aug{strength:g}-seed{AUG_SEED}-view{view}"

    def key(block: int) -> CacheKey:
        return CacheKey(weights_id, parts.config.input_size, block_name(block), data_id, view_id,
                        precision=parts.compute_dtype)

    cut = parts.config.cut_block if block is None else block

    def compute() -> np.ndarray:
        if cut != parts.config.cut_block:  # above the cut: from the cut's features (cached or computed now)
            at_cut = cut_features(parts, x, cache, weights_id, strength=strength, view=view, data_id=data_id)
            return _predict(parts.between(parts.config.cut_block, cut), np.asarray(at_cut))
        for lower in range(cut - 1, -1, -1):
            below = cache.get(key(lower))
            if below is not None:
                return _predict(parts.between(lower, cut), np.asarray(below))
        pixels = x if strength == 0 else augmented_pixels(x, strength, view)
        return _predict(parts.bottom, pixels)

    return cache.get_or_compute(key(cut), compute)


# --- training ------------------------------------------------------------------------------------------

def _phases(config: InceptionConfig, epochs: int) -> tuple[int, int]:
    """(head-only epochs, fine-tuning epochs); the total is always ``epochs``."""
    if config.unfreeze_blocks == 0:
        return epochs, 0
    warm = min(config.warmup_epochs, epochs)
    return warm, epochs - warm


def train_inception(config: InceptionConfig, split: Split, *, epochs: int, trial: Reporter | None,
                    seed: int = 0, settings: Any = None, weights: Any = _FROM_SETTINGS,
                    cache: Any = _FROM_SETTINGS, callbacks: list[Any] | None = None,
                    **_: Any) -> tuple[keras.Model, TrainResult]:
    """Train on split.x_train, validate each epoch on split.x_val, reporting to ``trial`` for pruning.

    ``weights`` defaults to ``settings.weights`` ('imagenet' without settings); ``cache`` to the process-wide
    cifar_hpo.search.models.feature_cache.default_cache() (None: no cache); ``callbacks`` go to both phases' ``fit`` (benchmarks).
    Returns the full pixels -> probabilities model.

    With the study's ``tta="flip"`` validation is scored on each image and its mirror (predictions averaged), as
    the test evaluation scores the returned model; with the cache, the mirrored images' features are cached too.
    """
    if weights is _FROM_SETTINGS:
        weights = getattr(settings, "weights", None) or "imagenet"
    if cache is _FROM_SETTINGS:
        cache = default_cache()
    parts = build_inception(config, weights, seed=seed)
    weights_id = weights_identity(weights)
    use_cache = cache is not None and weights_id is not None
    warm, tune = _phases(config, epochs)
    n_train = len(split.x_train)
    tta = getattr(settings, "tta", "none") or "none"
    warm_model = warm_train = warm_val = None
    warm_scorer: list[Any] = []
    if use_cache:
        before = cache.stats.as_dict()
        n_views = 1 if config.augment_strength == 0 else AUG_VIEWS

        def data(block: int | None) -> tuple[FeatureSequence, Any, list[Any]]:
            """Training views, and validation data for fit (None when a scorer scores it, with TTA)."""
            views = [cut_features(parts, split.x_train, cache, weights_id, strength=config.augment_strength,
                                  view=v, block=block) for v in range(n_views)]
            train = FeatureSequence(views, split.y_train, config.batch_size, shuffle=True, seed=seed)
            val = cut_features(parts, split.x_val, cache, weights_id, block=block)
            if tta == "none":
                return train, FeatureSequence([val], split.y_val, EVAL_BATCH, shuffle=False), []
            mirrored = cut_features(parts, np.ascontiguousarray(split.x_val[:, :, ::-1]), cache, weights_id,
                                    block=block)
            return train, None, [ValidationScorer(val, split.y_val, tta, EVAL_BATCH, x_val_flipped=mirrored)]

        train_data, val_data, scorer = data(None)
        model = parts.head
        if warm and parts.top is not None:
            # Warm-up trains the classifier alone while the top blocks are frozen: their output is fixed
            # too, so it is cached and the warm-up epochs skip the top blocks entirely.
            warm_model = parts.classifier
            warm_train, warm_val, warm_scorer = data(TOP_BLOCK)
        if trial is not None:
            after = cache.stats.as_dict()
            trial.set_user_attr("feature_cache", {k: round(after[k] - before[k], 3) for k in after})
            # Time this trial spent filling the cache (0 when every array was cached): reports show it apart
            # from training time, which it would otherwise seem to inflate.
            trial.set_user_attr("cache_fill_seconds", round(after["compute_seconds"] - before["compute_seconds"], 3))
    else:
        train_data = _onehot(make_dataset(split.x_train, split.y_train, config.batch_size, shuffle=True, seed=seed))
        val_data = _onehot(make_dataset(split.x_val, split.y_val, EVAL_BATCH, shuffle=False))
        scorer = []
        if tta != "none":
            val_data, scorer = None, [ValidationScorer(split.x_val, split.y_val, tta, EVAL_BATCH)]
        model = parts.full

    result = TrainResult()
    if warm:
        parts.set_top_trainable(False)
        if warm_model is None:
            warm_model, warm_train, warm_val, warm_scorer = model, train_data, val_data, scorer
        compile_phase(warm_model, config, config.head_lr)
        result.merge(fit_tracked(warm_model, warm_train, warm_val, epochs=warm, n_train=n_train, trial=trial,
                                 callbacks=[*warm_scorer, *(callbacks or [])]))
    if tune and result.pruned_at is None:
        parts.set_top_trainable(True)
        compile_phase(model, config, config.head_lr * config.finetune_lr_fraction)
        result.merge(fit_tracked(model, train_data, val_data, epochs=tune, n_train=n_train, trial=trial,
                                 step_offset=warm, callbacks=[*scorer, *(callbacks or [])]))
    result.params = int(parts.full.count_params())
    parts.full.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return parts.full, result


def _onehot(dataset: Any) -> Any:
    import tensorflow as tf

    return dataset.map(lambda images, labels: (images, tf.one_hot(tf.cast(labels, tf.int32), NUM_CLASSES)))


__all__ = ["TOP_BLOCK", "InceptionParts", "build_inception", "check_weights", "cut_features", "train_inception"]
