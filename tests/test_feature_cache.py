"""The frozen-trunk feature cache: keys, memory and disk storage, invalidation, and equality with the
uncached network (a weights file saved from a random InceptionV3 stands in for ImageNet)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from search.errors import ConfigError
from search.feature_cache import CacheKey, FeatureCache, array_fingerprint, default_cache, weights_identity

KEY = CacheKey(weights="imagenet", input_size=75, cut="mixed8", data="abc")


def counting(value: np.ndarray):
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return value

    return compute, calls


@pytest.mark.parametrize("change", [{"weights": "sha256:1"}, {"input_size": 139}, {"cut": "mixed9"}, {"data": "abd"},
                                    {"view": "aug0.5-seed1-view0"}, {"dtype": "float32"}])
def test_every_key_field_changes_the_entry(change: dict) -> None:
    assert dataclasses.replace(KEY, **change).token() != KEY.token()
    assert CacheKey(**dataclasses.asdict(KEY)).token() == KEY.token()


def test_memory_cache_computes_once_and_stores_float16() -> None:
    cache = FeatureCache()
    compute, calls = counting(np.arange(12, dtype="float32").reshape(3, 4))
    first = cache.get_or_compute(KEY, compute)
    second = cache.get_or_compute(KEY, compute)
    assert len(calls) == 1 and cache.stats.computed == 1 and cache.stats.memory_hits == 1
    assert first.dtype == np.float16 and np.array_equal(second, np.arange(12).reshape(3, 4))


def test_disk_cache_is_shared_by_a_new_process_cache_and_written_atomically(tmp_path: Path) -> None:
    value = np.random.default_rng(0).normal(size=(5, 2, 2, 3)).astype("float32")
    FeatureCache(directory=tmp_path).put(KEY, value)
    assert [p.suffix for p in sorted(tmp_path.iterdir())] == [".json", ".npy"]  # no .tmp left behind
    fresh = FeatureCache(directory=tmp_path)
    compute, calls = counting(value * 0)
    loaded = fresh.get_or_compute(KEY, compute)
    assert calls == [] and fresh.stats.disk_hits == 1
    np.testing.assert_allclose(loaded, value, rtol=1e-3, atol=1e-3)


def test_an_unreadable_disk_entry_is_recomputed(tmp_path: Path) -> None:
    (tmp_path / f"{KEY.token()}.npy").write_bytes(b"not an array")
    cache = FeatureCache(directory=tmp_path)
    compute, calls = counting(np.ones((2, 2)))
    assert np.array_equal(cache.get_or_compute(KEY, compute), np.ones((2, 2))) and calls == [1]


def test_memory_budget_drops_the_least_recently_used_entry() -> None:
    cache = FeatureCache(memory_bytes=2 * 100 * 2)  # two float16 arrays of 100 values
    keys = [dataclasses.replace(KEY, data=str(i)) for i in range(3)]
    cache.put(keys[0], np.zeros(100))
    cache.put(keys[1], np.zeros(100))
    cache.get(keys[0])  # now keys[1] is the least recently used
    cache.put(keys[2], np.zeros(100))
    assert cache.contains(keys[0]) and cache.contains(keys[2]) and not cache.contains(keys[1])


def test_fingerprint_follows_the_data_selection() -> None:
    x = np.arange(64, dtype=np.uint8).reshape(4, 4, 4)
    assert array_fingerprint(x) == array_fingerprint(x.copy())
    assert array_fingerprint(x) != array_fingerprint(x[:3])  # a subset
    assert array_fingerprint(x) != array_fingerprint(x[::-1])  # another order
    assert array_fingerprint(x) != array_fingerprint(x.astype(np.int16))


def test_weights_identity_is_the_file_content_not_its_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    a.write_bytes(b"one")
    b.write_bytes(b"one")
    assert weights_identity(str(a)) == weights_identity(str(b)) and weights_identity(str(a)).startswith("sha256:")
    b.write_bytes(b"two!")
    assert weights_identity(str(a)) != weights_identity(str(b))
    assert weights_identity("imagenet") == "imagenet" and weights_identity(None) is None


def test_default_cache_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("HPO_FEATURE_CACHE", raising=False)
    disk = default_cache()
    assert disk is not None and disk.directory == tmp_path / "features" and default_cache() is disk
    monkeypatch.setenv("HPO_FEATURE_CACHE", "memory")
    assert default_cache().directory is None
    monkeypatch.setenv("HPO_FEATURE_CACHE", "off")
    assert default_cache() is None
    monkeypatch.setenv("HPO_FEATURE_CACHE", "sometimes")
    with pytest.raises(ConfigError, match="HPO_FEATURE_CACHE"):
        default_cache()


# --- the cache against the real network ----------------------------------------------------------------



def test_cached_features_match_the_uncached_network_and_keys_invalidate(random_weights: Path) -> None:
    from search.inception_model import build_inception, cut_features
    from spaces.inception import BASELINE

    config = dataclasses.replace(BASELINE, input_size=75, unfreeze_blocks=1, augment_strength=0.0, head_dropout=0.0)
    parts = build_inception(config, str(random_weights), seed=0)
    x = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    cache, wid = FeatureCache(), weights_identity(str(random_weights))

    features = cut_features(parts, x, cache, wid)
    direct = parts.bottom.predict(x.astype("float32"), verbose=0)
    np.testing.assert_allclose(features.astype("float32"), direct, rtol=1e-2, atol=1e-2 * np.abs(direct).max())
    probs_cached = parts.head.predict(features.astype("float32"), verbose=0)
    probs_full = parts.full.predict(x.astype("float32"), verbose=0)
    np.testing.assert_allclose(probs_cached, probs_full, atol=1e-3)
    assert cache.stats.computed == 1

    cut_features(parts, x, cache, wid)  # same key: a hit
    assert cache.stats.computed == 1 and cache.stats.memory_hits == 1
    cut_features(parts, x[:5], cache, wid)  # other data selection
    cut_features(parts, x, cache, "sha256:other-weights")  # other weights
    cut_features(parts, x, cache, wid, strength=0.5, view=0)  # an augmented view
    assert cache.stats.computed == 4

    # Another cut point is another entry, derived from the lower cut already cached (mixed9 from mixed8).
    higher = build_inception(dataclasses.replace(config, unfreeze_blocks=0), str(random_weights), seed=0)
    derived = cut_features(higher, x, cache, wid)
    direct = higher.bottom.predict(x.astype("float32"), verbose=0)
    np.testing.assert_allclose(derived.astype("float32"), direct, rtol=1e-2, atol=1e-2 * np.abs(direct).max())
    assert cache.stats.computed == 5
