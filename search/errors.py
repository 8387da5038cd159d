"""The small error set of the service (DESIGN: a configuration error stops the command with exit 2)."""


class ConfigError(Exception):
    """Bad input the user can fix: a wrong path, a corrupt file, a bad URL, impossible bounds.

    The CLI prints its message as one line and exits 2; nothing already stored is touched.
    """
