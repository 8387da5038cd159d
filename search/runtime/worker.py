"""The worker loop: run trials of one study until the study-wide budget of finished trials is reached.

Finished means COMPLETE or PRUNED. A trial of a killed worker stays RUNNING until its heartbeat goes
stale (Optuna's native one on an RDB storage, a liveness attr through the storage proxy: storage/liveness.py);
it is then failed and re-queued (storage/urls.py), so workers wait for running trials instead of stopping
early, and pick the retry up when it appears.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import optuna
import sqlalchemy
from optuna.trial import TrialState

from cifar_hpo.search.errors import SearchStopped
from cifar_hpo.search.runtime.interrupts import interrupted, signals_deferred
from cifar_hpo.storage.errors import StorageError
from cifar_hpo.storage.counting import count_study_trials, rdb_storage
from cifar_hpo.storage.liveness import heartbeat_interval
from cifar_hpo.storage.faults import database_message, storage_fault
from cifar_hpo.storage.masking import mask_url
from cifar_hpo.storage.resilient_rdb import ResilientRDBStorage

_logger = logging.getLogger(__name__)

STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError)
MAX_STORAGE_ERRORS = 10
MAX_CONSECUTIVE_FAILURES = 5
REAPER_CHECKS_PER_INTERVAL = 4
REAPER_THREAD_NAME = "stale-trial-reaper"


@dataclass(frozen=True)
class WorkerExit:
    """Why run_worker returned: "done" (budget reached or time up) or "recycle" (ran ``max_trials``), and
    how many of this worker's last trials failed in a row (carried over to the next trial process)."""

    reason: str
    failures_in_a_row: int


class _BudgetReached(Exception):
    """Raised in a trial that another worker's trials already made surplus (a race between two asks)."""


def _active_before(trial: optuna.trial.Trial) -> int:
    """Trials numbered before ``trial`` that are finished or running (they hold a place in the budget)."""
    counts = count_study_trials(trial.study, before=trial.number)
    return counts.finished + counts.running


