"""The search package's errors and the exit codes the CLI maps them to (DESIGN: a configuration error stops
the command with exit 2; a failing trial fails only that trial)."""


class ConfigError(Exception):
    """Bad input the user can fix: a wrong path, a corrupt file, a bad URL, impossible bounds.

    The CLI prints its message as one line and exits 2; nothing already stored is touched.
    """


class MissingMetricError(RuntimeError):
    """The monitored metric is absent from the epoch logs: pruning would silently never happen."""


class SearchStopped(RuntimeError):
    """A search cannot go on: too many trials failed in a row (something is wrong with the setup, not one
    trial), or the storage keeps failing. The command exits 1; every finished trial stays stored."""
