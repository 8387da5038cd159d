"""Library chatter off in every process the CLI starts (worker and trial processes included).

TensorFlow 2.21 writes its start-up lines (``oneDNN custom operations are on``, ``Could not find cuda
drivers``, each after ``WARNING: All log messages before absl::InitializeLog()``) from C++ before absl's
logging is set up, so TF_CPP_MIN_LOG_LEVEL does not stop them (it does stop the later ``failed call to
cuInit``). What does: file descriptor 2 pointed at /dev/null while TensorFlow is first imported, restored
right after. TensorFlow is imported lazily in many places, so an import hook does it at the first import
of ``tensorflow`` or ``keras``, whoever comes first. ``hpo -v`` (HPO_VERBOSE=1, inherited by the worker
and trial processes) leaves everything on.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

VERBOSE_ENV = "HPO_VERBOSE"
QUIET_MODULES = ("tensorflow", "keras")


def verbose_requested() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def stderr_to_devnull() -> Iterator[None]:
    """Point file descriptor 2 (what C++ code writes to) at /dev/null, then restore it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (closed stderr): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with stderr_to_devnull():
            self._loader.exec_module(module)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Wraps the first import of TensorFlow/Keras in stderr_to_devnull (an import error still surfaces:
    the exception is raised after fd 2 is restored)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in QUIET_MODULES or any(m in sys.modules for m in QUIET_MODULES):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def quiet_tensorflow() -> None:
    """Before TensorFlow's first import: its C++ logs to errors only, and the pre-init lines hidden."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also stops `failed call to cuInit` (logged after absl init)
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    # tf.function retracing and similar Python-side warnings would break the progress display.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(keras|tensorflow)(\.|$)")
    if not any(isinstance(f, _QuietImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())


def quiet_libraries(verbose: bool | None = None) -> None:
    """Call first thing in every process the CLI starts; ``verbose`` (default: HPO_VERBOSE) keeps the chatter
    and is handed on to child processes through the environment."""
    if verbose is None:
        verbose = verbose_requested()
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        quiet_tensorflow()
        # gRPC's C core logs errors it also raises (e.g. a port in use), which hpo reports in one line itself
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar replaces per-trial INFO lines
    from cifar_hpo.search.runtime.interrupts import hide_interrupted_trial_logs

    hide_interrupted_trial_logs()  # an interrupted command says so in one line instead
    # Heartbeats and stale-trial retries are Optuna "experimental" APIs this service relies on on purpose; the
    # process (not the storage code, which scopes its own filter) silences that warning.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
