"""CIFAR-10 loading, validation, the train/validation split, and the tf.data input pipeline.

The test set is loaded only for final evaluation (reports, retrain); the search sees train/val only.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cifar_hpo.search.errors import ConfigError

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (32, 32, 3)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Cifar10:
    x_train: np.ndarray  # uint8 (N, 32, 32, 3)
    y_train: np.ndarray  # uint8/int (N,)
    x_test: np.ndarray
    y_test: np.ndarray

    def fingerprint(self) -> str:
        """sha256 over all four arrays: identifies the data a study was run on, wherever it is stored.

        Hashing 180 MB takes a noticeable fraction of a second, so it is computed once per object.
        """
        if "_fingerprint" not in self.__dict__:
            digest = hashlib.sha256()
            for array in (self.x_train, self.y_train, self.x_test, self.y_test):
                digest.update(np.ascontiguousarray(array).tobytes())
            object.__setattr__(self, "_fingerprint", digest.hexdigest()[:16])  # frozen: set once, here
        return self.__dict__["_fingerprint"]


@dataclass(frozen=True)
class Split:
    """The arrays a trial trains and validates on (never the test set)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @functools.cached_property
    def train_channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and variance of the training images, computed once per worker, not per trial."""
        return channel_stats(self.x_train)


def load_cifar10(path: str | Path | None = None) -> Cifar10:
    """CIFAR-10 from Keras' download (path None), a .npz, a cifar-10-batches-py folder or the .tar.gz."""
    if path is None:
        return _from_keras()
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"--data {str(path)!r} does not exist; give a .npz, a cifar-10-batches-py folder or cifar-10-python.tar.gz")
    if path.is_dir():
        data = _from_batches(lambda name: (path / name).read_bytes(), path)
    elif path.name.endswith((".tar.gz", ".tgz", ".tar")):
        data = _from_tarball(path)
    else:
        data = _from_npz(path)
    validate(data, str(path))
    return data


def _from_keras() -> Cifar10:
    import keras  # lazy: TensorFlow is only imported when data is really loaded

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as err:  # network errors come in many types; the message is what matters
        raise ConfigError(
            f"could not download CIFAR-10 through Keras ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "offline, pass --data PATH to a cifar10.npz, cifar-10-batches-py folder or cifar-10-python.tar.gz"
        ) from None
    data = Cifar10(x_train, y_train.reshape(-1), x_test, y_test.reshape(-1))
    validate(data, "keras.datasets.cifar10")
    return data


def _from_npz(path: Path) -> Cifar10:
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
            raise ConfigError(f"--data {str(path)!r} is not a readable .npz file (not a zip archive); "
                              "give a .npz, a cifar-10-batches-py folder or cifar-10-python.tar.gz")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise ConfigError(f"--data {str(path)!r} lacks array(s) {missing}; expected keys {list(NPZ_KEYS)}")
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except ConfigError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise ConfigError(f"--data {str(path)!r} holds pickled objects, which are not loaded for safety") from None
        raise ConfigError(f"--data {str(path)!r} is not a readable .npz file ({err})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError(f"--data {str(path)!r} is not a readable .npz file ({type(err).__name__}: {err})") from None
    return Cifar10(arrays["x_train"], _labels(arrays["y_train"]), arrays["x_test"], _labels(arrays["y_test"]))


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """The official batches are pickles; this refuses any global but the ones numpy arrays need."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[b"labels"]).reshape(-1)
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as err:
        raise ConfigError(f"{source} is not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    return np.ascontiguousarray(images), labels


def _from_batches(read: Any, where: Path) -> Cifar10:
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        try:
            raw = read(name)
        except (FileNotFoundError, KeyError):
            raise ConfigError(f"--data {str(where)!r} lacks {name}; expected the official cifar-10-batches-py layout") from None
        parts[name] = _read_batch(raw, f"{where}/{name}")
    train = [parts[n] for n in names[:-1]]
    return Cifar10(
        np.concatenate([x for x, _ in train]), _labels(np.concatenate([y for _, y in train])),
        parts["test_batch"][0], _labels(parts["test_batch"][1]),
    )


def _from_tarball(path: Path) -> Cifar10:
    try:
        with tarfile.open(path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

            def read(name: str) -> bytes:
                handle: BinaryIO | None = tar.extractfile(members[name])
                assert handle is not None  # members holds regular files only
                return handle.read()

            return _from_batches(read, path)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ConfigError(f"--data {str(path)!r} is not a readable tar archive ({type(err).__name__}: {err})") from None


def _labels(y: np.ndarray) -> np.ndarray:
    return y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y


def validate(data: Cifar10, source: str) -> None:
    """Shapes, dtypes, label range and class count; one clear ConfigError per problem."""
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise ConfigError(f"{source}: x_{split} has shape {x.shape}; expected (N, 32, 32, 3)")
        if x.dtype != np.uint8:
            raise ConfigError(f"{source}: x_{split} has dtype {x.dtype}; expected uint8 pixels 0..255")
        if y.ndim != 1:
            raise ConfigError(f"{source}: y_{split} has shape {y.shape}; expected (N,) or (N, 1)")
        if len(y) != len(x):
            raise ConfigError(f"{source}: {len(x)} images but {len(y)} labels in the {split} split")
        if len(x) == 0:
            raise ConfigError(f"{source}: the {split} split is empty")
        if not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"{source}: y_{split} has dtype {y.dtype}; expected integer class ids")
        if y.min() < 0 or y.max() >= NUM_CLASSES:
            raise ConfigError(f"{source}: y_{split} has labels {y.min()}..{y.max()}; expected 0..{NUM_CLASSES - 1}")
    present = np.unique(data.y_train).size
    if present != NUM_CLASSES:
        raise ConfigError(f"{source}: the training labels hold {present} classes; CIFAR-10 has {NUM_CLASSES}")


def split_train_val(data: Cifar10, val_size: int = 5000, subset: int | None = None, seed: int = 0) -> Split:
    """Stratified validation split from the training set, then an optional stratified training subset."""
    from sklearn.model_selection import train_test_split

    n = len(data.y_train)
    if not NUM_CLASSES <= val_size <= n - NUM_CLASSES:
        raise ConfigError(f"--val-size must be between {NUM_CLASSES} and {n - NUM_CLASSES}, but got {val_size}")
    x_train, x_val, y_train, y_val = train_test_split(
        data.x_train, data.y_train, test_size=val_size, stratify=data.y_train, random_state=seed
    )
    if subset is not None:
        if not NUM_CLASSES <= subset <= len(y_train):
            raise ConfigError(f"--subset must be between {NUM_CLASSES} and {len(y_train)}, but got {subset}")
        if subset < len(y_train):
            x_train, _, y_train, _ = train_test_split(
                x_train, y_train, train_size=subset, stratify=y_train, random_state=seed
            )
    return Split(x_train, y_train.astype(np.int32), x_val, y_val.astype(np.int32))


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of uint8 images, in float64, computed in chunks to bound memory."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(x), 5000):
        chunk = x[start : start + 5000].astype(np.float64)
        total += chunk.sum(axis=(0, 1, 2))
        total_sq += (chunk**2).sum(axis=(0, 1, 2))
    count = len(x) * x.shape[1] * x.shape[2]
    mean = total / count
    return mean, total_sq / count - mean**2


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0) -> Any:
    """tf.data pipeline over in-memory uint8 arrays: shuffle each epoch, batch, cast, prefetch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda images, labels: (tf.cast(images, tf.float32), labels),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
