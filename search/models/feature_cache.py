"""The frozen-trunk feature cache: what a frozen network part outputs for some images, computed once.

Everything below the first trainable InceptionV3 block gives the same output for the same image in every
epoch and every trial that shares the weights, the input size and the cut point, so the trainer stores it
here and trains only the part above. An entry is keyed by

- ``weights``: the weights' identity ("imagenet", or the sha256 of the weights file's bytes, never its path);
- ``input_size`` and ``cut`` (the layer whose output is stored, e.g. "mixed8");
- ``data``: a fingerprint of the pixel arrays (so another split, subset or seed is another entry);
- ``view``: "clean", or which fixed augmented view of the images (strength, seed, index);
- ``precision``: the compute dtype the trunk ran in ("float32", "bfloat16", "float16"): bf16 features differ
  from float32 ones (cosine 0.999 median, 0.991 worst image at mixed8; benchmarks/precision.py), so they never share an entry. A float32 key
  hashes without this field, exactly as before it existed, so float32 entries written earlier stay valid
  (bumping FORMAT instead would have orphaned every existing entry).

Entries live in memory (least recently used dropped beyond a byte budget) and, unless disabled, on disk
as ``.npy`` files (memory-mapped on load, written atomically so parallel workers can share a directory).
Where: ``$HPO_CACHE_DIR``, else ``~/.cache/cifar-hpo``. Which: ``$HPO_FEATURE_CACHE`` = ``disk`` (default:
memory and disk), ``memory`` or ``off`` (no cache: the trunk runs every epoch). How big the disk part may
grow: ``$HPO_CACHE_MAX_GB`` (default 20); after each write the least recently used entries beyond it are
deleted (a read marks an entry used). ``hpo cache`` shows the cache and clears it.

Only what the cache wrote is ever deleted, whatever else lies in its folder (``$HPO_CACHE_DIR`` may point at a
folder of the user's own files). An entry is ``<token>.npy`` plus its ``<token>.json`` sidecar holding the key,
and it is the cache's own exactly when the token is the hash of that key (``owned_entry``): self-verifying, so
it holds for entries written before this rule existed too, and no file of the user's can match by chance. The
folder also gets a marker file, ``hpo-feature-cache.tag``, when the cache first writes to it; the marker only
tells a cache folder (even an emptied one) from another folder, it never makes a file deletable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cifar_hpo.search.errors import ConfigError

CACHE_MODES = ("disk", "memory", "off")
DEFAULT_MEMORY_MB = 3072
# Full CIFAR-10 at 139 px cut at mixed8 is ~1 GB a view in float16: 20 GB keeps a few input sizes and cuts.
DEFAULT_MAX_DISK_GB = 20.0
STORE_DTYPE = "float16"  # halves memory and disk; ~1e-3 relative error on post-ReLU activations
FORMAT = 1  # bump when what a key means changes, so old disk entries are never read (owned_entry still knows them)
MARKER = "hpo-feature-cache.tag"
MARKER_SIGNATURE = "cifar-hpo feature cache"
_TOKEN_FILE = re.compile(r"[0-9a-f]{32}\.npy")


@dataclass(frozen=True)
class CacheKey:
    """Identity of one cached array; any field changing means another entry."""

    weights: str
    input_size: int
    cut: str
    data: str
    view: str = "clean"
    dtype: str = STORE_DTYPE
    precision: str = "float32"

    def token(self, format: int = FORMAT) -> str:
        fields = asdict(self)
        if fields["precision"] == "float32":  # the key as it was before precision existed: old entries match
            del fields["precision"]
        text = json.dumps({**fields, "format": format}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    computed: int = 0
    compute_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "compute_seconds": round(self.compute_seconds, 3)}


@dataclass
class FeatureCache:
    """Memory (LRU, ``memory_bytes``) and optional disk (``directory``, LRU, ``max_disk_bytes``) store of
    feature arrays."""

    directory: Path | None = None
    memory_bytes: int = DEFAULT_MEMORY_MB * 2**20
    max_disk_bytes: int | None = int(DEFAULT_MAX_DISK_GB * 2**30)  # None: unbounded
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._marked = False
        if self.directory is not None:
            self.directory = Path(self.directory).expanduser()

    def _path(self, key: CacheKey) -> Path | None:
        return None if self.directory is None else self.directory / f"{key.token()}.npy"

    def get(self, key: CacheKey) -> np.ndarray | None:
        """The stored array, or None; a disk entry that cannot be read counts as absent."""
        token = key.token()
        if token in self._memory:
            self._memory.move_to_end(token)
            self.stats.memory_hits += 1
            return self._memory[token]
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        self.stats.disk_hits += 1
        _touch(path)  # recently used: the last to be pruned
        self._remember(token, array)
        return array

    def contains(self, key: CacheKey) -> bool:
        path = self._path(key)
        return key.token() in self._memory or (path is not None and path.exists())

    def put(self, key: CacheKey, array: np.ndarray) -> np.ndarray:
        """Store ``array`` (cast to the key's dtype) and return the stored copy."""
        stored = np.ascontiguousarray(array, dtype=key.dtype)
        path = self._path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not self._marked:
                write_marker(path.parent)
                self._marked = True
            # The sidecar first: an array on disk always has the key that proves it is the cache's (owned_entry).
            sidecar = json.dumps({**asdict(key), "shape": list(stored.shape)}).encode()
            _write_atomically(path.with_suffix(".json"), lambda handle: handle.write(sidecar))
            _write_atomically(path, lambda handle: np.save(handle, stored, allow_pickle=False))
            if self.max_disk_bytes is not None:
                prune_disk(self.directory, self.max_disk_bytes, keep=path)
        self._remember(key.token(), stored)
        return stored

    def get_or_compute(self, key: CacheKey, compute: Callable[[], np.ndarray]) -> np.ndarray:
        found = self.get(key)
        if found is not None:
            return found
        start = time.perf_counter()
        array = compute()
        self.stats.computed += 1
        self.stats.compute_seconds += time.perf_counter() - start
        return self.put(key, array)

    def _remember(self, token: str, array: np.ndarray) -> None:
        self._memory[token] = array
        self._memory.move_to_end(token)
        # Memory-mapped arrays cost page cache, not heap, but are counted alike: a simple, safe bound.
        while len(self._memory) > 1 and sum(a.nbytes for a in self._memory.values()) > self.memory_bytes:
            self._memory.popitem(last=False)

    def clear_memory(self) -> None:
        self._memory.clear()


def _write_atomically(path: Path, write: Callable[..., object]) -> None:
    """A reader (another worker) sees the whole file or none."""
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        write(handle)
    os.replace(handle.name, path)


def write_marker(directory: Path) -> None:
    marker = Path(directory) / MARKER
    if not marker.exists():
        marker.write_text(f"{MARKER_SIGNATURE}\nWritten by cifar-hpo: this folder holds its frozen-trunk feature "
                          "cache. `hpo cache --clear` deletes only the entries the cache wrote here.\n")


def has_marker(directory: Path) -> bool:
    try:
        return (Path(directory) / MARKER).read_text().startswith(MARKER_SIGNATURE)
    except (OSError, UnicodeDecodeError):
        return False


def owned_entry(path: Path) -> bool:
    """Whether ``path`` is an array the cache wrote: ``<token>.npy`` whose ``.json`` sidecar holds a key that
    hashes to that token (under this or an earlier FORMAT)."""
    if not _TOKEN_FILE.fullmatch(path.name):
        return False
    try:
        stored = json.loads(path.with_suffix(".json").read_text())
        stored.pop("shape")
        key = CacheKey(**stored)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        return False
    return any(key.token(version) == path.stem for version in range(1, FORMAT + 1))


def is_cache_dir(directory: Path) -> bool:
    """A folder the cache wrote: its marker, or (caches written before the marker) at least one owned entry."""
    return has_marker(directory) or any(owned_entry(path) for path in Path(directory).glob("*.npy"))


@dataclass(frozen=True)
class DiskEntry:
    path: Path  # the .npy file; its .json sidecar describes the key
    size: int
    last_used: float  # mtime: written or last read


def disk_entries(directory: Path) -> list[DiskEntry]:
    """The cache's own entries (owned_entry), least recently used first; any other file is not an entry, and
    files deleted meanwhile by another worker are skipped."""
    entries = []
    for path in Path(directory).glob("*.npy"):
        if not owned_entry(path):
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        entries.append(DiskEntry(path, stat.st_size, stat.st_mtime))
    return sorted(entries, key=lambda e: e.last_used)


def remove_entry(path: Path) -> None:
    """Delete one entry found by disk_entries (so owned by the cache), its array before its sidecar."""
    # Another process may have it memory-mapped: on POSIX its mapping stays valid until it lets go.
    for file in (path, path.with_suffix(".json")):
        file.unlink(missing_ok=True)


def prune_disk(directory: Path, max_bytes: int, *, keep: Path | None = None) -> list[DiskEntry]:
    """Delete least recently used entries until the cache holds at most ``max_bytes`` (``keep`` is spared:
    the entry just written is needed now even if it alone is larger). Returns what was deleted."""
    entries = disk_entries(directory)
    total = sum(e.size for e in entries)
    removed = []
    for entry in entries:
        if total <= max_bytes:
            break
        if keep is not None and entry.path == keep:
            continue
        remove_entry(entry.path)
        total -= entry.size
        removed.append(entry)
    return removed


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # read-only cache directory or deleted meanwhile: ordering is only a hint
        pass


def array_fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over shapes, dtypes and bytes: identifies a data selection (split, subset, order)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:24]


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_identity(weights: str | None) -> str | None:
    """"imagenet", "sha256:<hex>" of a weights file's bytes, or None for random weights (not cacheable)."""
    if weights is None:
        return None
    if weights == "imagenet":
        return weights
    path = Path(weights).expanduser().resolve()
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(2**22), b""):
                digest.update(chunk)
        _FILE_DIGESTS[memo] = "sha256:" + digest.hexdigest()[:32]
    return _FILE_DIGESTS[memo]


