"""Trial liveness through a trial system attr, for a storage without Optuna's native heartbeat: the gRPC
storage proxy has no heartbeat call, and crash recovery must not depend on how a worker reaches the database.

Writing: Optuna's own heartbeat thread runs for every trial of a storage that is a BaseHeartbeat; here its
``record_heartbeat`` writes LIVENESS_ATTR, the worker's wall-clock time, every heartbeat interval. Reading:
a RUNNING trial is stale when an observer has seen its value stay the same for the grace period (1.5
intervals) on the observer's OWN monotonic clock. Values are compared only for change, never against
another machine's clock, so clock skew between machines cannot fail a live trial. An observer that could
not look for longer than an interval (the proxy was down, so no beat could land either) starts watching
afresh, so a proxy restart does not fail every running trial at once. Failing and re-queuing are Optuna's:
fail_stale_trials (one process wins each FAIL) and RetryHeartbeatStaleTrialCallback.

Only trials that carry the attr are watched: a worker on Optuna's native heartbeat (an RDB storage reached
directly) never writes it, so direct and proxied workers can share a study; each kind fails only its own
kind's dead trials. The retry of a stale trial is queued without the attr (its runner writes its own).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat  # no public API exports BaseHeartbeat (Optuna's mixin)
from optuna.trial import FrozenTrial, TrialState

from cifar_hpo.storage.attrs import LIVENESS_ATTR

_logger = logging.getLogger(__name__)

StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


class LivenessWatch:
    """Which watched trials' liveness value has stood still for ``grace_s`` of this observer's clock."""

    def __init__(self, interval_s: float, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self.grace_s, self._clock = interval_s, grace_s, clock
        self._lock = threading.Lock()  # the reaper thread and the budget wait look at once
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (value, since when this observer saw it)
        self._last_look = float("-inf")

    def stale(self, running: Iterable[FrozenTrial]) -> list[int]:
        """The ids of ``running`` trials to fail; call with the study's RUNNING trials, freshly read."""
        with self._lock:
            now = self._clock()
            if now - self._last_look > self.interval_s:
                self._seen = {}  # blind for longer than a beat: what stood still then proves nothing
            self._last_look = now
            seen: dict[int, tuple[Any, float]] = {}
            for trial in running:
                if LIVENESS_ATTR not in trial.system_attrs:
                    continue  # a trial on Optuna's native heartbeat (a direct RDB worker): not ours to judge
                value = trial.system_attrs[LIVENESS_ATTR]
                previous = self._seen.get(trial._trial_id)  # no public accessor for a trial's storage id
                seen[trial._trial_id] = (value, previous[1] if previous and previous[0] == value else now)
            self._seen = seen  # trials no longer running are forgotten
            return [trial_id for trial_id, (_, since) in seen.items() if now - since >= self.grace_s]

    def __getstate__(self) -> dict[str, Any]:  # the storage that holds this watch pickles (Optuna's contract)
        return {"interval_s": self.interval_s, "grace_s": self.grace_s, "_clock": self._clock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["interval_s"], state["grace_s"], state["_clock"])


class RetryWithoutLiveness:
    """Optuna's retry callback, queuing the copy without the dead worker's liveness value (a class, not a
    closure, so the storage pickles)."""

    def __init__(self, retry: StaleTrialCallback | None) -> None:
        self.retry = retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.retry is None:
            return
        trial.system_attrs = {key: value for key, value in trial.system_attrs.items() if key != LIVENESS_ATTR}
        self.retry(study, trial)


class LivenessHeartbeat(BaseHeartbeat):
    """Optuna's heartbeat contract for any BaseStorage, through LIVENESS_ATTR. Mix in before the storage class
    and call ``init_liveness`` from its ``__init__``."""

    def init_liveness(self, heartbeat_interval: int, grace_period: float,
                      heartbeat_stale_trial_callback: StaleTrialCallback | None) -> None:
        self._heartbeat_interval, self._grace_period = heartbeat_interval, grace_period
        self._stale_callback = RetryWithoutLiveness(heartbeat_stale_trial_callback)
        self._watches: dict[int, LivenessWatch] = {}  # one per study: each look sees one study's trials

    def record_heartbeat(self, trial_id: int) -> None:
        """Failures are logged, not raised: raised, they would end Optuna's heartbeat thread with a traceback
        and leave a live trial to be failed as stale; the next beat tries again."""
        try:
            self.set_trial_system_attr(trial_id, LIVENESS_ATTR, time.time())
        except (UpdateFinishedTrialError, KeyError):
            pass  # the trial ended (or another worker failed it as stale) since this beat was due
        except StorageInternalError as err:
            _logger.warning("liveness of trial id %d not recorded (%s); retrying at the next beat", trial_id, err)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        watch = self._watches.get(study_id)
        if watch is None:  # setdefault: the reaper thread and the budget wait may come here at once
            watch = self._watches.setdefault(study_id, LivenessWatch(self._heartbeat_interval, self._grace_period))
        return watch.stale(running)

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleTrialCallback | None:
        return self._stale_callback

    def liveness_template(self) -> FrozenTrial:
        """A new RUNNING trial that is born watched: its first liveness value goes in with its creation, so a
        worker that dies (or a proxy that goes away) before its first beat still leaves a trial to fail."""
        return optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={LIVENESS_ATTR: time.time()})


def heartbeat_interval(study: optuna.Study) -> int | None:
    """The heartbeat interval of the study's storage, native (RDB) or liveness (proxy); None without one."""
    storage = study._storage  # no public accessor for a study's storage in Optuna
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
