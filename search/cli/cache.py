"""`hpo cache`: what the frozen-trunk feature cache holds on disk, and reclaiming its space.

The cache (search/feature_cache.py) prunes itself to ``$HPO_CACHE_MAX_GB`` after every write; this command
shows it, prunes it to another size now (``--max-gb``) or empties it (``--clear``). Deleting entries is
always safe: a later trial recomputes what it needs, and a worker reading an entry keeps its open copy.
It deletes only entries the cache wrote (cifar_hpo.search.models.feature_cache.owned_entry), and refuses a folder that is not a
cache at all (no marker file and no such entry), so a wrong --dir costs nothing.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from cifar_hpo.search.errors import ConfigError, ExitCode
from cifar_hpo.search.models.feature_cache import (
    DiskEntry, default_features_dir, disk_entries, is_cache_dir, max_disk_bytes, prune_disk, remove_entry,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="show or clear the inception feature cache on disk",
        description="Show what the frozen-trunk feature cache holds ($HPO_CACHE_DIR/features, default "
        "~/.cache/cifar-hpo/features), grouped by weights, input size and cut; prune it or clear it.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--clear", action="store_true", help="delete every entry")
    action.add_argument("--max-gb", type=float, metavar="GB",
                        help="delete least recently used entries until at most GB gigabytes remain")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="cache directory (default: $HPO_CACHE_DIR/features or ~/.cache/cifar-hpo/features)")
    parser.set_defaults(run=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    directory = (args.dir or default_features_dir()).expanduser()
    if args.max_gb is not None and not args.max_gb >= 0:
        raise ConfigError(f"--max-gb must be >= 0, but got {args.max_gb}")
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"cache directory {str(directory)!r} is a file, not a directory; check --dir / $HPO_CACHE_DIR")
    if directory.is_dir() and any(directory.iterdir()) and not is_cache_dir(directory):
        raise ConfigError(f"{str(directory)!r} is not a feature cache (no marker file, no entry the cache wrote); "
                          "hpo cache leaves it alone: check --dir / $HPO_CACHE_DIR")
    entries = disk_entries(directory) if directory.is_dir() else []
    if args.clear:
        for entry in entries:
            remove_entry(entry.path)
        print(f"cleared {directory}: {len(entries)} entries, {gigabytes(sum(e.size for e in entries))} freed")
        return ExitCode.OK
    if args.max_gb is not None:
        removed = prune_disk(directory, int(args.max_gb * 2**30))
        print(f"pruned {directory} to {args.max_gb:g} GB: {len(removed)} entries, "
              f"{gigabytes(sum(e.size for e in removed))} freed")
        return ExitCode.OK
    print(describe(directory, entries, max_disk_bytes()))
    return ExitCode.OK


def gigabytes(size: int) -> str:
    return f"{size / 2**30:.2f} GB"


def describe(directory: Path, entries: list[DiskEntry], limit: int) -> str:
    total = sum(e.size for e in entries)
    lines = [f"{directory}: {len(entries)} entries, {gigabytes(total)} (limit {gigabytes(limit)}, $HPO_CACHE_MAX_GB)"]
    groups: dict[tuple[str, str, str], list[DiskEntry]] = defaultdict(list)
    for entry in entries:
        groups[_group(entry.path)].append(entry)
    for (weights, size, cut), members in sorted(groups.items()):
        lines.append(f"  weights {weights}, {size} px, cut {cut}: {len(members)} entries, "
                     f"{gigabytes(sum(e.size for e in members))}")
    return "\n".join(lines)


def _group(path: Path) -> tuple[str, str, str]:
    try:
        key = json.loads(path.with_suffix(".json").read_text())
        return str(key["weights"]), str(key["input_size"]), str(key["cut"])
    except (OSError, ValueError, KeyError):
        return "unknown", "?", "?"
