"""Search engines other than Optuna's own loop."""
