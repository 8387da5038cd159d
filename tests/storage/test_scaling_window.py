"""benchmarks/storage_scaling.py counts the trials done in its window: partial trials at the edge in part."""

from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timezone
from types import ModuleType, SimpleNamespace

from optuna.trial import TrialState

from hpo_testkit import ROOT

T0 = 1_800_000_000.0


def load_benchmark() -> ModuleType:
    """The benchmark script itself (benchmarks/ is not a package): the test runs exactly what it measures."""
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports its sibling storage_proxy for the proxy mode
    try:
        spec = importlib.util.spec_from_file_location("storage_scaling", ROOT / "benchmarks" / "storage_scaling.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def trial(start: float, end: float | None, state: TrialState = TrialState.COMPLETE) -> SimpleNamespace:
    stamp = lambda s: None if s is None else datetime.fromtimestamp(T0 + s, tz=timezone.utc)  # noqa: E731
    return SimpleNamespace(state=state, datetime_start=stamp(start), datetime_complete=stamp(end))


def test_a_trial_straddling_the_window_end_counts_the_share_inside_it() -> None:
    bench = load_benchmark()
    # one worker, 1.1 s per trial, a 10 s window: 9 whole trials (0-9.9 s) and 0.1 of the tenth
    trials = [trial(1.1 * i, 1.1 * (i + 1)) for i in range(10)]
    done, whole = bench.window_credit(trials, T0, T0 + 10.0)
    assert whole == 9
    assert abs(done - (9 + 0.1 / 1.1)) < 1e-6


def test_failed_pruned_and_unfinished_trials_count_nothing_and_gaps_count_against_the_worker() -> None:
    bench = load_benchmark()
    trials = [trial(0.0, 1.0), trial(3.0, 4.0),  # 2 s idle between them: lost time
              trial(4.0, 5.0, TrialState.FAIL), trial(5.0, 6.0, TrialState.PRUNED), trial(6.0, None, TrialState.RUNNING)]
    assert bench.window_credit(trials, T0, T0 + 10.0) == (2.0, 2)


def test_modes_rotate_per_worker_count() -> None:
    bench = load_benchmark()
    modes = ["plain", "service", "proxy"]
    assert [bench.mode_order(modes, i) for i in range(4)] == [
        ["plain", "service", "proxy"], ["service", "proxy", "plain"], ["proxy", "plain", "service"],
        ["plain", "service", "proxy"]]
