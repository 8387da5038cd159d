"""Library chatter off in every process the CLI starts (worker and trial processes included)."""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar replaces per-trial INFO lines
    from cifar_hpo.search.runtime.interrupts import hide_interrupted_trial_logs

    hide_interrupted_trial_logs()  # an interrupted command says so in one line instead
    # Heartbeats and stale-trial retries are Optuna "experimental" APIs this service relies on on purpose; the
    # process (not the storage code, which scopes its own filter) silences that warning.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
