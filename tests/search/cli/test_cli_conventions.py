"""CLI conventions a newcomer expects (compare `optuna --help`): --version, studies, delete, quiet start-up."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hpo_testkit import create_tiny_study, sqlite_url

from cifar_hpo.search.cli import main

TF_STARTUP = ("oneDNN custom operations", "Could not find cuda drivers", "failed call to cuInit",
              "absl::InitializeLog")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("hpo (cifar-hpo) ")


def test_studies_lists_space_counts_and_best(tmp_path: Path, tiny_npz: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = sqlite_url(tmp_path)
    study = create_tiny_study(url, "alpha", tiny_npz)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.5))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    optuna.create_study(study_name="plain", storage=url)
    assert main(["studies", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["study", "space"]
    alpha = next(line.split() for line in lines if line.startswith("alpha"))
    assert alpha[:7] == ["alpha", "cnn", "1", "0", "1", "0", "0.5000"]
    assert any(line.split()[:2] == ["plain", "-"] for line in lines)


def test_studies_reads_hpo_storage(tmp_path: Path, tiny_npz: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(tmp_path)
    create_tiny_study(url, "beta", tiny_npz)
    monkeypatch.setenv("HPO_STORAGE", url)
    assert main(["studies"]) == 0  # the parser reads HPO_STORAGE when it is built
    assert "beta" in capsys.readouterr().out


def test_delete_refuses_without_terminal_or_yes(tmp_path: Path, tiny_npz: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(tmp_path)
    create_tiny_study(url, "gone", tiny_npz)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # not a terminal
    assert main(["delete", "--study", "gone", "--storage", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--yes" in err[0]
    assert "gone" in optuna.get_all_study_names(url)
    assert main(["delete", "--study", "gone", "--storage", url, "--yes"]) == 0
    assert "gone" not in optuna.get_all_study_names(url)
    assert main(["delete", "--study", "gone", "--storage", url, "--yes"]) == 2  # no such study: one line


def test_delete_asks_on_a_terminal(tmp_path: Path, tiny_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(tmp_path)
    create_tiny_study(url, "kept", tiny_npz)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert main(["delete", "--study", "kept", "--storage", url]) == 1
    assert "kept" in optuna.get_all_study_names(url)
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert main(["delete", "--study", "kept", "--storage", url]) == 0
    assert "kept" not in optuna.get_all_study_names(url)


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "HPO_VERBOSE")}
    return subprocess.run([sys.executable, "-m", "cifar_hpo.search.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_tensorflow_startup_lines_hidden_in_command_and_trial_processes(tmp_path: Path, tiny_npz: Path) -> None:
    """hpo search with a spawned trial process (SQLite storage, --recycle-after 1): stderr has no TensorFlow
    start-up line; with -v, TensorFlow speaks again."""
    common = ["--storage", sqlite_url(tmp_path), "--data", str(tiny_npz), "--val-size", "100", "--epochs", "1",
              "--n-trials", "1", "--recycle-after", "1", "--no-baseline", "--subset", "200"]
    quiet = run_cli("search", "--study", "quiet", *common, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if any(s in line for s in TF_STARTUP)], quiet.stderr
    assert "retracing" not in quiet.stderr
    # stderr is not a terminal here: one plain line per finished trial instead of a bar
    assert re.search(r"^quiet: trial 0 (complete|pruned).* value .*s \[", quiet.stderr, re.MULTILINE), quiet.stderr
    loud = run_cli("-v", "search", "--study", "loud", *common, cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    plain = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    if any(s in plain.stderr for s in TF_STARTUP):  # this machine's TensorFlow has start-up lines: -v shows them
        assert any(s in loud.stderr for s in TF_STARTUP), loud.stderr
