"""The small error set of the service (DESIGN: a configuration error stops the command with exit 2)."""


class ConfigError(Exception):
    """Bad input the user can fix: a wrong path, a corrupt file, a bad URL, impossible bounds.

    The CLI prints its message as one line and exits 2; nothing already stored is touched.
    """


class StorageError(ConfigError):
    """The database refuses work that retrying cannot fix: disk full, read-only, permission denied, wrong schema.

    A ConfigError, so the CLI prints its one line and exits 2; the user fixes the storage and resumes.
    """
