import pickle
import tarfile

import numpy as np
import pytest

from cifar_hpo.search.models.data import CLASS_NAMES, channel_stats, load_cifar10, make_dataset, split_train_val
from cifar_hpo.search.errors import ConfigError
from hpo_testkit import make_tiny_cifar


def save(tmp_path, **changes):
    arrays = {**make_tiny_cifar(), **changes}
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_loads_a_valid_npz(tiny_npz):
    data = load_cifar10(tiny_npz)
    assert data.x_train.shape == (500, 32, 32, 3) and data.y_train.shape == (500,)
    assert len(data.fingerprint()) == 16
    assert len(CLASS_NAMES) == 10


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"x_train": np.zeros((500, 28, 28, 3), np.uint8)}, r"x_train has shape \(500, 28, 28, 3\)"),
        ({"x_train": np.zeros((500, 32, 32, 3), np.float32)}, "x_train has dtype float32"),
        ({"y_train": np.full(500, 10, np.uint8)}, "labels 10..10; expected 0..9"),
        ({"y_test": np.zeros(5, np.uint8)}, "200 images but 5 labels"),
        ({"y_train": np.arange(500) % 7}, "hold 7 classes"),
        ({"y_train": np.zeros(500, np.float32)}, "expected integer class ids"),
    ],
)
def test_each_problem_has_its_own_clear_error(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_cifar10(save(tmp_path, **changes))


def test_missing_key_and_missing_file(tmp_path):
    path = tmp_path / "partial.npz"
    arrays = make_tiny_cifar()
    arrays.pop("y_test")
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=r"lacks array\(s\) \['y_test'\]"):
        load_cifar10(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_cifar10(tmp_path / "nope.npz")


def test_corrupt_and_truncated_files(tmp_path, tiny_npz):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(ConfigError, match="not a readable .npz"):
        load_cifar10(garbage)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(tiny_npz.read_bytes()[:5000])
    with pytest.raises(ConfigError, match="not a readable .npz"):
        load_cifar10(truncated)


def test_pickled_objects_are_never_loaded(tmp_path):
    arrays = make_tiny_cifar()
    arrays["y_train"] = np.array([object()] * 500, dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match="pickled objects"):
        load_cifar10(path)


def official_batches(arrays):
    """The official cifar-10-batches-py layout: pickled dicts with b'data' (N, 3072) and b'labels'."""
    def batch(x, y):
        return pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"labels": [int(v) for v in y]})

    x, y = arrays["x_train"], arrays["y_train"]
    parts = {f"data_batch_{i + 1}": batch(x[i * 100:(i + 1) * 100], y[i * 100:(i + 1) * 100]) for i in range(5)}
    parts["test_batch"] = batch(arrays["x_test"], arrays["y_test"])
    return parts


def test_official_folder_and_tarball(tmp_path):
    arrays = make_tiny_cifar()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, raw in official_batches(arrays).items():
        (folder / name).write_bytes(raw)
    from_folder = load_cifar10(folder)
    np.testing.assert_array_equal(from_folder.x_train, arrays["x_train"])
    np.testing.assert_array_equal(from_folder.y_test, arrays["y_test"])
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    assert load_cifar10(tarball).fingerprint() == from_folder.fingerprint()


def test_malicious_pickle_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, raw in official_batches(make_tiny_cifar()).items():
        (folder / name).write_bytes(raw)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (folder / "data_batch_1").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ConfigError, match="refusing to load builtins.print"):
        load_cifar10(folder)


def test_incomplete_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with pytest.raises(ConfigError, match="lacks data_batch_1"):
        load_cifar10(folder)


def test_split_is_stratified_and_never_touches_the_test_set(tiny_npz):
    data = load_cifar10(tiny_npz)
    split = split_train_val(data, val_size=100, subset=200, seed=3)
    assert len(split.y_val) == 100 and len(split.y_train) == 200
    assert np.bincount(split.y_val, minlength=10).tolist() == [10] * 10
    assert np.bincount(split.y_train, minlength=10).tolist() == [20] * 10
    test_rows = {row.tobytes() for row in data.x_test}
    assert not any(row.tobytes() in test_rows for row in split.x_train[:50])
    again = split_train_val(data, val_size=100, subset=200, seed=3)
    np.testing.assert_array_equal(again.x_train, split.x_train)


def test_split_bounds_are_checked(tiny_npz):
    data = load_cifar10(tiny_npz)
    with pytest.raises(ConfigError, match="--val-size"):
        split_train_val(data, val_size=495)
    with pytest.raises(ConfigError, match="--subset"):
        split_train_val(data, val_size=100, subset=401)


def test_pipeline_batches_and_casts(tiny_npz):
    data = load_cifar10(tiny_npz)
    ds = make_dataset(data.x_train, data.y_train, 64, shuffle=True, seed=0)
    images, labels = next(iter(ds))
    assert images.shape == (64, 32, 32, 3) and images.dtype.name == "float32"
    assert sum(int(b[1].shape[0]) for b in ds) == 500
    mean, variance = channel_stats(data.x_train)
    np.testing.assert_allclose(mean, data.x_train.reshape(-1, 3).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(variance, data.x_train.reshape(-1, 3).astype(float).var(axis=0), rtol=1e-6)
