"""Progress inside a trial that is not an epoch (e.g. filling InceptionV3's feature cache), for whoever watches.

Trainers call report_phase(); the worker (search/runtime/objective.py) installs a sink for the trial it runs,
which stores the phase in the trial's user attrs every few seconds, where the watching process reads it from
the storage (no extra IPC). Without a sink, report_phase does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

PhaseSink = Callable[[str, int, int], None]
_sinks: list[PhaseSink] = []


@contextlib.contextmanager
def phase_sink(sink: PhaseSink) -> Iterator[None]:
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.remove(sink)


def report_phase(phase: str, done: int, total: int) -> None:
    """``done`` of ``total`` units of ``phase`` finished (the sink decides how often to pass it on)."""
    for sink in _sinks:
        sink(phase, done, total)
