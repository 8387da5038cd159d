"""The frozen-trunk feature cache: keys, memory and disk storage, invalidation, and equality with the
uncached network (a weights file saved from a random InceptionV3 stands in for ImageNet)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from cifar_hpo.search.errors import ConfigError
from cifar_hpo.search.cli import main
from cifar_hpo.search.models.feature_cache import (
    MARKER, CacheKey, FeatureCache, array_fingerprint, default_cache, disk_entries, weights_identity,
)

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
    assert [p.suffix for p in sorted(tmp_path.iterdir())] == [".json", ".npy", ".tag"]  # no .tmp left behind
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


def _set_last_used(cache: FeatureCache, key: CacheKey, when: float) -> None:
    path = cache.directory / f"{key.token()}.npy"
    os.utime(path, (when, when))


def test_disk_cache_prunes_the_least_recently_used_entries_beyond_its_limit(tmp_path: Path) -> None:
    entry_bytes = 128 + 1000 * 2  # .npy header + 1000 float16 values
    cache = FeatureCache(directory=tmp_path, memory_bytes=0, max_disk_bytes=2 * entry_bytes)
    keys = [dataclasses.replace(KEY, data=str(i)) for i in range(3)]
    cache.put(keys[0], np.zeros(1000))
    cache.put(keys[1], np.ones(1000))
    assert all(e.size == entry_bytes for e in disk_entries(tmp_path))
    _set_last_used(cache, keys[0], 1_000)
    _set_last_used(cache, keys[1], 2_000)
    FeatureCache(directory=tmp_path, memory_bytes=0).get(keys[0])  # a read (another worker) marks it used
    cache.put(keys[2], np.full(1000, 2.0))  # over the limit: the least recently used entry goes
    assert {e.path.stem for e in disk_entries(tmp_path)} == {keys[0].token(), keys[2].token()}
    assert not (tmp_path / f"{keys[1].token()}.json").exists()  # the sidecar goes with its array
    compute, calls = counting(np.ones(1000))
    FeatureCache(directory=tmp_path).get_or_compute(keys[1], compute)  # a pruned entry is recomputed
    assert calls == [1]


def test_an_entry_larger_than_the_limit_is_kept_until_the_next_write(tmp_path: Path) -> None:
    cache = FeatureCache(directory=tmp_path, memory_bytes=0, max_disk_bytes=10)
    stored = cache.put(KEY, np.zeros(1000))
    assert [e.path.stem for e in disk_entries(tmp_path)] == [KEY.token()] and stored.shape == (1000,)


def test_hpo_cache_shows_prunes_and_clears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path))
    cache = FeatureCache(directory=tmp_path / "features", max_disk_bytes=None)
    keys = [dataclasses.replace(KEY, data=str(i)) for i in range(3)] + [dataclasses.replace(KEY, input_size=139)]
    for key in keys:
        cache.put(key, np.zeros(2**18))  # 0.5 MiB each
    _set_last_used(cache, keys[3], 1_000)  # the oldest
    assert main(["cache"]) == 0
    shown = capsys.readouterr().out
    assert "4 entries" in shown and "weights imagenet, 75 px, cut mixed8: 3 entries" in shown
    assert "weights imagenet, 139 px, cut mixed8: 1 entries" in shown
    assert main(["cache", "--max-gb", str(1.6 / 1024)]) == 0  # 1.6 MiB: one entry has to go, the oldest
    assert "1 entries" in capsys.readouterr().out
    assert len(disk_entries(tmp_path / "features")) == 3
    assert not (tmp_path / "features" / f"{keys[3].token()}.npy").exists()
    assert main(["cache", "--clear"]) == 0
    assert "3 entries" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "features").iterdir()] == [MARKER]  # still a cache, an empty one
    assert main(["cache", "--max-gb", "-1"]) == 2
    monkeypatch.setenv("HPO_CACHE_MAX_GB", "lots")
    assert main(["cache"]) == 2 and "HPO_CACHE_MAX_GB" in capsys.readouterr().err


def _user_folder(folder: Path) -> dict[str, bytes]:
    """The issue's folder: files of the user's own, none written by the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "mydata.npy", np.arange(10))
    (folder / "mydata.json").write_text('{"what": "my labels"}')
    np.save(folder / "other.npy", np.ones(3))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("action", [[], ["--clear"], ["--max-gb", "0"]])
def test_hpo_cache_refuses_a_folder_that_is_not_a_cache(tmp_path: Path, action: list[str],
                                                         capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "mine"
    before = _user_folder(folder)
    assert main(["cache", "--dir", str(folder), *action]) == 2
    err = capsys.readouterr().err
    assert "not a feature cache" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_cache_deletes_only_its_own_entries_beside_user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    """$HPO_CACHE_DIR pointed at a folder of the user's: clear, --max-gb and the automatic pruning spare it."""
    folder = tmp_path / "mine"
    before = _user_folder(folder)
    fake = folder / f"{'ab' * 16}.npy"  # named like an entry, with a sidecar whose key does not hash to it
    np.save(fake, np.zeros(5))
    fake.with_suffix(".json").write_text('{"weights": "imagenet", "input_size": 75, "cut": "mixed8", "data": "x", '
                                         '"view": "clean", "dtype": "float16", "shape": [5]}')
    before.update({p.name: p.read_bytes() for p in (fake, fake.with_suffix(".json"))})
    cache = FeatureCache(directory=folder, memory_bytes=0, max_disk_bytes=1)  # prunes after every write
    keys = [dataclasses.replace(KEY, data=str(i)) for i in range(3)]
    for key in keys:
        cache.put(key, np.zeros(1000))
    assert [e.path.stem for e in disk_entries(folder)] == [keys[-1].token()]  # pruned its own entries only
    cache.put(keys[0], np.zeros(1000))
    assert main(["cache", "--dir", str(folder), "--max-gb", "0"]) == 0
    assert main(["cache", "--dir", str(folder), "--clear"]) == 0
    assert disk_entries(folder) == []
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != MARKER} == before


def test_a_cache_written_before_the_marker_is_still_recognised(tmp_path: Path) -> None:
    """Entries of the earlier version (no marker file) are the cache's by their sidecars, and can be cleared."""
    folder = tmp_path / "features"
    FeatureCache(directory=folder).put(KEY, np.zeros(10))
    (folder / MARKER).unlink(missing_ok=True)  # (a compatibility test: the old code passes it too)
    (folder / "notes.txt").write_text("mine")
    assert main(["cache", "--dir", str(folder), "--clear"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


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
    from cifar_hpo.search.models.inception import build_inception, cut_features
    from cifar_hpo.spaces.inception import BASELINE

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
