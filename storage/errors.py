"""The storage's errors (the CLI maps each to one line and exit 2)."""

import optuna


class StorageError(Exception):
    """The storage cannot be used as asked: a bad URL, an unreachable server or missing file, an unknown or
    half-created study, or a fault that retrying cannot fix (disk full, read-only, permission denied, a
    schema that is not Optuna's). The message names the cause and what to do; nothing stored is touched."""


class ProxyError(StorageError, optuna.exceptions.StorageInternalError):
    """A call through the storage proxy failed: the proxy did not answer within the client's wait, or its
    database failed the call (storage/proxy.py). Both kinds at once: a command prints it as one line (exit 2),
    and a worker loop takes it for a storage outage to wait out and retry."""
