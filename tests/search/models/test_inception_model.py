"""The `inception` model: weights checks, structure at small input sizes, BatchNormalization in inference
mode, pruning across warm-up and fine-tuning, `hpo search --space inception` with a local weights file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import optuna
import pytest

from cifar_hpo.search.cli import main
from cifar_hpo.search.errors import ConfigError
from cifar_hpo.spaces.inception import BASELINE

SMALL = dataclasses.replace(BASELINE, input_size=75, batch_size=16, head_dense=32)




@pytest.fixture(scope="module")
def cnn_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of a cnn-space model: a valid Keras file that does not fit InceptionV3."""
    from cifar_hpo.search.models.cnn import build_cnn
    from cifar_hpo.spaces.cnn import BASELINE as CNN_BASELINE

    path = tmp_path_factory.mktemp("cnn") / "cnn.weights.h5"
    build_cnn(CNN_BASELINE).save_weights(path)
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- weights -------------------------------------------------------------------------------------------

def test_imagenet_passes_the_check_without_downloading(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    from cifar_hpo.search.models.inception import check_weights

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("check_weights must not download")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    check_weights("imagenet")


def test_a_random_weights_file_passes_and_is_loaded_again(random_weights: Path) -> None:
    import keras

    from cifar_hpo.search.models.inception import build_inception, check_weights

    check_weights(str(random_weights))
    keras.utils.set_random_seed(123)  # a different initialisation, overwritten by the file
    parts = build_inception(dataclasses.replace(SMALL, input_size=107), str(random_weights))
    saved = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
    saved.load_weights(random_weights)
    for mine, theirs in zip(parts.trunk.weights, saved.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


@pytest.mark.parametrize("make, reason", [
    (lambda tmp, rnd, cnn: tmp / "absent.weights.h5", "does not exist"),
    (lambda tmp, rnd, cnn: tmp, "not a file"),
    (lambda tmp, rnd, cnn: cnn, "does not fit InceptionV3"),
    (lambda tmp, rnd, cnn: _truncated(rnd, tmp), "truncated"),
    (lambda tmp, rnd, cnn: _write(tmp / "model.keras", b"PK\x03\x04 zip"), "must end in .weights.h5"),
    (lambda tmp, rnd, cnn: _write(tmp / "junk.weights.h5", b"not hdf5"), "not a readable HDF5"),
])
def test_weights_that_do_not_fit_give_one_clear_line(make, reason: str, tmp_path: Path, random_weights: Path,
                                                     cnn_weights: Path) -> None:
    from cifar_hpo.search.models.inception import check_weights

    with pytest.raises(ConfigError) as excinfo:
        check_weights(str(make(tmp_path, random_weights, cnn_weights)))
    assert reason in one_line_error(excinfo)


def _truncated(source: Path, tmp: Path) -> Path:
    return _write(tmp / "cut.weights.h5", source.read_bytes()[: source.stat().st_size // 3])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- structure -----------------------------------------------------------------------------------------

def test_structure_at_75_px_unfreezes_exactly_the_top_blocks() -> None:
    from cifar_hpo.search.models.inception import build_inception

    parts = build_inception(dataclasses.replace(SMALL, unfreeze_blocks=2), weights=None, seed=0)
    assert parts.head.input.shape[1:] == (1, 1, 1280)  # mixed8 at 75 px: what the cache stores
    assert parts.bottom.trainable_weights == []
    parts.set_top_trainable(True)
    trainable = {w.path.split("/")[0] for w in parts.head.trainable_weights}
    top_layers = {layer.name for layer in parts.top.layers}
    assert trainable - {"head_dense", "classes"} <= top_layers and "head_dense" in trainable
    assert len(parts.head.trainable_weights) == 2 * 9 + 4  # mixed9, mixed10: 9 conv kernels each (BN frozen); head
    assert "mixed9" in top_layers and "mixed8" not in top_layers
    parts.set_top_trainable(False)
    assert {w.path.split("/")[0] for w in parts.head.trainable_weights} == {"head_dense", "classes"}
    probs = parts.full.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    assert probs.shape == (2, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_a_frozen_extractor_has_no_unfrozen_blocks_and_an_optional_dense_layer() -> None:
    from cifar_hpo.search.models.inception import build_inception

    parts = build_inception(dataclasses.replace(SMALL, unfreeze_blocks=0, head_dense=0, pooling="max"), weights=None)
    assert parts.top is None and parts.head.input.shape[1:] == (1, 1, 2048)
    assert [layer.name for layer in parts.head.layers if layer.trainable_weights] == ["classes"]


def test_fine_tuning_keeps_batch_norm_in_inference_mode() -> None:
    from cifar_hpo.search.models.inception import build_inception, compile_phase

    parts = build_inception(dataclasses.replace(SMALL, unfreeze_blocks=1, head_dropout=0.0), weights=None, seed=0)
    parts.set_top_trainable(True)
    compile_phase(parts.head, parts.config, 0.01)
    bn = next(layer for layer in parts.top.layers if layer.__class__.__name__ == "BatchNormalization")
    conv = next(layer for layer in parts.top.layers if layer.__class__.__name__ == "Conv2D")
    moving, kernel = bn.moving_mean.numpy().copy(), conv.kernel.numpy().copy()
    features = np.random.default_rng(0).normal(1.0, 1.0, size=(8, *parts.head.input.shape[1:])).astype("float32")
    parts.head.train_on_batch(features, np.eye(10, dtype="float32")[np.arange(8)])
    assert np.array_equal(bn.moving_mean.numpy(), moving)  # statistics untouched
    assert not np.array_equal(conv.kernel.numpy(), kernel)  # but the block trains


# --- training ------------------------------------------------------------------------------------------

class PruneAtStep(optuna.pruners.BasePruner):
    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return (trial.last_step or 0) >= self.step


def tiny_split(n_train: int = 48, n_val: int = 32):
    from cifar_hpo.search.models.data import Split
    from hpo_testkit import make_tiny_cifar

    data = make_tiny_cifar(n_train + n_val, 10)
    x, y = data["x_train"], data["y_train"].astype("int32")
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def test_pruning_counts_steps_across_warm_up_and_fine_tuning(random_weights: Path) -> None:
    from cifar_hpo.search.models.feature_cache import FeatureCache
    from cifar_hpo.search.models.inception import train_inception

    study = optuna.create_study(direction="maximize", pruner=PruneAtStep(3))
    trial = study.ask()
    config = dataclasses.replace(SMALL, unfreeze_blocks=1, warmup_epochs=2, augment_strength=0.25)
    cache = FeatureCache()
    model, result = train_inception(config, tiny_split(), epochs=4, trial=trial, seed=0,
                                    weights=str(random_weights), cache=cache)
    assert sorted(study.trials[0].intermediate_values) == [1, 2, 3]  # 2 warm-up + 1 fine-tuning epoch, one counter
    assert result.pruned_at == 3 and result.epochs_run == 3 and len(result.history["loss"]) == 3
    # 2 augmented training views + validation, each once at the cut (mixed9) and once at mixed10 for the
    # warm-up, which trains the classifier alone on the frozen top block's cached output
    assert cache.stats.computed == 6
    assert trial.user_attrs["feature_cache"]["computed"] == 6
    assert model.input.shape[1:] == (32, 32, 3) and result.params == model.count_params()


def test_warm_up_classifier_is_the_head_of_the_fine_tuned_model(random_weights: Path) -> None:
    """The warm-up trains `classifier` on cached mixed10 features; the fine-tuning model `head` must use the
    very same layers on top of the unfrozen blocks, and agree with the cached path."""
    import numpy as np

    from cifar_hpo.search.models.feature_cache import FeatureCache, weights_identity
    from cifar_hpo.search.models.inception import build_inception, cut_features

    config = dataclasses.replace(SMALL, unfreeze_blocks=1, head_dropout=0.0, augment_strength=0.0)
    parts = build_inception(config, str(random_weights), seed=0)
    split = tiny_split()
    cache, wid = FeatureCache(), weights_identity(str(random_weights))
    at_cut = cut_features(parts, split.x_val, cache, wid)
    final = cut_features(parts, split.x_val, cache, wid, block=10)
    np.testing.assert_allclose(final.astype("float32"), parts.top.predict(at_cut.astype("float32"), verbose=0),
                               rtol=1e-2, atol=1e-2)
    assert {id(w) for w in parts.classifier.weights} <= {id(w) for w in parts.head.weights}
    np.testing.assert_allclose(parts.classifier.predict(final.astype("float32"), verbose=0),
                               parts.head.predict(at_cut.astype("float32"), verbose=0), atol=2e-3)


def test_hpo_search_inception_with_a_local_weights_file(random_weights: Path, tiny_npz: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tl.db'}"
    rc = main(["search", "--space", "inception", "--study", "tl", "--storage", url, "--data", str(tiny_npz),
               "--weights", str(random_weights), "--subset", "30", "--val-size", "30", "--epochs", "3",
               "--n-trials", "1"])
    assert rc == 0
    trial = optuna.load_study(study_name="tl", storage=url).trials[0]
    assert trial.user_attrs["baseline"] is True and trial.params == BASELINE.to_params()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3] and trial.user_attrs["epochs_run"] == 3
    assert any((tmp_path / "cache" / "features").glob("*.npy"))


@pytest.mark.parametrize("which", ["cnn", "truncated"])
def test_hpo_search_refuses_weights_that_do_not_fit(which: str, cnn_weights: Path, random_weights: Path,
                                                    tiny_npz: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    weights = cnn_weights if which == "cnn" else _truncated(random_weights, tmp_path)
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    rc = main(["search", "--space", "inception", "--study", "bad", "--storage", url, "--data", str(tiny_npz),
               "--weights", str(weights), "--n-trials", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--weights" in err[0] and "Traceback" not in err[0]
    assert optuna.study.get_all_study_names(url) == []  # nothing stored


@pytest.mark.slow
def test_uncached_training_runs_the_trunk_with_live_augmentation() -> None:
    from cifar_hpo.search.models.inception import train_inception

    config = dataclasses.replace(SMALL, unfreeze_blocks=1, warmup_epochs=1)
    model, result = train_inception(config, tiny_split(), epochs=2, trial=None, seed=0, weights=None, cache=None)
    assert result.epochs_run == 2 and any(layer.name.startswith("random_flip") for layer in model.layers)


@pytest.mark.assets
def test_one_real_trial_with_imagenet_weights(real_assets: Path, tmp_path: Path) -> None:
    """ImageNet features at 139 px: far above chance (10%) from 500 images and 2 epochs."""
    url = f"sqlite:///{tmp_path / 'real.db'}"
    rc = main(["search", "--space", "inception", "--study", "real", "--storage", url,
               "--data", str(real_assets / "cifar10.npz"),
               "--weights", str(real_assets / "inception_v3_imagenet_notop.weights.h5"),
               "--subset", "500", "--val-size", "500", "--epochs", "2", "--n-trials", "1"])
    assert rc == 0
    trial = optuna.load_study(study_name="real", storage=url).trials[0]
    assert trial.user_attrs["baseline"] is True and trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value > 0.5, trial.value


def test_flip_tta_scores_validation_on_the_cached_features_of_each_image_and_its_mirror(random_weights: Path,
                                                                                           tmp_path: Path) -> None:
    """With the cache, --tta flip caches the mirrored validation images' features too, scores validation on
    both, and agrees with what the returned pixel model scores with flips (as the test set is scored)."""
    from hpo_testkit import make_tiny_cifar

    from cifar_hpo.search.models.data import Cifar10, split_train_val
    from cifar_hpo.search.models.feature_cache import FeatureCache
    from cifar_hpo.search.models.inception import train_inception
    from cifar_hpo.search.models.training import predict_probabilities
    from cifar_hpo.search.settings import StudySettings

    split = split_train_val(Cifar10(**make_tiny_cifar(n_train=120, n_test=20)), 40, None, 0)
    config = dataclasses.replace(SMALL, unfreeze_blocks=0, augment_strength=0.0)
    runs = {}
    for tta in ("none", "flip"):
        folder = tmp_path / tta
        settings = StudySettings(space="inception", epochs=1, tta=tta)
        runs[tta] = train_inception(config, split, epochs=1, trial=None, settings=settings,
                                    weights=str(random_weights), cache=FeatureCache(folder))
        runs[tta] += (len(list(folder.glob("*.npy"))),)
    assert runs["none"][2] == 2 and runs["flip"][2] == 3  # training, validation (+ mirrored validation) features
    model, result, _ = runs["flip"]
    probabilities = predict_probabilities(model, split.x_val, tta="flip")
    expected = float((probabilities.argmax(-1) == split.y_val.reshape(-1)).mean())
    assert result.history["val_accuracy"][-1] == pytest.approx(expected, abs=2 / 40)  # features kept in float16
    assert "val_accuracy_plain" in result.history and "val_accuracy_plain" not in runs["none"][1].history
