"""The study and trial attribute keys hpo writes into Optuna's own schema (user attrs), in one place, so
every floor reads a study the same way. Renaming a key breaks studies already written: add, never rename."""

import socket

# Study user attrs
SETTINGS_ATTR = "hpo_settings"  # the StudySettings a study was created with (the single source of truth)
FORMAT_ATTR = "hpo_format"  # version of that record; a newer one than this hpo reads is refused
TUNER_ATTR = "kerastuner_tuner"
# Trial user attrs
PHASE_ATTR = "phase"  # what a running trial does besides epochs (cache fill): {"phase", "done", "total", "eta_s", "at"}  # `--engine kerastuner`: the tuner it was started with (a resume must match)
WORKER_ATTR = "worker"  # process_tag() of the trial process that ran the trial
MODEL_ARTIFACT_ATTR = "model_artifact"  # the artifact id of the trial's trained model (storage/artifacts.py)
# Study user attrs, one per removed model: REMOVED_MODEL_PREFIX + artifact id -> trial number. The trial's
# artifact link cannot be deleted (no public API), so this marks it as pointing to a removed file.
REMOVED_MODEL_PREFIX = "hpo_model_removed:"
# Trial system attr: the worker's wall-clock time, rewritten every heartbeat interval by workers on a storage
# without Optuna's native heartbeat (the gRPC proxy); compared only for change (storage/liveness.py).
LIVENESS_ATTR = "hpo_liveness"


def process_tag(pid: int) -> str:
    """Which machine and process ran a trial (WORKER_ATTR): "host:pid"."""
    return f"{socket.gethostname()}:{pid}"
