"""Storage URLs with their passwords masked, for every message, log line and report."""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# A query-string or libpq keyword that carries a password (postgresql://h/db?password=..., "password=...").
_PASSWORD_KEYS = ("password", "pass", "passwd", "pwd")
_LOOSE_USERINFO = re.compile(r"([a-z][\w+.-]*://[^:/@\s]*):\S*@", re.IGNORECASE)  # greedy: to the last @
_LOOSE_KEYWORD = re.compile(r"\b(" + "|".join(_PASSWORD_KEYS) + r")(\s*=\s*)('[^']*'|[^&\s]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with any password (user info or query string) replaced by ***, for every message, log line
    and report. Text that is not a URL SQLAlchemy parses cleanly is masked by pattern, more than needed
    rather than less: a password with an unencoded / or @ must not leak through a bad parse."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return _mask_loosely(str(url))
    if "@" in (parsed.host or "") or "@" in (parsed.database or "") or ("@" in url and not parsed.host):
        return _mask_loosely(url)  # an unencoded @ in the password: SQLAlchemy split it at the wrong @
    query = {key: ("***" if key.lower() in _PASSWORD_KEYS else value) for key, value in parsed.query.items()}
    masked = parsed.set(query=query).render_as_string(hide_password=True)
    return masked.replace("%2A%2A%2A", "***")  # the query's *** comes back percent-encoded


def _mask_loosely(text: str) -> str:
    return _LOOSE_KEYWORD.sub(r"\1\2***", _LOOSE_USERINFO.sub(r"\1:***@", text))