def _fail_stale(study: optuna.Study) -> None:
    if heartbeat_interval(study):
        with warnings.catch_warnings():  # heartbeats are stable enough; Optuna still labels them experimental
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def stale_trial_reaper(study: optuna.Study):
    """Look for trials of dead workers every quarter heartbeat interval, even while this worker trains.

    Optuna only looks when a worker starts a trial; with long trials a dead worker's trial would wait
    that long to be failed and re-queued. Checking four times an interval keeps the time from a kill to
    FAIL within 1.75 intervals (storage.urls.STALE_AFTER_INTERVALS + 1/4); the check is one indexed query
    on the study's running trials (through the proxy: one read of them). Failing is race-safe: Optuna lets
    one process win. On a database storage the storage keeps the schedule, so Optuna's own check before
    each trial answers from the reaper's last one instead of querying again, and the reaper's next check is
    due a quarter interval after the last check of either.
    """
    interval = heartbeat_interval(study)
    if not interval:
        yield
        return
    period = interval / REAPER_CHECKS_PER_INTERVAL
    storage = rdb_storage(study)
    study_id = study._study_id  # no public accessor for a study's id
    scheduled = isinstance(storage, ResilientRDBStorage)
    if scheduled:
        storage.check_stale_trials_every(study_id, period)
    stop = threading.Event()

    def loop() -> None:
        wait = period
        while not stop.wait(wait):
            wait = period
            try:
                _fail_stale(study)
                if scheduled:
                    wait = storage.next_stale_check_in(study_id)
            except Exception as err:  # a storage hiccup must not kill the worker; the next round retries
                _logger.warning("could not check for stale trials: %s", err)

    thread = threading.Thread(target=loop, name=REAPER_THREAD_NAME, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if scheduled:
            storage.check_stale_trials_every(study_id, None)


@contextlib.contextmanager
def study_id_remembered(study: optuna.Study):
    """While the worker runs, its storage answers the study's id from memory: Optuna's HyperbandPruner would
    otherwise look it up by name on every suggest, report and tell."""
    storage = rdb_storage(study)
    if not isinstance(storage, ResilientRDBStorage):
        yield
        return
    storage.remember_study_id(study.study_name, study._study_id)  # no public accessor for a study's id
    try:
        yield
    finally:
        storage.remember_study_id(study.study_name, None)


class _StopAsking(Exception):
    """Raised by the study's ask when the step after the previous trial decided this worker stops."""


@contextlib.contextmanager
def asks_recorded(study: optuna.Study, record: Callable[[optuna.trial.Trial], None],
                  before_ask: Callable[[], None] = lambda: None):
    """Every trial the study's ask creates is handed to ``record`` before a stop signal can interrupt: the
    signal is deferred to the end of the ask. ``before_ask`` runs first (it may raise _StopAsking). Inside
    optimize() Optuna calls study.ask() and offers no hook between creating a trial and returning it, hence
    the instance attribute for this worker's run."""
    ask = study.ask

    def recorded_ask(*args, **kwargs) -> optuna.trial.Trial:
        before_ask()
        with signals_deferred():
            trial = ask(*args, **kwargs)
            record(trial)
        return trial

    study.ask = recorded_ask  # type: ignore[method-assign]
    try:
        yield
    finally:
        del study.ask


def _recorded_as_failed(study: optuna.Study, value: object) -> bool:
    """Whether Optuna's tell records this returned value as FAIL (not a number, NaN, or the wrong count)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        numbers = [float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True
    return any(math.isnan(v) for v in numbers) or len(numbers) != len(study.directions)


def run_worker(study: optuna.Study, objective: Callable[[optuna.trial.Trial], float], *,
               n_trials: int | None, timeout: float | None = None,
               on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
               poll_seconds: float = 2.0, max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
               max_trials: int | None = None, failures_in_a_row: int = 0) -> WorkerExit:
    """Run trials until ``n_trials`` finished trials exist study-wide (or ``timeout``), or until this process
    ran ``max_trials`` and should hand over to a fresh one (search/worker_process.py).

    A failing trial fails only that trial; ``max_consecutive_failures`` in a row (counting the
    ``failures_in_a_row`` a previous process of this worker ended with) means something is wrong with the
    setup, not the trial, and stops the worker with SearchStopped.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    ran, storage_errors, failures = 0, 0, failures_in_a_row
    surplus: list[int] = []
    current: list[optuna.trial.Trial] = []  # the trial this worker asked for last (to fail it if stopped or the storage breaks)
    faults: list[Exception] = []  # a storage fault inside a trial, which Optuna's catch would otherwise swallow
    near_budget = True
    last_running = 0  # trials running study-wide at the last budget count
    stop_reason: str | None = None
    ended: list[bool] = []  # the trial guarded() ran last, until its after-trial step: whether it was recorded FAIL

    def guarded(trial: optuna.trial.Trial) -> float:
        # Two workers can pass the budget check at the same moment; trial numbers order them, and the one
        # beyond the budget steps back instead of training (it is recorded as FAIL with user attr surplus).
        # A trial numbered below the budget has fewer trials before it than the budget: no count needed.
        try:
            if n_trials is not None and near_budget and trial.number >= n_trials and _active_before(trial) >= n_trials:
                trial.set_user_attr("surplus", True)
                surplus.append(trial.number)
                raise _BudgetReached(f"trial {trial.number} is beyond the study's {n_trials} trials")
            value = objective(trial)
        except optuna.TrialPruned:
            ended.append(False)
            raise
        except Exception as err:
            if interrupted():  # Ctrl-C inside TensorFlow's C code can surface as another error: still a stop
                raise KeyboardInterrupt from None
            if storage_fault(err) is not None:  # a full disk is not this trial's fault: after_trial stops the worker
                faults.append(err)
            ended.append(True)
            raise
        ended.append(_recorded_as_failed(study, value))
        return value

    def go_on() -> bool:
        """Check the budget before a trial (may wait for trials running elsewhere); False: stop."""
        nonlocal near_budget, last_running
        if n_trials is not None and current and current[-1].number + 2 * last_running + 3 < n_trials:
            # Far from the budget by trial numbers alone, no count is needed: a trial numbered below n_trials
            # has fewer than n_trials trials before it. Should others have asked for more than the margin
            # meanwhile, the next trial's number shows it, and guarded() counts for that trial.
            near_budget = True
            return deadline is None or time.monotonic() < deadline
        slack, last_running = _budget_slack(study, n_trials, poll_seconds, deadline)
        # Only about as many workers as are running can ask at the same moment: with more slack than
        # that, no ask can overshoot, and the per-trial surplus query is skipped.
        near_budget = slack is not None and slack <= 2 * last_running + 2
        return slack is None or slack > 0

    def after_trial() -> None:
        """The step after each trial, run when Optuna asks for the next one (or optimize() returned): one
        optimize() call for all trials keeps Optuna from rebuilding its database session between trials
        (~5 ms a trial on PostgreSQL), and no callback means no re-read of the finished trial (Optuna reads
        it back for callbacks: 6 statements a trial on PostgreSQL). guarded() says whether the trial was recorded FAIL."""
        nonlocal ran, storage_errors, failures, stop_reason
        if not ended:
            return
        failed = ended.pop()
        ran, storage_errors = ran + 1, 0
        if faults:
            raise faults[0]  # Optuna has marked the trial FAIL if it could; the loop below stops the worker
        if surplus:
            stop_reason = "done"
        else:
            failures = failures + 1 if failed else 0
            if failures >= max_consecutive_failures:
                raise SearchStopped(f"{failures} trials failed in a row; see the errors above")
            if max_trials is not None and ran >= max_trials:
                stop_reason = "recycle"
            elif not go_on():
                stop_reason = "done"

    def before_ask() -> None:
        after_trial()
        if stop_reason is not None:
            raise _StopAsking

    callbacks = [on_trial_end] if on_trial_end else None  # Optuna re-reads each finished trial for callbacks

    def record(trial: optuna.trial.Trial) -> None:
        current[:] = [trial]

    with stale_trial_reaper(study), study_id_remembered(study), asks_recorded(study, record, before_ask):
        while stop_reason is None and (deadline is None or time.monotonic() < deadline) and go_on():
            try:
                study.optimize(guarded, timeout=None if deadline is None else max(0.0, deadline - time.monotonic()),
                               catch=(Exception,), callbacks=callbacks, gc_after_trial=False)
                after_trial()  # the timeout passed after the last trial: its step is still due
            except _StopAsking:
                study._storage.remove_session()  # what optimize() does at its normal end; no public API for it
            except KeyboardInterrupt:
                # Optuna fails the trial when the interrupt reaches the objective; one between its ask and the
                # objective (or at the end of the ask, deferred) leaves the trial RUNNING: fail it here. Without
                # interrupt_once's handler (a library caller) a Ctrl-C can still land inside the ask; the sampler
                # has the trial's number once it sampled for it (settings._SeededPerTrial).
                asked = {trial.number for trial in current} | {getattr(study.sampler, "last_trial_number", None)}
                fail_trials(study, sorted(n for n in asked if n is not None))
                raise
            except Exception as err:
                if interrupted():  # stopping: a storage that fails now is not waited for (proxy.stop_waiting_when)
                    fail_trials(study, [trial.number for trial in current])  # e.g. Optuna's own tell of FAIL failed
                    raise KeyboardInterrupt from None
                objective_ran = bool(ended)  # guarded() ran this trial's objective: the error came after it
                ended.clear()  # a trial whose tell failed gets no after-trial step (it would reset storage_errors)
                if objective_ran and _failed_elsewhere(study, current, err):  # not the trial's fault
                    _logger.warning("trial %d was failed as stale while this worker was not heard from for longer "
                                    "than the heartbeat's grace period (a paused process or a suspended machine); "
                                    "its retry is queued; going on", current[-1].number)
                    continue
                # Optuna can raise a storage error from ask/tell, or an AssertionError with the storage error as
                # its context (a tell that failed leaves the trial RUNNING); look at the whole chain.
                fault = storage_fault(err)
                if fault is not None:  # disk full, read-only, ...: the same call would fail again
                    fail_trials(study, [trial.number for trial in current])
                    raise StorageError(f"storage {_where(study)}: {fault}") from None
                if not _is_storage_error(err):
                    raise
                # The database went away between calls that are not retried (ask/tell): wait and go on.
                storage_errors += 1
                if storage_errors > MAX_STORAGE_ERRORS:
                    raise SearchStopped(f"storage keeps failing: {database_message(err)}") from err
                _logger.warning("storage error (%s); retrying in %.0f s", database_message(err), poll_seconds)
                time.sleep(poll_seconds)
                continue
            break  # stopped by after_trial, or the timeout passed
    return WorkerExit(stop_reason or "done", failures)


def _failed_elsewhere(study: optuna.Study, current: list[optuna.trial.Trial], err: Exception) -> bool:
    """Optuna could not record this worker's trial because it is FAIL already: a stale-trial check (this
    worker's own reaper included, once the process runs again) failed it while the process was paused."""
    refusals = (ValueError, optuna.exceptions.UpdateFinishedTrialError)
    # Optuna's tell raises ValueError("Cannot tell a FAIL trial."), report and suggest the other; after an
    # objective that returned, Optuna's log step then raises AssertionError with that error as its context.
    if not current or not any(isinstance(e, refusals) for e in _error_chain(err)):
        return False
    try:  # no public API reads one trial by id
        return study._storage.get_trial(current[-1]._trial_id).state == TrialState.FAIL
    except Exception:  # the storage cannot say: the error is raised as it was
        return False


def _error_chain(err: BaseException | None) -> Iterator[BaseException]:
    """The error, then its cause or context, and theirs (each once)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_storage_error(err: BaseException) -> bool:
    return any(isinstance(e, STORAGE_ERRORS) for e in _error_chain(err))


def _where(study: optuna.Study) -> str:
    storage = rdb_storage(study)
    return mask_url(str(storage.url)) if storage is not None else "in memory"


def fail_trials(study: optuna.Study, numbers: list[int | None]) -> list[int]:
    """Mark these trials FAIL unless they already finished, if the storage still takes that write (a full disk
    may, a read-only file does not); otherwise their heartbeat goes stale and another worker fails them later.
    Returns the numbers it could not mark."""
    left = []
    for number in numbers:
        if number is None:
            continue
        try:
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        except Exception as err:  # the storage refuses (or the trial is gone): nothing more this process can do
            _logger.debug("could not mark trial %d FAIL: %s", number, err)
            left.append(number)
    return left


def _budget_slack(study: optuna.Study, n_trials: int | None, poll_seconds: float,
                  deadline: float | None) -> tuple[int | None, int]:
    """(trials that may still start, trials running now); slack <= 0: stop, None: no budget.

    Waits while the last trials run elsewhere, since one of them may come back as a retry if its worker died.
    """
    while n_trials is not None:
        if deadline is not None and time.monotonic() >= deadline:
            return 0, 0
        counts = count_study_trials(study)
        if counts.finished >= n_trials:
            return 0, counts.running
        slack = n_trials - counts.finished - counts.running
        if slack > 0:
            return slack, counts.running
        _fail_stale(study)
        time.sleep(poll_seconds)
    return None, 0


