"""The progress display: in-trial status (epoch k/n, cache fill), time left in epochs, plain lines off a terminal."""

from __future__ import annotations

import datetime as dt
import io

import optuna
from optuna.trial import TrialState, create_trial

from cifar_hpo.search.cli.progress import StudyProgress, duration, params_digest, running_text, trial_line
from cifar_hpo.storage.counting import TrialCounts

NOW = 1_800_000_000.0


def running(number: int, values: dict[int, float], started_s_ago: float = 60.0, **attrs: object) -> optuna.trial.FrozenTrial:
    trial = create_trial(state=TrialState.RUNNING, intermediate_values=values, user_attrs=dict(attrs))
    trial.number = number
    trial.datetime_start = dt.datetime.fromtimestamp(NOW - started_s_ago)
    return trial


def finished(number: int, state: TrialState, value: float | None, epochs: int, seconds: float) -> optuna.trial.FrozenTrial:
    trial = create_trial(state=state, value=value, params={"learning_rate": 0.00123456, "depth": 3},
                         distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1, log=True),
                                        "depth": optuna.distributions.IntDistribution(1, 5)},
                         intermediate_values={i + 1: 0.5 for i in range(epochs)}, user_attrs={"wall_seconds": seconds})
    trial.number = number
    return trial


def test_running_trial_shows_epoch_and_last_validation_accuracy() -> None:
    assert running_text(running(3, {1: 0.41, 2: 0.5312}), 5, NOW) == "t3 epoch 2/5 val 0.5312"
    assert running_text(running(4, {}), 5, NOW) == "t4 starting"


def test_running_trial_shows_cache_fill_with_its_own_time_left() -> None:
    phase = {"phase": "cache fill", "done": 2048, "total": 5120, "eta_s": 95.0, "at": NOW - 2}
    assert running_text(running(7, {}, phase=phase), 5, NOW) == "t7 cache fill 40% ~1m35s left"
    done = dict(phase, done=5120)  # finished: back to epochs
    assert running_text(running(7, {1: 0.6}, phase=done), 5, NOW) == "t7 epoch 1/5 val 0.6000"
    stale = dict(phase, at=NOW - 600)
    assert running_text(running(7, {}, phase=stale), 5, NOW) == "t7 starting"


def test_time_left_counts_epochs_not_trials() -> None:
    progress = StudyProgress(10, "s", disable=True, epochs=4)
    # two finished trials: 8 epochs in 80 s -> 10 s an epoch; one of them pruned after 2 epochs
    progress.update(TrialCounts(complete=1, pruned=1), [], [finished(0, TrialState.COMPLETE, 0.6, 6, 60.0),
                                                            finished(1, TrialState.PRUNED, None, 2, 20.0)], now=NOW)
    counts = TrialCounts(complete=1, pruned=1, running=1, best=0.6)
    trial = running(2, {1: 0.5, 2: 0.55, 3: 0.56}, started_s_ago=30.0)  # 3 epochs in 30 s
    # waiting trials: 10 - 2 finished - 1 running = 7, x 4 epochs, + 1 epoch left of the running one = 29 epochs
    assert progress.time_left(counts, [trial], NOW) == 29 * 10.0
    assert progress.status(counts, [trial], NOW) == "t2 epoch 3/4 val 0.5600, best 0.6000, 1 pruned, 0 failed, ≤4m50s left"


def test_time_left_never_runs_past_the_commands_deadline() -> None:
    # the quick preset's case: 12 trials x 6 epochs would take longer than its 15-minute limit
    progress = StudyProgress(12, "s", disable=True, epochs=6, deadline=NOW + 900.0)
    progress.update(TrialCounts(complete=1), [], [finished(0, TrialState.COMPLETE, 0.6, 6, 120.0)], now=NOW)
    counts = TrialCounts(complete=1, best=0.6)
    assert progress.time_left(counts, [], NOW) == 900.0  # 11 x 6 epochs x 20 s = 22 min by epochs
    assert progress.time_left(counts, [], NOW + 850.0) == 50.0
    assert progress.time_left(counts, [], NOW + 2000.0) == 0.0
    # few epochs left: the epochs decide
    almost = TrialCounts(complete=11, best=0.6)
    assert progress.time_left(almost, [], NOW) == 6 * 20.0
    # a limit without a trial budget (--timeout only) still tells the time left
    assert StudyProgress(None, "s", disable=True, epochs=6, deadline=NOW + 60.0).time_left(counts, [], NOW) == 60.0


def test_plain_lines_per_finished_trial_when_not_a_terminal() -> None:
    stream = io.StringIO()  # not a terminal
    progress = StudyProgress(3, "study", epochs=6, stream=stream)
    old = finished(0, TrialState.COMPLETE, 0.5, 6, 10.0)
    progress.update(TrialCounts(complete=1), [], [old], now=NOW)  # finished before this command: not printed
    assert stream.getvalue() == ""
    progress.update(TrialCounts(complete=1, pruned=1, best=0.5), [], [finished(1, TrialState.PRUNED, None, 2, 4.25)],
                    now=NOW)
    progress.update(TrialCounts(complete=2, pruned=1, best=0.61), [], [finished(2, TrialState.COMPLETE, 0.61, 6, 12.0)],
                    now=NOW)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("study: trial 1 pruned after 2 epochs value - 4.2s [learning_rate=0.00123 depth=3]")
    assert lines[1].startswith("study: trial 2 complete value 0.6100 12.0s [learning_rate=0.00123 depth=3]; 3/3 finished")
    assert "\r" not in stream.getvalue()  # no bar


def test_helpers() -> None:
    assert [duration(s) for s in (None, 5, 95, 1200, 7500)] == ["?", "5s", "1m35s", "20m", "2h05m"]
    assert params_digest({"a": "x" * 100}).endswith("…") and len(params_digest({"a": "x" * 100})) == 70
    assert trial_line(finished(5, TrialState.FAIL, None, 0, 1.0)).startswith("trial 5 fail value -")


def test_phase_writer_stores_the_phase_every_few_seconds_and_at_its_end() -> None:
    from cifar_hpo.search.runtime.objective import PhaseWriter

    study = optuna.create_study()
    trial = study.ask()
    writer = PhaseWriter(trial, every_s=3600)
    writer("cache fill", 0, 100)
    assert trial.user_attrs["phase"]["done"] == 0
    writer("cache fill", 50, 100)  # within the interval: not written
    assert trial.user_attrs["phase"]["done"] == 0
    writer("cache fill", 100, 100)  # the end is always written
    assert trial.user_attrs["phase"]["done"] == 100 and trial.user_attrs["phase"]["eta_s"] is None


def test_a_quiet_progress_reads_nothing_from_the_storage(tmp_path) -> None:
    """hpo launch's workers run quiet: their parent process would otherwise query the study every second."""
    from cifar_hpo.storage import make_storage
    from cifar_hpo.storage.statements import count_statements

    storage = make_storage(f"sqlite:///{tmp_path / 'quiet.db'}")
    study = optuna.create_study(study_name="quiet", storage=storage)
    with count_statements(storage.engine) as counter:
        StudyProgress(10, "s", disable=True).poll(study)
        assert counter.counts().round_trips == 0
        StudyProgress(10, "s", stream=io.StringIO()).poll(study)  # a watching one does read
        assert counter.counts().select >= 1
