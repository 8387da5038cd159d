"""The storage's errors (the CLI maps each to one line and exit 2)."""


class StorageError(Exception):
    """The storage cannot be used as asked: a bad URL, an unreachable server or missing file, an unknown or
    half-created study, or a fault that retrying cannot fix (disk full, read-only, permission denied, a
    schema that is not Optuna's). The message names the cause and what to do; nothing stored is touched."""
