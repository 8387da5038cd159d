"""Trials run in a child process that is replaced every few trials (trial isolation).

TensorFlow keeps allocator pools and traced functions after ``clear_session``; a long-lived worker's
resident memory ratchets up to its largest model and creeps from trial to trial. So the command's process
(which never imports TensorFlow) only watches: a spawned child opens the study, runs up to
``recycle_after`` trials, and exits; a fresh child takes over until the study's budget is reached. The child
dies with its parent (Linux PR_SET_PDEATHSIG), so `kill -9` of a worker stops its training too.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cifar_hpo.search.errors import ExitCode, SearchStopped
from cifar_hpo.search.runtime.interrupts import interrupted, signals_held

if TYPE_CHECKING:
    import optuna

_logger = logging.getLogger(__name__)

# A trial process that hands over to a fresh one exits ExitCode.RECYCLE + how many of the worker's last
# trials failed in a row, so the consecutive-failure limit holds across processes (a setup that fails
# every trial must stop the worker).
MAX_CRASHES = 3
# Under `hpo launch`'s grace for a stopping worker (search/cli/launch.py STOP_GRACE_S, 30 s), so that the
# worker, which knows its trial process, deals with one that does not stop.
CHILD_STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class ChildJob:
    url: str
    study: str
    heartbeat: int
    worker_index: int
    n_trials: int | None
    deadline: float | None  # time.time() after which no trial starts
    recycle_after: int | None
    data_override: str | None
    threads: int | None
    failures_in_a_row: int = 0  # carried over from the previous trial process
    artifacts_override: str | None = None  # this machine's path to the study's artifact store


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: the child finishes its trial, then stops
        pass


def child_main(job: ChildJob) -> None:
    """Entry point of a trial process; its exit code tells the parent what to do next."""
    _die_with_parent()
    from cifar_hpo.search.runtime.interrupts import interrupt_once
    from cifar_hpo.search.runtime.quiet import quiet_libraries

    quiet_libraries()  # before anything imports TensorFlow; HPO_VERBOSE comes from the parent's environment

    try:
        interrupt_once()  # also delivers a signal held since the parent started this process
        sys.exit(_run_child(job))
    except KeyboardInterrupt:  # the running trial is marked FAIL; the parent speaks for this process
        sys.exit(ExitCode.INTERRUPTED)


def _run_child(job: ChildJob) -> int:
    from cifar_hpo.search.errors import CONFIGURATION_ERRORS
    from cifar_hpo.search.runtime.objective import Objective
    from cifar_hpo.search.runtime.threads import limit_cpu_threads
    from cifar_hpo.search.study_setup import open_hpo_study
    from cifar_hpo.search.runtime.worker import MAX_CONSECUTIVE_FAILURES, run_worker
    from cifar_hpo.storage.proxy import open_patiently

    open_patiently()  # the worker reached the storage already: a proxy down now is restarting, not misaddressed
    try:
        limit_cpu_threads(job.threads)
        opened = open_hpo_study(job.url, job.study, None, heartbeat_interval=job.heartbeat,
                                data_override=job.data_override)
        settings = opened.settings
        if job.artifacts_override is not None:
            settings = dataclasses.replace(settings, artifacts=job.artifacts_override)
        objective = Objective(settings, opened.split)
    except CONFIGURATION_ERRORS as err:
        print(f"hpo: error: {err}", file=sys.stderr)
        return ExitCode.FAILURE
    timeout = None if job.deadline is None else max(0.0, job.deadline - time.time())
    try:
        outcome = run_worker(opened.study, objective, n_trials=job.n_trials, timeout=timeout,
                             max_trials=job.recycle_after, failures_in_a_row=job.failures_in_a_row)
    except CONFIGURATION_ERRORS as err:  # e.g. StorageError: the disk is full; the user fixes it and resumes
        print(f"hpo: error: {err}", file=sys.stderr)
        return ExitCode.CONFIG
    except SearchStopped as err:
        print(f"hpo: worker stopped: {err}", file=sys.stderr)
        return ExitCode.FAILURE
    if outcome.reason == "recycle":
        assert outcome.failures_in_a_row < MAX_CONSECUTIVE_FAILURES  # run_worker raised otherwise
        return ExitCode.RECYCLE + outcome.failures_in_a_row
    return ExitCode.OK


def recycled_failures(code: int | None) -> int | None:
    """For a child's exit code: the failures in a row it hands over if it asks to be recycled, else None."""
    from cifar_hpo.search.runtime.worker import MAX_CONSECUTIVE_FAILURES

    if code is not None and ExitCode.RECYCLE <= code < ExitCode.RECYCLE + MAX_CONSECUTIVE_FAILURES:
        return code - ExitCode.RECYCLE
    return None


