"""Signals: SIGTERM stops a process the way Ctrl-C does."""

from __future__ import annotations

import signal
from typing import Any


def sigterm_as_interrupt() -> None:
    """SIGTERM stops like Ctrl-C: the running trial is marked FAIL and the storage stays consistent."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