def default_cache_dir() -> Path:
    return Path(os.environ.get("HPO_CACHE_DIR") or Path.home() / ".cache" / "cifar-hpo").expanduser()


def default_features_dir() -> Path:
    """Where the disk cache keeps its entries (``hpo cache`` reads the same folder)."""
    return default_cache_dir() / "features"


_DEFAULT: dict[tuple[str, str, int, int], FeatureCache] = {}


def default_cache() -> FeatureCache | None:
    """The process-wide cache the environment asks for (shared by every trial of a worker); None when off."""
    mode = os.environ.get("HPO_FEATURE_CACHE", "disk").strip().lower() or "disk"
    if mode not in CACHE_MODES:
        raise ConfigError(f"HPO_FEATURE_CACHE must be one of {list(CACHE_MODES)}, but got {mode!r}")
    if mode == "off":
        return None
    memory_mb = int(os.environ.get("HPO_CACHE_MEMORY_MB", DEFAULT_MEMORY_MB))
    directory = default_features_dir() if mode == "disk" else None
    max_bytes = max_disk_bytes()
    where = (mode, str(directory), memory_mb, max_bytes)
    if where not in _DEFAULT:
        _DEFAULT[where] = FeatureCache(directory=directory, memory_bytes=memory_mb * 2**20, max_disk_bytes=max_bytes)
    return _DEFAULT[where]


def max_disk_bytes() -> int:
    """``$HPO_CACHE_MAX_GB`` (default 20) in bytes."""
    text = os.environ.get("HPO_CACHE_MAX_GB", "").strip()
    try:
        gigabytes = float(text) if text else DEFAULT_MAX_DISK_GB
    except ValueError:
        gigabytes = -1.0
    if not gigabytes > 0:
        raise ConfigError(f"HPO_CACHE_MAX_GB must be a number of gigabytes > 0, but got {text!r}")
    return int(gigabytes * 2**30)