def _safe(on_poll: Callable[[], None]) -> Callable[[], None]:
    """Progress polling must never stop the trials: a storage hiccup only skips one refresh."""

    def poll() -> None:
        try:
            on_poll()
        except Exception as err:  # the child has its own retries; the bar can wait a second
            if interrupted():  # Ctrl-C inside the database driver can surface as another error
                raise KeyboardInterrupt from None
            _logger.debug("progress refresh failed: %s", err)

    return poll


def stop_child(child: multiprocessing.process.BaseProcess, job: ChildJob) -> None:
    """SIGTERM: the trial process marks its running trial FAIL and exits. One still alive after
    CHILD_STOP_GRACE_S (its interrupt lost in native code, or a write waiting on a busy database) is killed.
    Either way, once it is gone its trials still RUNNING are marked FAIL from here (its own write may not have
    landed); left RUNNING, a trial would wait for a stale-trial check, and `hpo launch` kills a worker that
    outlives its own grace (and the child with it)."""
    if child.is_alive():
        child.terminate()
    child.join(CHILD_STOP_GRACE_S)
    if child.is_alive():
        _logger.warning("trial process %s did not stop within %.0f s of SIGTERM; killing it", child.pid,
                        CHILD_STOP_GRACE_S)
        child.kill()
        child.join()
    fail_trials_of_process(job, child.pid)


def fail_trials_of_process(job: ChildJob, pid: int | None) -> None:
    """Mark FAIL the study's RUNNING trials that the trial process ``pid`` of this machine ran (it is gone)."""
    import optuna

    from cifar_hpo.storage import make_storage

    try:
        study = optuna.load_study(study_name=job.study, storage=make_storage(job.url, create=False))
    except Exception as err:  # stopping: nothing more to do here
        _logger.warning("could not mark the stopped trial process's trial FAIL (%s); a stale-trial check will", err)
        return
    fail_trials_of_processes(study, [pid] if pid is not None else [])


def fail_trials_of_processes(study: optuna.Study, pids: list[int]) -> None:
    """Mark FAIL the study's RUNNING trials that these gone trial processes of this machine ran (their
    WORKER_ATTR, search/runtime/objective.py). If the storage does not take the write, their heartbeats go stale
    and a stale-trial check fails them later."""
    from optuna.trial import TrialState

    from cifar_hpo.search.runtime.worker import fail_trials
    from cifar_hpo.storage.attrs import WORKER_ATTR, process_tag

    if not pids:
        return
    tags = {process_tag(pid) for pid in pids}
    try:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except Exception as err:  # stopping: nothing more to do here
        _logger.warning("could not read the running trials to mark a stopped trial process's trial FAIL (%s); "
                        "a stale-trial check will", err)
        return
    left = fail_trials(study, [t.number for t in running if t.user_attrs.get(WORKER_ATTR) in tags])
    if left:
        _logger.warning("could not mark trial(s) %s FAIL; a stale-trial check will", left)


def trial_process_pids(worker_pid: int) -> list[int]:
    """The trial processes a worker process runs now: its children, read from /proc (Linux); elsewhere none,
    and the worker's own clean-up (stop_child) is all there is."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after its last ")"
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended while we looked
            continue
        if fields[1:2] == [str(worker_pid)]:
            children.append(int(stat.parent.name))
    return children


def run_in_child_processes(job: ChildJob, on_poll: Callable[[], None], poll_seconds: float = 1.0) -> int:
    """Run children one after another until one reports the budget reached; returns an exit code."""
    on_poll = _safe(on_poll)
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold TensorFlow state
    crashes = 0
    while True:
        child = context.Process(target=child_main, args=(job,), name=f"hpo-trials-{job.worker_index}")
        try:
            with signals_held():  # a Ctrl-C during the child's start-up reaches it once it can handle it
                child.start()
            while child.is_alive():
                on_poll()
                child.join(poll_seconds)
        except KeyboardInterrupt:
            if child.pid is not None:  # started
                stop_child(child, job)
            raise
        on_poll()
        code = child.exitcode
        carried = recycled_failures(code)
        if carried is not None:
            job = dataclasses.replace(job, failures_in_a_row=carried)
            continue
        if code in (ExitCode.OK, ExitCode.FAILURE, ExitCode.CONFIG):
            return code
        if code == ExitCode.INTERRUPTED or code == -signal.SIGTERM:
            fail_trials_of_process(job, child.pid)  # stopped by a signal of its own: its FAIL may not have landed
            raise KeyboardInterrupt
        crashes += 1  # killed by a signal or the OOM killer: its trial is failed and retried via heartbeats
        print(f"hpo: trial process died (exit {code}); starting a new one", file=sys.stderr)
        if crashes >= MAX_CRASHES:
            print(f"hpo: {crashes} trial processes died; stopping this worker", file=sys.stderr)
            return ExitCode.FAILURE
