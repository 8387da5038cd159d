"""Ctrl-C and SIGTERM: `hpo launch` and `hpo dashboard` stop in a few lines, exit 130, and leave the study
consistent (issue 12: hundreds of lines with KeyboardInterrupt tracebacks from every process)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo_testkit import ROOT
from cifar_hpo.storage import make_storage

WORKERS = 2


def running_trials(url: str, *, trained_an_epoch: bool = False) -> int:
    study = optuna.load_study(study_name="s", storage=make_storage(url, create=False))
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state == TrialState.RUNNING and (t.intermediate_values or not trained_an_epoch))


def wait_for(condition, proc: subprocess.Popen, output: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"not reached (exit {proc.poll()}):\n{output.read_text()}")
        time.sleep(0.5)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_launch_stops_in_a_few_lines(tmp_path: Path, tiny_npz: Path, how: str) -> None:
    """Ctrl-C reaches every process of the terminal's foreground group (launch, workers, trial processes);
    SIGTERM (e.g. from a scheduler) reaches the launch process alone."""
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    output = tmp_path / "launch.out"
    command = [sys.executable, "-m", "cifar_hpo.search.cli", "launch", "--workers", str(WORKERS), "--study", "s",
               "--storage", url, "--data", str(tiny_npz), "--val-size", "100", "--epochs", "200",
               "--n-trials", "50", "--pruner", "none", "--seed", "0"]
    env = dict(os.environ)  # the installed cifar_hpo; no repository root on the path
    with output.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own group, as a terminal's foreground job
    try:
        wait_for(lambda: "starting" in output.read_text(), proc, output)  # the study exists
        # Every worker trains, past its first step: TensorFlow builds that step in native code, where a signal
        # waits, and on a loaded CPU that can outlast the trial process's stop grace (it is then killed with a
        # warning line, and its trial marked FAIL by its worker: test_trial_processes.py).
        wait_for(lambda: running_trials(url, trained_an_epoch=True) == WORKERS, proc, output)
        before = len(output.read_text().splitlines())
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = output.read_text()
    after = text.splitlines()[before:]
    assert rc == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert len(after) <= WORKERS + 2, text
    assert running_trials(url) == 0, text  # the output says which process stopped how
    study = optuna.load_study(study_name="s", storage=make_storage(url, create=False))
    assert any(t.state == TrialState.FAIL for t in study.trials)  # the interrupted trials, marked FAIL


def test_dashboard_interrupted_during_start_up_says_nothing_about_trials(tmp_path: Path) -> None:
    """Ctrl-C while the dashboard connects to its storage (a server that accepts and never answers)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        output = tmp_path / "dashboard.out"
        with output.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cifar_hpo.search.cli", "dashboard", "--storage", f"postgresql://u@127.0.0.1:{port}/db",
                 "--port", "0"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            server.settimeout(60)
            connection, _ = server.accept()  # the dashboard is inside its start-up now
            os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=60)
            connection.close()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = output.read_text()
    assert rc == 130, text
    assert "trial" not in text.lower() and "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1, text


@pytest.fixture
def stop_handlers():
    """interrupt_once() in this test process (tests/conftest.py undoes it after the test)."""
    from cifar_hpo.search.runtime import interrupts

    interrupts.interrupt_once()
    return interrupts


class SignalledWhileFinalized:
    """A Ctrl-C that lands while Python runs a finalizer (TensorFlow runs weakref callbacks while it builds a
    model): Python prints "Exception ignored in ..." and goes on, so the trial would keep training."""

    def __init__(self, wrap_in_system_error: bool) -> None:
        self.wrap = wrap_in_system_error

    def __del__(self) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside the finalizer
            for _ in range(1000):
                pass
        except KeyboardInterrupt as err:
            if self.wrap:  # what C code that ignores an error returns (TensorFlow's nest flatten)
                raise SystemError("<built-in function __import__> returned a result with an exception set") from err
            raise


@pytest.mark.parametrize("wrap", [False, True], ids=["keyboard-interrupt", "system-error-from-it"])
def test_an_interrupt_a_finalizer_swallowed_stops_the_process_quietly(stop_handlers, capfd, wrap: bool) -> None:
    with pytest.raises(KeyboardInterrupt):
        SignalledWhileFinalized(wrap)  # collected at once: its finalizer gets the signal
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the interrupt is raised again here, in the main flow
            pass
    assert stop_handlers.interrupted()
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "Traceback" not in err, err


def test_before_a_stop_a_failing_finalizer_is_reported_as_usual(stop_handlers) -> None:
    seen = []
    stop_handlers.sys.unraisablehook.previous = seen.append

    class Failing:
        def __del__(self) -> None:
            raise ValueError("finalizer bug")

    Failing()
    assert [type(u.exc_value) for u in seen] == [ValueError]
    assert not stop_handlers.interrupted()
