"""Study names as file and directory names.

A study name is any string (``..``, ``/abs``, ``a/b``, ``.hidden``, non-ASCII), so it never becomes a path
component as it is: every place that names a file or folder after a study goes through ``safe_filename``.
"""

from __future__ import annotations

import hashlib
import re

MAX_SLUG = 40  # keeps "<slug>-<hash>_<suffix>.png" far below the usual 255-byte name limit
HASH_CHARS = 8


def safe_filename(name: str) -> str:
    """``<slug>-<hash>``: a readable ASCII slug of ``name`` plus a short hash of the whole name.

    The slug keeps letters, digits, ``_`` and ``-`` only (no dot, so never ``.``, ``..`` or a hidden file; no
    separator, so never a path); the hash makes names that slug alike ("été", "ümlaut", "a b", "a/b") distinct.
    """
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:MAX_SLUG].strip("-") or "study"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return f"{slug}-{digest}"
