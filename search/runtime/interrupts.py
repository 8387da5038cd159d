"""Ctrl-C and SIGTERM: every process stops once, quietly, and leaves the study consistent.

A terminal's Ctrl-C reaches every process of the foreground group (hpo launch, its workers, their trial
processes) and a stopping parent sends SIGTERM on top, so one process can be hit two or three times while it
marks its running trial FAIL. The first signal raises KeyboardInterrupt; later ones do nothing, so the
clean-up (Optuna's tell, closing the storage) is never cut short and no second traceback is printed. The
command's one-line message comes from the CLI; Optuna's failed-trial warning with the interrupt's
traceback is dropped (the trial is recorded as FAIL all the same).

A signal can also land inside a finalizer or a weakref callback (TensorFlow runs many while it builds a
model); Python reports an exception raised there as "Exception ignored in ..." with a traceback and goes on,
so the process would keep training. The unraisable hook installed with the handler says nothing and raises
the swallowed KeyboardInterrupt again in the main thread, where it stops the trial.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import _thread
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_interrupted = False
_deferring = 0  # depth of signals_deferred() blocks running now
_pending = False  # a signal arrived inside one: its KeyboardInterrupt waits for the block's end
_redelivering = False  # a finalizer swallowed the KeyboardInterrupt: the next SIGINT handler call raises it again
_in_unraisable_hook = False
REDELIVER_AFTER_S = 0.01


def interrupt_once() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt once in this process; later ones do nothing."""
    from cifar_hpo.storage.proxy import stop_waiting_when

    stop_waiting_when(interrupted)  # a stopping process does not wait minutes for a storage proxy that is gone
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_once)
    if not isinstance(sys.unraisablehook, _QuietUnraisable):
        sys.unraisablehook = _QuietUnraisable(sys.unraisablehook)
    if hasattr(signal, "pthread_sigmask"):  # POSIX
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held by a parent while it started us


def _raise_once(signum: int, frame: Any) -> None:
    # Later signals find this handler still installed and return: switching to SIG_IGN here would make
    # Python report a signal already pending as "ignored due to race condition", with a traceback.
    global _interrupted, _pending, _redelivering
    if not _interrupted or _redelivering:
        if _in_unraisable_hook:  # raised here it would be swallowed once more: try again from outside
            _redeliver_later()
            return
        _interrupted, _redelivering = True, False
        if _deferring:
            _pending = True
            return
        raise KeyboardInterrupt


class _QuietUnraisable:
    """sys.unraisablehook of a process with interrupt_once(): an exception a finalizer could not raise is
    reported as before, except once the process is stopping; a KeyboardInterrupt among them (alone, or the
    cause of a SystemError from C code) is raised again in the main thread instead."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        global _redelivering, _in_unraisable_hook
        if not _interrupted:
            self.previous(unraisable)
        elif _caused_by_interrupt(unraisable.exc_value):
            _in_unraisable_hook, _redelivering = True, True
            try:
                _redeliver_later()
            finally:
                _in_unraisable_hook = False


def _redeliver_later() -> None:
    """SIGINT to the main thread shortly, from a timer thread: by then the finalizer and this hook have
    returned (a signal sent from here would run the handler inside the hook). A real signal, not
    _thread.interrupt_main, so that a blocking call in the main thread is interrupted too."""
    main = threading.main_thread().ident
    if hasattr(signal, "pthread_kill") and main is not None:
        send = lambda: signal.pthread_kill(main, signal.SIGINT)  # noqa: E731
    else:
        send = lambda: _thread.interrupt_main(signal.SIGINT)  # noqa: E731
    timer = threading.Timer(REDELIVER_AFTER_S, send)
    timer.daemon = True
    timer.start()


def _caused_by_interrupt(err: BaseException | None) -> bool:
    # Only the exception itself or its explicit cause: a finalizer that fails while an interrupt propagates
    # has that interrupt as its __context__, and must not raise a second one into the clean-up.
    return isinstance(err, KeyboardInterrupt) or isinstance(getattr(err, "__cause__", None), KeyboardInterrupt)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A stop signal inside the block raises its KeyboardInterrupt when the block ends, for a step that must
    not be cut in the middle: Optuna's ask creates the trial RUNNING and only then returns it, so an
    interrupt in between would leave a trial nobody knows to mark FAIL (search/runtime/worker.py)."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _pending and not _deferring:  # the block ended normally (an error in it propagates; interrupted() says why)
        _pending = False
        raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether this process was signalled: a KeyboardInterrupt raised inside C code (TensorFlow, a database
    driver) can surface as another exception, which must still stop the process rather than fail a trial."""
    return _interrupted


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while a child process is started: the child inherits the mask, so a signal
    during its interpreter start-up waits until interrupt_once() installs its handler (no traceback from
    Python's start-up code), and this process gets its own pending signal right after."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to hold
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class _DropInterruptedTrials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if interrupted():  # "Trial N failed with parameters ..." and "Trial N failed with value None."
            return False
        return not (record.exc_info and record.exc_info[0] and issubclass(record.exc_info[0], KeyboardInterrupt))


def hide_interrupted_trial_logs() -> None:
    """Drop Optuna's "Trial N failed ... KeyboardInterrupt" warnings and traceback (dozens of lines per
    process), and anything else Optuna logs once this process is stopping. Optuna has no option for it,
    so the filter sits on the handlers of its library logger."""
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _DropInterruptedTrials) for f in handler.filters):
            handler.addFilter(_DropInterruptedTrials())
