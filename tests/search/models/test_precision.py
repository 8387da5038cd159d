"""Mixed precision: what `--precision` resolves to on given hardware, the policy reaching the model (float32
outputs, loss scaling under fp16), the trial recording it, and bf16 features never sharing float32 cache
entries (while float32 entries written before the precision field still match)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from hpo_testkit import SMALL_CNN, make_tiny_cifar

from cifar_hpo.search.models.precision import PRECISIONS, apply_precision, cpu_flags, resolve
from cifar_hpo.spaces.cnn import config_from_params

SKYLAKE = {"fpu", "avx2", "avx512f"}


@pytest.fixture(autouse=True)
def float32_after() -> None:
    """Each test leaves the process as it found it: the global policy back to float32."""
    yield
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("precision, flags, gpus, policy", [
    ("auto", SKYLAKE | {"avx512_bf16"}, [], "mixed_bfloat16"),  # Cooper Lake / Zen 4
    ("auto", SKYLAKE | {"amx_bf16", "amx_tile"}, [], "mixed_bfloat16"),  # Sapphire Rapids
    ("auto", SKYLAKE, [], "float32"),  # bf16 would be emulated: slower than float32
    ("auto", set(), [], "float32"),  # no /proc/cpuinfo
    ("auto", SKYLAKE, [(8, 0)], "mixed_bfloat16"),  # A100
    ("auto", SKYLAKE, [(9, 0)], "mixed_bfloat16"),  # H100
    ("auto", SKYLAKE | {"avx512_bf16"}, [(7, 5)], "mixed_float16"),  # T4: the GPU decides, not the CPU
    ("auto", SKYLAKE, [(7, 0), (8, 0)], "mixed_float16"),  # ops go to the first visible GPU
    ("float32", SKYLAKE | {"avx512_bf16"}, [(8, 0)], "float32"),  # explicit values are forced
    ("bf16", SKYLAKE, [], "mixed_bfloat16"),
    ("bf16", SKYLAKE, [(7, 5)], "mixed_bfloat16"),
    ("fp16", SKYLAKE, [], "mixed_float16"),
    ("fp16", SKYLAKE, [(9, 0)], "mixed_float16"),
])
def test_resolve(precision: str, flags: set[str], gpus: list[tuple[int, int]], policy: str) -> None:
    assert resolve(precision, flags=flags, gpus=gpus) == policy


def test_resolve_refuses_unknown_values() -> None:
    assert PRECISIONS == ("auto", "float32", "bf16", "fp16")
    with pytest.raises(ValueError, match="--precision must be one of .* but got precision='half'"):
        resolve("half", flags=set(), gpus=[])


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


class Recorder:
    def __init__(self) -> None:
        self.attrs: dict = {}

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: object) -> None:
        self.attrs[key] = value


def tiny_split():
    from cifar_hpo.search.models.data import Cifar10, split_train_val

    return split_train_val(Cifar10(**make_tiny_cifar(n_train=300, n_test=10)), val_size=100)


def test_bf16_policy_reaches_the_cnn_and_its_output_stays_float32() -> None:
    import keras

    from cifar_hpo.search.models.cnn import train_cnn

    recorder = Recorder()
    assert apply_precision("bf16", recorder) == "mixed_bfloat16"
    assert recorder.attrs == {"precision": "mixed_bfloat16"}
    model, result = train_cnn(config_from_params(dict(SMALL_CNN)), tiny_split(), epochs=1, trial=recorder, seed=0)
    conv = model.get_layer("block1_conv1")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"  # float32 master weights
    assert model.get_layer("classes").compute_dtype == "float32" and model.output.dtype == "float32"
    assert np.isfinite(result.history["loss"]).all() and 0 <= result.best_val_accuracy <= 1
    keras.backend.clear_session()  # what every trial ends with: it resets the policy, hence apply per trial
    assert keras.mixed_precision.global_policy().name == "float32"


def test_fp16_compile_adds_loss_scaling() -> None:
    import keras

    from cifar_hpo.search.models.cnn import build_cnn, compile_cnn

    config = config_from_params(dict(SMALL_CNN))
    apply_precision("fp16")
    model = build_cnn(config)
    compile_cnn(model, config, n_train=100, epochs=1)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.output.dtype == "float32"
    apply_precision("float32")
    model = build_cnn(config)
    compile_cnn(model, config, n_train=100, epochs=1)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_hpo_search_stores_the_flag_records_the_policy_and_refuses_another_on_resume(
        tmp_path: Path, tiny_npz: Path, capsys: pytest.CaptureFixture) -> None:
    from cifar_hpo.search.cli import main

    url = f"sqlite:///{tmp_path / 'p.db'}"
    args = ["search", "--study", "p", "--storage", url, "--data", str(tiny_npz), "--val-size", "100",
            "--epochs", "1", "--recycle-after", "0", "--no-priors"]
    assert main([*args, "--n-trials", "1", "--precision", "bf16"]) == 0
    study = optuna.load_study(study_name="p", storage=url)
    assert study.user_attrs["hpo_settings"]["precision"] == "bf16"
    assert study.trials[0].user_attrs["precision"] == "mixed_bfloat16"
    capsys.readouterr()
    assert main([*args, "--n-trials", "2", "--precision", "float32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "precision: study has 'bf16', command asks 'float32'" in err[0]
    assert len(optuna.load_study(study_name="p", storage=url).trials) == 1


# --- the feature cache key -----------------------------------------------------------------------------

def legacy_token(key) -> str:
    """CacheKey.token as it was before the precision field (FORMAT 1)."""
    fields = {k: v for k, v in dataclasses.asdict(key).items() if k != "precision"}
    return hashlib.sha256(json.dumps({**fields, "format": 1}, sort_keys=True).encode()).hexdigest()[:32]


def test_cache_key_differs_between_precisions_and_float32_keeps_its_old_token(tmp_path: Path) -> None:
    from cifar_hpo.search.models.feature_cache import CacheKey, FeatureCache, owned_entry

    key = CacheKey("imagenet", 139, "mixed8", "data123")
    tokens = {p: dataclasses.replace(key, precision=p).token() for p in ("float32", "bfloat16", "float16")}
    assert len(set(tokens.values())) == 3
    assert key.token() == tokens["float32"] == legacy_token(key)  # entries written before precision still match

    cache = FeatureCache(directory=tmp_path)
    cache.put(key, np.ones((2, 3)))
    cache.put(dataclasses.replace(key, precision="bfloat16"), np.zeros((2, 3)))
    fresh = FeatureCache(directory=tmp_path)
    assert fresh.get(key)[0, 0] == 1 and fresh.get(dataclasses.replace(key, precision="bfloat16"))[0, 0] == 0
    # A sidecar written before the field existed (no "precision") is still the cache's own.
    old = tmp_path / f"{legacy_token(key)}.json"
    sidecar = json.loads(old.read_text())
    sidecar.pop("precision")
    old.write_text(json.dumps(sidecar))
    assert owned_entry(old.with_suffix(".npy"))


def test_bf16_and_float32_trunk_features_are_cached_apart() -> None:
    from cifar_hpo.search.models.feature_cache import FeatureCache
    from cifar_hpo.search.models.inception import build_inception, cut_features
    from cifar_hpo.spaces.inception import BASELINE

    config = dataclasses.replace(BASELINE, input_size=75, unfreeze_blocks=1)
    x = make_tiny_cifar(n_train=8, n_test=1)["x_train"]
    cache = FeatureCache()
    features = {}
    for precision in ("float32", "bf16"):
        apply_precision(precision)
        parts = build_inception(config, weights=None, seed=0)
        features[parts.compute_dtype] = cut_features(parts, x, cache, "random-but-fixed-id")
    assert sorted(features) == ["bfloat16", "float32"] and cache.stats.computed == 2
    assert all(f.dtype == np.float16 for f in features.values())  # stored as STORE_DTYPE whatever the policy
