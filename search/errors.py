"""The search package's errors and the exit codes the CLI maps them to (DESIGN: a configuration error stops
the command with exit 2; a failing trial fails only that trial)."""

from __future__ import annotations

from enum import IntEnum

from cifar_hpo.reports.errors import ReportError
from cifar_hpo.storage.errors import StorageError


class ConfigError(Exception):
    """Bad input the user can fix: a wrong path, a corrupt file, a bad URL, impossible bounds.

    The CLI prints its message as one line and exits 2; nothing already stored is touched.
    """


class MissingMetricError(RuntimeError):
    """The monitored metric is absent from the epoch logs: pruning would silently never happen."""


class SearchStopped(RuntimeError):
    """A search cannot go on: too many trials failed in a row (something is wrong with the setup, not one
    trial), or the storage keeps failing. The command exits 1; every finished trial stays stored."""


# Every error a user fixes by changing input or setup: one line, exit 2 (the CLI maps them in one place).
CONFIGURATION_ERRORS: tuple[type[Exception], ...] = (ConfigError, StorageError, ReportError)


class ExitCode(IntEnum):
    """Exit codes of every hpo process: commands, workers and trial processes alike."""

    OK = 0
    FAILURE = 1  # the command ran but did not succeed (a worker stopped, a trial process kept dying)
    CONFIG = 2  # one of CONFIGURATION_ERRORS
    RECYCLE = 100  # a trial process hands over to a fresh one: 100 + failures in a row it carries over
    INTERRUPTED = 130  # Ctrl-C or SIGTERM
